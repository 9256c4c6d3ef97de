"""Render the annotated source as a static, offline, side-by-side website.

    python docs/build.py OUTDIR [--source-root DIR] [--package NAME ...] [--source-url URL]

Every `*.py` file under the packages becomes one page. A page is a stack of rows, labml style: the
prose of a comment run or docstring on the left, the code it explains on the right. Prose is markdown
with `$...$` / `$$...$$` LaTeX, which is rendered to MathML here, at build time, so the site needs no
JavaScript and no network. References to the paper ("§3.3", "Table 3", "Fig. 5") become links to the
right page of the arXiv PDF. Rows are named after their headings (`resnet/model.html#residual-block`), so
a link to one survives edits elsewhere in the file, and every page links to the source file it shows.

The heavy lifting is done by maintained libraries: `markdown` for prose, `pygments` for code and
`latex2mathml` for formulas. This file is only the glue that splits a module into sections and keeps
the three libraries from tripping over each other (markdown must never see the inside of a formula).
"""

from __future__ import annotations

import argparse
import ast
import html
import io
import json
import os
import re
import shutil
import sys
import tokenize
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import markdown
from latex2mathml.converter import convert as latex_to_mathml
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

DOCS_DIR = Path(__file__).resolve().parent
REPO_ROOT = DOCS_DIR.parent
DEFAULT_PACKAGES = ("resnet", "experiments")

# Pages are listed in the order a newcomer should read them: the tutorial module first (residual
# learning -> shortcuts -> blocks -> stage stack -> presets), then the rest of the model library; then
# the training tutorial, the paper's central experiment built on it (the degradation problem, Figure 6),
# the run machinery the tutorial imports, and after them the operational modules (data, recipes,
# checkpoints, processes, command line, output). Packages keep the order they are given in (resnet
# before experiments); inside a package, modules named here come first and any other module is appended
# alphabetically, so a new file is never silently left out of the site. A name here whose file does not
# exist gets no page: the list only orders what the packages hold.
READING_ORDER = (
    "resnet/model.py",
    "resnet/fast.py",
    "resnet/checks.py",
    "resnet/torchvision_interop.py",
    "resnet/features.py",
    "resnet/registry.py",
    "resnet/pretrained.py",
    "resnet/loading.py",
    "resnet/files.py",
    "resnet/quantize.py",
    "resnet/module.py",
    "resnet/__init__.py",
    "experiments/cifar10.py",
    "experiments/degradation.py",
    "experiments/trainer.py",
    "experiments/average.py",
    "experiments/launch.py",
    "experiments/loader.py",
    "experiments/data.py",
    "experiments/cifar_pickle.py",
    "experiments/synthetic.py",
    "experiments/recipes.py",
    "experiments/models.py",
    "experiments/precision.py",
    "experiments/checkpoint.py",
    "experiments/files.py",
    "experiments/distributed.py",
    "experiments/run_folder.py",
    "experiments/cli.py",
    "experiments/options.py",
    "experiments/console.py",
    "experiments/plot.py",
    "experiments/export_weights.py",
    "experiments/__init__.py",
)

SITE_TITLE = "Deep Residual Learning — an annotated PyTorch implementation"
PAPER_ABS_URL = "https://arxiv.org/abs/1512.03385"
PAPER_PDF_URL = "https://arxiv.org/pdf/1512.03385"

# Page of the arXiv v1 PDF (12 pages) on which each section, table, figure and equation of the paper
# starts. A table, figure or equation not listed still links to the PDF, just without a page jump. The
# section list is complete: a section number the paper does not have ("Delving Deep, §2.2") belongs to
# another paper and is not linked to this one.
PAPER_SECTION_PAGES = {
    "1": 1,
    "2": 2,
    "3": 3,
    "3.1": 3,
    "3.2": 3,
    "3.3": 3,
    "3.4": 4,
    "4": 4,
    "4.1": 4,
    "4.2": 7,
    "4.3": 8,
    "A": 10,
    "B": 10,
    "C": 12,
}
PAPER_TABLE_PAGES = {"1": 5, "2": 5, "3": 6, "4": 6, "5": 6, "6": 7, "7": 8, "8": 8}
PAPER_FIGURE_PAGES = {"1": 1, "2": 2, "3": 4, "4": 5, "5": 6, "6": 8, "7": 8}
PAPER_EQUATION_PAGES = {"1": 3, "2": 3}

# Full-line comments that are tool directives, not prose; they stay with the code.
DIRECTIVE_COMMENT = re.compile(r"#\s*(!|-\*-|noqa|type:|pragma|fmt:|ruff:|mypy:|pylint:|isort:)")


class BuildError(Exception):
    """Raised for input the site cannot be built from; the message says what to fix."""


# ---------------------------------------------------------------------------------------------------
# Splitting a module into sections
# ---------------------------------------------------------------------------------------------------


@dataclass
class Section:
    """One row of a page: markdown prose and the code lines that follow it."""

    prose: list[str] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    first_line: int = 1
    code_line_numbers: list[int] = field(default_factory=list)

    def has_code(self) -> bool:
        return any(line.strip() for line in self.code)


def _docstring_spans(source: str, path: str) -> dict[int, tuple[int, str, int | None]]:
    """Map the first line of every bare string statement to (last line, its text, header start).

    The header start is set for the docstring of a class or function: the line of its first decorator,
    or of the `class`/`def` keyword. The header is shown beside the docstring that explains it.

    Any string literal used as a statement is prose, not only the docstrings Python attaches to
    modules, classes and functions: labml-style code puts explanation strings inside function bodies.
    Only strings that own their lines count; `x = 1; "note"` stays code.
    """
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as error:
        raise BuildError(
            f"{path}: cannot parse Python ({error.msg}, line {error.lineno}); "
            "fix the syntax error before building the docs"
        ) from error
    lines = source.splitlines()
    headers: dict[int, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                decorators = [decorator.lineno for decorator in node.decorator_list]
                headers[first.lineno] = min([node.lineno, *decorators])
    spans: dict[int, tuple[int, str, int | None]] = {}
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            continue
        first, last = node.lineno, node.end_lineno or node.lineno
        before = lines[first - 1][: node.col_offset]
        after = lines[last - 1][node.end_col_offset :]
        if before.strip() or (after.strip() and not after.strip().startswith("#")):
            continue
        spans[first] = (last, _clean_docstring(node.value.value), headers.get(first))
    return spans


def _clean_docstring(text: str) -> str:
    """Dedent a docstring the way `inspect.cleandoc` does, keeping blank lines inside it."""
    lines = text.expandtabs().splitlines()
    indents = [len(line) - len(line.lstrip()) for line in lines[1:] if line.strip()]
    margin = min(indents) if indents else 0
    cleaned = [lines[0].strip()] + [line[margin:] for line in lines[1:]] if lines else []
    return "\n".join(cleaned).strip("\n")


def _comment_lines(source: str, path: str) -> dict[int, str]:
    """Map line numbers of full-line comments to their text without the `#` marker.

    `tokenize` is used rather than a regex so that a `#` inside a multi-line string is not mistaken
    for a comment.
    """
    comments: dict[int, str] = {}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError) as error:
        raise BuildError(f"{path}: cannot tokenize Python ({error}); fix the syntax error first") from error
    for token in tokens:
        if token.type != tokenize.COMMENT:
            continue
        line_text = token.line.splitlines()[0] if token.line else token.string
        if line_text.strip() != token.string.strip() or DIRECTIVE_COMMENT.match(token.string):
            continue
        text = token.string[1:]
        comments[token.start[0]] = text[1:] if text.startswith(" ") else text
    return comments


def definition_lines(source: str) -> dict[int, str]:
    """Map the line of every `class`/`def` to its anchor name: `Name`, or `Class.method` inside a class.

    Prose can then link a definition as `[ResNetBase](#ResNetBase)` and land on the row that defines it.
    """
    names: dict[int, str] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                names[node.lineno] = prefix + node.name
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")

    visit(ast.parse(source).body, "")
    return names


def split_sections(source: str, path: str = "<string>") -> list[Section]:
    """Split Python source into (prose, code) sections.

    A section starts at a run of comment lines or a docstring and takes every code line up to the next
    comment run or docstring. Prose blocks separated only by blank lines join into one section, so a
    paragraph break in a comment does not produce a row without code. The `class`/`def` line above a
    docstring moves down into the docstring's section, so a class sits beside its own explanation.
    """
    lines = source.splitlines()
    docstrings = _docstring_spans(source, path)
    comments = _comment_lines(source, path)

    sections: list[Section] = []
    current = Section(first_line=1)
    in_comment_run = False
    number = 1
    while number <= len(lines):
        if number in comments or number in docstrings:
            header: list[tuple[int, str]] = []
            header_start = docstrings[number][2] if number in docstrings else None
            while (
                header_start is not None
                and current.code_line_numbers
                and current.code_line_numbers[-1] >= header_start
            ):
                header.insert(0, (current.code_line_numbers.pop(), current.code.pop()))
            if current.has_code():
                sections.append(current)
                current = Section(first_line=number)
                in_comment_run = False
            elif not current.prose:
                current.first_line = number
            if number in comments:
                if in_comment_run:
                    current.prose[-1] += "\n" + comments[number]
                else:
                    current.prose.append(comments[number])
                in_comment_run = True
                number += 1
            else:
                last, text, _ = docstrings[number]
                current.prose.append(text)
                in_comment_run = False
                number = last + 1
            # Only blank lines can sit between prose blocks of one section; a moved header stays.
            current.code = [line for _, line in header]
            current.code_line_numbers = [line_number for line_number, _ in header]
            continue
        in_comment_run = False
        current.code.append(lines[number - 1])
        current.code_line_numbers.append(number)
        number += 1
    if current.prose or current.has_code():
        sections.append(current)

    for section in sections:
        while section.code and not section.code[0].strip():
            section.code.pop(0)
            section.code_line_numbers.pop(0)
        while section.code and not section.code[-1].strip():
            section.code.pop()
            section.code_line_numbers.pop()
    return sections


# ---------------------------------------------------------------------------------------------------
# Prose: markdown with protected math and links to the paper
# ---------------------------------------------------------------------------------------------------

# Code spans and fences are lifted out first so that a `$` inside code is never read as math.
_FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})[^\n]*\n.*?^(?P=fence)[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
_DISPLAY_MATH = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$", re.DOTALL)
# Pandoc's rule: no space just inside either dollar, and a closing dollar is not followed by a digit,
# so "costs $5 and $6" stays text.
_INLINE_MATH = re.compile(r"(?<![\\$])\$(?![\s$])((?:[^$\\]|\\.)+?)(?<![\s\\])\$(?!\d)", re.DOTALL)
_PLACEHOLDER = "zqmathzq{}zq"
_PLACEHOLDER_RE = re.compile(r"zqmathzq(\d+)zq")
_CODE_PLACEHOLDER = "zqcodezq{}zq"
_CODE_PLACEHOLDER_RE = re.compile(r"zqcodezq(\d+)zq")


def render_math(latex: str, display: bool, where: str = "") -> str:
    """Render one LaTeX formula to a MathML element, refusing commands latex2mathml does not know."""
    try:
        mathml = latex_to_mathml(latex.strip(), display="block" if display else "inline")
    except Exception as error:  # latex2mathml raises a range of its own exception types
        raise BuildError(
            f"{where}: cannot render LaTeX {latex!r}: {error}. Fix the formula or write it as plain text."
        ) from error
    unknown = re.search(r">(\\[A-Za-z]+)<", mathml)
    if unknown:
        raise BuildError(
            f"{where}: LaTeX command {unknown.group(1)} in {latex!r} is not supported by "
            "latex2mathml; rewrite the formula with standard commands."
        )
    return mathml


def protect_math(text: str, where: str = "") -> tuple[str, list[str]]:
    """Swap every formula for an inert placeholder and return the text plus the rendered MathML.

    Markdown would otherwise eat the formula: `\\{` loses its backslash, `a*b*c` turns into emphasis and
    `$x_i$ and $y_i$` into an italic run. The placeholders are plain letters and digits, which markdown
    passes through untouched, and `restore_math` puts the MathML back after markdown has run.
    """
    code_blocks: list[str] = []

    def stash_code(match: re.Match[str]) -> str:
        code_blocks.append(match.group(0))
        return _CODE_PLACEHOLDER.format(len(code_blocks) - 1)

    text = _FENCE.sub(stash_code, text)
    text = _CODE_SPAN.sub(stash_code, text)

    rendered: list[str] = []

    def stash_math(display: bool) -> Callable[[re.Match[str]], str]:
        def replace(match: re.Match[str]) -> str:
            rendered.append(render_math(match.group(1), display, where))
            return _PLACEHOLDER.format(len(rendered) - 1)

        return replace

    text = _DISPLAY_MATH.sub(stash_math(True), text)
    text = _INLINE_MATH.sub(stash_math(False), text)
    text = text.replace(r"\$", "$")
    text = _CODE_PLACEHOLDER_RE.sub(lambda match: code_blocks[int(match.group(1))], text)
    return text, rendered


def restore_math(html_text: str, rendered: list[str]) -> str:
    """Put rendered MathML back where `protect_math` left its placeholders."""
    # A display formula on its own line becomes a paragraph of its own; unwrap it so the block-level
    # <math> does not sit inside a <p>.
    html_text = re.sub(r"<p>\s*(zqmathzq\d+zq)\s*</p>", r"\1", html_text)
    return _PLACEHOLDER_RE.sub(lambda match: rendered[int(match.group(1))], html_text)


_PAPER_REF = re.compile(
    r"(?P<section>(?:§|Sec\.|Section)\s*(?P<section_number>[1-4](?:\.[1-4])?|[ABC])\b)"
    r"|(?P<table>(?:Table|Tab\.)\s*(?P<table_number>\d{1,2})\b)"
    r"|(?P<figure>(?:Figure|Fig\.)\s*(?P<figure_number>\d{1,2})\b)"
    r"|(?P<equation>(?:Equation|Eqn\.|Eq\.)\s*(?:\((?P<equation_number>[12])\)|(?P<equation_bare>[12])\b))"
)


def paper_url(kind: str, number: str) -> str:
    """The arXiv PDF address for a section/table/figure/equation of the paper, at its page if known."""
    pages = {
        "section": PAPER_SECTION_PAGES,
        "table": PAPER_TABLE_PAGES,
        "figure": PAPER_FIGURE_PAGES,
        "equation": PAPER_EQUATION_PAGES,
    }[kind]
    page = pages.get(number)
    return f"{PAPER_PDF_URL}#page={page}" if page else PAPER_PDF_URL


def link_paper_references(html_text: str) -> str:
    """Turn "§3.3", "Table 3", "Fig. 6", "Eqn. (1)" in running text into links to the paper.

    Works on rendered HTML so that text already inside a link, code or a formula is left alone.
    """
    pieces = re.split(r"(<[^>]+>)", html_text)
    skip_depth = 0
    for index, piece in enumerate(pieces):
        if piece.startswith("<"):
            tag = re.match(r"</?\s*([a-zA-Z]+)", piece)
            if tag and tag.group(1).lower() in ("a", "code", "pre", "math"):
                skip_depth += -1 if piece.startswith("</") else 1
            continue
        if skip_depth > 0 or not piece:
            continue

        def to_link(match: re.Match[str]) -> str:
            kind = next(name for name in ("section", "table", "figure", "equation") if match.group(name))
            if kind == "section" and match.group("section_number") not in PAPER_SECTION_PAGES:
                return match.group(0)
            url = paper_url(kind, match.group(f"{kind}_number") or match.group("equation_bare"))
            return (
                f'<a class="paper-ref" href="{url}" title="Open this in the paper (arXiv 1512.03385)">'
                f"{match.group(0)}</a>"
            )

        pieces[index] = _PAPER_REF.sub(to_link, piece)
    return "".join(pieces)


def _rewrite_relative_urls(html_text: str, rewrite: Callable[[str], str]) -> str:
    def replace(match: re.Match[str]) -> str:
        return f'{match.group(1)}="{html.escape(rewrite(html.unescape(match.group(2))))}"'

    return re.sub(r'\b(src|href)="([^"]*)"', replace, html_text)


def render_prose(text: str, where: str = "", rewrite_url: Callable[[str], str] | None = None) -> str:
    """Markdown + math + paper links for one prose block."""
    protected, rendered = protect_math(text, where)
    body = markdown.markdown(
        protected,
        extensions=["tables", "fenced_code", "codehilite", "sane_lists"],
        extension_configs={"codehilite": {"guess_lang": False, "css_class": "highlight"}},
    )
    if rewrite_url is not None:
        body = _rewrite_relative_urls(body, rewrite_url)
    body = link_paper_references(body)
    body = _link_images_to_full_size(body)
    body = _split_code_block_lines(body)
    return restore_math(body, rendered)


_TAG = re.compile(r"<(?P<closing>/?)(?P<name>[a-zA-Z][a-zA-Z0-9]*)[^>]*?(?P<empty>/?)>")


def _split_code_block_lines(html_text: str) -> str:
    """Put each line of a code block in the prose in a `<span class="line">` of its own.

    The prose column is narrow, and a usage block with long command lines would run out of it. The
    stylesheet wraps such lines instead, with a hanging indent, which needs every source line to be an
    element: a wrapped command then still reads as one line. A highlighting `<span>` that crosses a line
    end is closed at the end of the line and opened again at the start of the next, so each line is
    well-formed on its own.
    """

    def split(match: re.Match[str]) -> str:
        lines = match.group(2).split("\n")
        if lines and not re.sub(r"<[^>]+>", "", lines[-1]):
            lines.pop()  # the newline that ends the block, followed only by closing tags
        open_tags: list[tuple[str, str]] = []  # (the opening tag as written, the element's name)
        wrapped = []
        for line in lines:
            reopened = "".join(tag for tag, _ in open_tags)
            for tag in _TAG.finditer(line):
                if tag.group("closing"):
                    open_tags.pop()
                elif not tag.group("empty"):
                    open_tags.append((tag.group(0), tag.group("name")))
            closing = "".join(f"</{name}>" for _, name in reversed(open_tags))
            wrapped.append(f'<span class="line">{reopened}{line}{closing}\n</span>')
        return f"{match.group(1)}{''.join(wrapped)}</pre>"

    return re.sub(r"(<pre\b[^>]*>)(.*?)</pre>", split, html_text, flags=re.DOTALL)


def _link_images_to_full_size(html_text: str) -> str:
    """Wrap each image in a link to itself: a figure shrunk to the prose column opens at full size."""

    def wrap(match: re.Match[str]) -> str:
        if re.search(r"<a\b[^>]*>\s*$", match.string[: match.start()]):
            return match.group(0)  # already a link, as in [![figure](a.svg)](elsewhere)
        return f'<a class="figure-link" href="{match.group(2)}">{match.group(1)}</a>'

    return re.sub(r'(<img\b[^>]*?\bsrc="([^"]+)"[^>]*>)', wrap, html_text)


# ---------------------------------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------------------------------


@dataclass
class Module:
    source: Path
    relative: str  # "resnet/model.py"
    page: str  # "resnet/model.html"
    title: str = ""
    summary: str = ""


def _front_matter(text: str) -> tuple[dict[str, str], str]:
    """Split labml-style `---\\ntitle: ...\\nsummary: ...\\n---` front matter off a module docstring."""
    match = re.match(r"\s*---\s*\n(.*?)\n---\s*\n?", text, re.DOTALL)
    if not match:
        return {}, text
    fields: dict[str, str] = {}
    key = ""
    for line in match.group(1).splitlines():
        pair = re.match(r"(\w+):\s*(.*)", line)
        if pair:
            key = pair.group(1)
            fields[key] = pair.group(2).strip()
        elif key and line.strip():
            fields[key] += " " + line.strip()
    return fields, text[match.end() :]


def discover_modules(source_root: Path, packages: list[str]) -> list[Module]:
    """Every non-empty `*.py` file under the packages, in reading order."""
    found: dict[str, Path] = {}
    package_of: dict[str, int] = {}
    for package_rank, package in enumerate(packages):
        package_dir = source_root / package
        if not package_dir.is_dir():
            continue
        for path in sorted(package_dir.rglob("*.py")):
            if "__pycache__" in path.parts or not path.read_text(encoding="utf-8").strip():
                continue
            name = path.relative_to(source_root).as_posix()
            found[name] = path
            package_of.setdefault(name, package_rank)
    if not found:
        raise BuildError(
            f"no Python modules found under {source_root} in packages {packages}; "
            "pass --source-root pointing at the repository (the folder holding resnet/)."
        )
    known_rank = {name: rank for rank, name in enumerate(READING_ORDER)}
    ordered = sorted(
        found, key=lambda name: (package_of[name], known_rank.get(name, len(READING_ORDER)), name)
    )
    return [Module(source=found[name], relative=name, page=name[:-3] + ".html") for name in ordered]


def _relative(from_page: str, to_path: str) -> str:
    """Relative URL from one site page to another site path (both relative to the site root)."""
    return os.path.relpath(to_path, start=os.path.dirname(from_page) or ".").replace(os.sep, "/")


def _url_rewriter(
    module: Module, modules: list[Module], from_page: str | None = None
) -> Callable[[str], str]:
    """Make prose links written relative to the docs root (figures/...) or to source files resolve.

    Authors write `figures/basic_block.svg` no matter how deep the module sits, and may link another
    module by its file name (`blocks.py` or `resnet/blocks.py`, or its page, `blocks.html`); all are
    mapped to the page's location. `from_page` is the page the prose is shown on, when that is not the
    module's own (its summary on the contents page): a link to a definition (`#ResidualBlock`) then
    leads to the module's page.
    """
    pages = {other.relative: other.page for other in modules}
    module_dir = os.path.dirname(module.relative)
    shown_on = from_page or module.page

    def rewrite(url: str) -> str:
        if url.startswith("#") and shown_on != module.page:
            return _relative(shown_on, module.page) + url
        if not url or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^#|^/", url):
            return url
        path, _, fragment = url.partition("#")
        suffix = f"#{fragment}" if fragment else ""
        if path.endswith((".py", ".html")):
            source_path = path[: -len(".html")] + ".py" if path.endswith(".html") else path
            for candidate in (
                os.path.normpath(os.path.join(module_dir, source_path)).replace(os.sep, "/"),
                source_path,
            ):
                if candidate in pages:
                    return _relative(shown_on, pages[candidate]) + suffix
            if path.endswith(".py"):
                return url
        if path.startswith("../") or path.startswith("./"):
            return url
        return _relative(shown_on, path) + suffix

    return rewrite


PAGE_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{root}style.css">
</head>
<body>
<header class="site-header">
<a class="home" href="{root}index.html">{site_title}</a>
<nav>{nav}</nav>
</header>
<main>
{body}
</main>
<footer class="site-footer">
Paper: <a href="{paper_abs}">He, Zhang, Ren and Sun, <em>Deep Residual Learning for Image Recognition</em>,
arXiv:1512.03385</a>. Generated by <code>docs/build.py</code> from <code>{generated_from}</code>.
</footer>
</body>
</html>
"""


_HEADING = re.compile(r"<h([1-6])>(.*?)</h\1>", re.DOTALL)


def slugify(heading_html: str) -> str:
    """The anchor name of a heading: its words in lower case, joined by hyphens.

    Formulas are left out (their MathML has no readable text) and accents are dropped, so
    "Projection shortcut ($W_s x$)" becomes `projection-shortcut` and "The CIFAR-10 networks (§4.2)"
    becomes `the-cifar-10-networks-4-2`.
    """
    text = re.sub(r"<math\b.*?</math>", " ", heading_html, flags=re.DOTALL)
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


class _Anchors:
    """Names the rows of one page after their headings, so that a link to a row survives edits.

    A row whose prose has a heading is named after it (`#residual-block`); a row without one is named
    after the heading above it and its place below that heading (`#residual-block-1`), so edits move
    only the names of the rows between one heading and the next. The second and later headings inside
    one row get ids of their own. Names are unique on the page and never take a definition's name
    (`#ResidualBlock`), which links to the code itself.
    """

    def __init__(self, taken: set[str]) -> None:
        self.taken = set(taken)
        self.base = "top"
        self.rows_since_heading = 0

    def _claim(self, name: str) -> str:
        candidate, suffix = name, 2
        while candidate in self.taken:
            candidate, suffix = f"{name}-{suffix}", suffix + 1
        self.taken.add(candidate)
        return candidate

    def name_section(self, prose_html: str) -> tuple[str, str]:
        """The id of the row with this prose, and the prose with ids on its later headings."""
        section_id: str | None = None

        def name_heading(match: re.Match[str]) -> str:
            nonlocal section_id
            slug = slugify(match.group(2))
            if not slug:
                return match.group(0)
            name = self._claim(slug)
            self.base, self.rows_since_heading = name, 0
            if section_id is None:
                section_id = name
                return match.group(0)
            return f'<h{match.group(1)} id="{name}">{match.group(2)}</h{match.group(1)}>'

        prose_html = _HEADING.sub(name_heading, prose_html)
        if section_id is None:
            self.rows_since_heading += 1
            number = self.rows_since_heading
            while f"{self.base}-{number}" in self.taken:
                number += 1
            self.rows_since_heading = number
            section_id = self._claim(f"{self.base}-{number}")
        return section_id, prose_html


def source_link(module: Module, source_url: str | None) -> str:
    """Where a page's "source" link points: `source_url` + the file's path, or the copy beside the page."""
    if source_url:
        return f"{source_url.rstrip('/')}/{module.relative}"
    return _relative(module.page, module.relative)


def render_module(
    module: Module, modules: list[Module], formatter: HtmlFormatter, source_url: str | None = None
) -> str:
    source = module.source.read_text(encoding="utf-8")
    sections = split_sections(source, module.relative)
    rewrite = _url_rewriter(module, modules)
    root = _relative(module.page, "index.html")[: -len("index.html")]

    definitions = definition_lines(source)
    anchors = _Anchors(set(definitions.values()))
    rows = []
    for number, section in enumerate(sections):
        prose_text = "\n\n".join(section.prose)
        if number == 0 and section.first_line == 1:
            _, prose_text = _front_matter(prose_text)
        where = f"{module.relative}:{section.first_line}"
        prose_html = render_prose(prose_text, where, rewrite) if prose_text.strip() else ""
        code_html = (
            highlight("\n".join(section.code), PythonLexer(stripnl=False), formatter) if section.code else ""
        )
        anchor, prose_html = anchors.name_section(prose_html)
        targets = "".join(
            f'<span class="target" id="{html.escape(definitions[line])}"></span>'
            for line in section.code_line_numbers
            if line in definitions
        )
        rows.append(
            f'<div class="section" id="{anchor}">\n'
            f'<div class="docs">{targets}'
            f'<a class="anchor" href="#{anchor}" aria-label="Link to this section">#</a>\n'
            f"{prose_html}</div>\n"
            f'<div class="code">{code_html}</div>\n'
            "</div>"
        )

    index = modules.index(module)
    nav = [f'<a href="{root}index.html">Contents</a>']
    if index > 0:
        nav.append(
            f'<a rel="prev" href="{_relative(module.page, modules[index - 1].page)}">'
            f"← {html.escape(modules[index - 1].relative)}</a>"
        )
    if index + 1 < len(modules):
        nav.append(
            f'<a rel="next" href="{_relative(module.page, modules[index + 1].page)}">'
            f"{html.escape(modules[index + 1].relative)} →</a>"
        )
    nav.append(f'<a href="{PAPER_ABS_URL}">Paper</a>')

    source_href = html.escape(source_link(module, source_url))
    heading = (
        f'<p class="module-path">source: <a class="source-link" href="{source_href}">'
        f"<code>{html.escape(module.relative)}</code></a></p>"
    )
    body = heading + '\n<div class="sections">\n' + "\n".join(rows) + "\n</div>"
    return PAGE_TEMPLATE.format(
        title=html.escape(f"{module.title or module.relative} — {SITE_TITLE}"),
        root=root,
        site_title=html.escape(SITE_TITLE),
        nav=" ".join(nav),
        body=body,
        paper_abs=PAPER_ABS_URL,
        generated_from=html.escape(module.relative),
    )


def _describe(module: Module) -> None:
    """Fill in title and summary for the index from front matter or the module docstring."""
    source = module.source.read_text(encoding="utf-8")
    try:
        docstring = ast.get_docstring(ast.parse(source), clean=True) or ""
    except SyntaxError:
        docstring = ""
    fields, rest = _front_matter(docstring)
    module.title = fields.get("title", "")
    module.summary = fields.get("summary", "")
    if not module.title:
        heading = re.search(r"^#+\s*(.+)$", rest, re.MULTILINE)
        module.title = heading.group(1).strip() if heading else ""
    if not module.summary:
        # The summary is running text: headings, figures and code blocks (a usage block often opens a
        # module) are skipped, since joining a code block's lines into one would garble it.
        prose = _FENCE.sub("\n\n", rest)
        paragraphs = [
            paragraph
            for paragraph in re.split(r"\n\s*\n", prose)
            if paragraph.strip()
            and not paragraph.lstrip().startswith(("#", "!["))
            and not paragraph.startswith(("    ", "\t"))
        ]
        module.summary = _opening_sentences(" ".join(paragraphs[0].split())) if paragraphs else ""


def _opening_sentences(paragraph: str, enough: int = 160) -> str:
    """The first sentences of a paragraph, about `enough` characters, never cutting a formula or link.

    Cutting at a sentence end keeps `$...$`, backticks and `[text](url)` whole in practice; if a cut would
    still leave one of them open, the whole paragraph is used instead.
    """
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z])", paragraph)
    summary = ""
    for sentence in sentences:
        summary = f"{summary} {sentence}".strip()
        if len(summary) >= enough:
            break
    unescaped_dollars = len(re.findall(r"(?<!\\)\$", summary))
    balanced = (
        unescaped_dollars % 2 == 0
        and summary.count("`") % 2 == 0
        and summary.count("[") == summary.count("]")
        and summary.count("(") == summary.count(")")
    )
    return summary if balanced else paragraph


def render_index(modules: list[Module]) -> str:
    items = []
    for module in modules:
        summary = (
            render_prose(
                module.summary, f"{module.relative} (summary)", _url_rewriter(module, modules, "index.html")
            )
            if module.summary
            else ""
        )
        summary = re.sub(r"^<p>|</p>$", "", summary.strip())
        title = f' <span class="module-title">{html.escape(module.title)}</span>' if module.title else ""
        items.append(
            f'<li><a href="{module.page}"><code>{html.escape(module.relative)}</code></a>{title}'
            f'<div class="summary">{summary}</div></li>'
        )
    body = (
        '<div class="index">\n<h1>Contents</h1>\n'
        "<p>Each page shows a source file of this repository with its explanations on the left and the "
        "code they explain on the right. Start with the first page: it walks through the paper in order, "
        "from residual learning to the full network. References such as “§3.3” or “Table 3” open the "
        f'<a href="{PAPER_ABS_URL}">paper</a> at the right page.</p>\n'
        '<ol class="modules">\n' + "\n".join(items) + "\n</ol>\n</div>"
    )
    return PAGE_TEMPLATE.format(
        title=html.escape(SITE_TITLE),
        root="",
        site_title=html.escape(SITE_TITLE),
        nav=f'<a href="{PAPER_ABS_URL}">Paper</a>',
        body=body,
        paper_abs=PAPER_ABS_URL,
        generated_from="resnet/ and experiments/",
    )


# ---------------------------------------------------------------------------------------------------
# Writing the site
# ---------------------------------------------------------------------------------------------------

MANIFEST = ".docs-build-manifest.json"


def _prepare_output(out_dir: Path, source_root: Path) -> list[str]:
    """Check OUTDIR is safe to write and return the files a previous build left there.

    A build only ever writes into an empty folder or one it made itself (recognised by its manifest),
    so pointing it at the wrong folder cannot clobber anyone's files.
    """
    out_dir = out_dir.resolve()
    for protected in (source_root.resolve(), DOCS_DIR, REPO_ROOT):
        if out_dir == protected:
            raise BuildError(
                f"refusing to write the site into {out_dir}: it is a source folder. "
                "Pass a new or empty folder, for example build/site."
            )
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        raise BuildError(f"{out_dir} exists and is not a folder; pass a folder path for the site.")
    manifest = out_dir / MANIFEST
    if manifest.is_file():
        return list(json.loads(manifest.read_text(encoding="utf-8")))
    if any(out_dir.iterdir()):
        raise BuildError(
            f"{out_dir} is not empty and was not made by docs/build.py; refusing to write "
            "into it. Pass a new or empty folder, or delete its contents yourself."
        )
    return []


def _warn_about_missing_anchors(module: Module, page: str) -> None:
    """Name in-page links such as `[Foo](#Foo)` whose target does not exist on the page."""
    ids = set(re.findall(r'\bid="([^"]+)"', page))
    for target in sorted(set(re.findall(r'href="#([^"]+)"', page)) - ids):
        print(
            f"docs/build.py: warning: {module.relative} links to #{target}, which is not defined in that "
            "module; link to a class or function of the same file, or to the other page",
            file=sys.stderr,
        )


def build_site(
    out_dir: Path,
    source_root: Path = REPO_ROOT,
    packages: list[str] | None = None,
    source_url: str | None = None,
) -> list[Path]:
    """Build the whole site into `out_dir` and return the pages written, index first.

    Each page links to the file it is made from. Without `source_url` a copy of the file is written
    beside its page (`resnet/model.py` next to `resnet/model.html`), so the link works in a local build
    and on any static host; with it (`https://github.com/OWNER/REPO/blob/main`) the link goes to
    `source_url/resnet/model.py` and no copies are written.
    """
    packages = list(packages or DEFAULT_PACKAGES)
    previous = _prepare_output(out_dir, source_root)
    modules = discover_modules(source_root, packages)
    for module in modules:
        _describe(module)

    formatter = HtmlFormatter(cssclass="highlight")
    written: dict[str, str] = {"index.html": render_index(modules)}
    for module in modules:
        written[module.page] = render_module(module, modules, formatter, source_url)
        _warn_about_missing_anchors(module, written[module.page])
        if not source_url:
            written[module.relative] = module.source.read_text(encoding="utf-8")
    written["style.css"] = (
        (DOCS_DIR / "style.css").read_text(encoding="utf-8")
        + "\n/* Code colours, generated by pygments */\n"
        + formatter.get_style_defs(".highlight")
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, content in written.items():
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    # Hand-drawn diagrams (SVG) and plots our experiments produce (PNG).
    figures = (
        sorted(path for path in (DOCS_DIR / "figures").glob("*") if path.suffix in (".svg", ".png"))
        if (DOCS_DIR / "figures").is_dir()
        else []
    )
    for figure in figures:
        (out_dir / "figures").mkdir(exist_ok=True)
        shutil.copyfile(figure, out_dir / "figures" / figure.name)
        written[f"figures/{figure.name}"] = ""

    # Remove only files an earlier build of ours wrote and this one did not (a renamed module).
    for stale in set(previous) - set(written):
        stale_path = (out_dir / stale).resolve()
        if stale_path.is_file() and out_dir.resolve() in stale_path.parents:
            stale_path.unlink()
    (out_dir / MANIFEST).write_text(json.dumps(sorted(written), indent=1), encoding="utf-8")
    return [out_dir / "index.html"] + [out_dir / module.page for module in modules]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "out_dir", type=Path, help="folder to write the site into (new, empty, or an earlier build)"
    )
    parser.add_argument(
        "--source-root",
        type=Path,
        default=REPO_ROOT,
        help="folder holding the packages to document (default: this repository)",
    )
    parser.add_argument(
        "--package",
        action="append",
        dest="packages",
        metavar="NAME",
        help=f"package folder under the source root; repeatable (default: {', '.join(DEFAULT_PACKAGES)})",
    )
    parser.add_argument(
        "--source-url",
        metavar="URL",
        help="link each page's source to URL/<path of the file> (for example a GitHub blob URL) "
        "instead of to a copy of the file written beside the page",
    )
    args = parser.parse_args(argv)
    try:
        pages = build_site(args.out_dir, args.source_root, args.packages, args.source_url)
    except BuildError as error:
        print(f"docs/build.py: error: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {len(pages)} pages to {args.out_dir} (open {pages[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
