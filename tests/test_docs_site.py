"""The documentation site: prose beside code, formulas as MathML, working links, no network.

Most checks read the generated HTML; the browser tests load the pages in headless Chromium over the
DevTools protocol and ask the rendered page itself whether formulas were laid out as math, images
decoded and the two columns sit side by side. They are skipped when no Chromium binary is installed.
"""

from __future__ import annotations

import base64
import fcntl
import html
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "docs"))

import build  # noqa: E402  (docs/build.py is a script folder, not a package)

# A tiny stand-in for the library, so these tests do not depend on the tutorial's exact wording.
FIXTURE_TUTORIAL = r'''r"""
---
title: Residual learning in brief
summary: A block learns $\mathcal{F}(x) = H(x) - x$ instead of $H(x)$.
---

# Residual learning

A few stacked layers with weights $\{W_i\}$ fit $\mathcal{F}(x) = H(x) - x$ (§3.1), and the block adds
$x$ back:

$$y = \mathcal{F}(x, \{W_i\}) + x$$

Products such as $a*b*c$ and subscripts such as $x_i$ and $y_i$ stay formulas, not emphasis.
Table 3 compares the shortcut options of §3.3; Figure 6 shows CIFAR-10 training.

![Basic residual block](figures/basic_block.svg)
"""

from torch import nn


# ## The block
#
# Two $3 \times 3$ layers, as in Fig. 2. A `#` inside code or a string is not a comment.
class Block(nn.Module):
    r"""Computes $\mathcal{F}(x) + x$ in [`forward`](#Block.forward); see [the helpers](helpers.py)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        text = "# not a comment"
        # The residual branch $\mathcal{F}$
        self.branch = nn.Conv2d(channels, channels, 3, padding=1)  # trailing comments stay in the code

    def forward(self, x):  # noqa: D102
        return self.branch(x) + x
'''

FIXTURE_MODULES = {
    "resnet/model.py": FIXTURE_TUTORIAL,
    "resnet/helpers.py": (
        '"""Small helpers. ![Bottleneck block](figures/bottleneck_block.svg)"""\n\nVALUE = 1\n'
    ),
    "resnet/zoo/deep.py": (
        '"""A module two folders down, beside [the block](../model.py#Block).\n\n'
        '![Shortcut options A, B and C](figures/shortcut_options.svg)\n"""\n\n'
        "DEPTH = 2\n"
    ),
    "resnet/__init__.py": "",  # empty modules get no page
    "experiments/cifar10.py": '"""Training on CIFAR-10 (§4.2)."""\n\nEPOCHS = 1\n',
    # experiments/trainer.py is in the reading order but not here: it must simply get no page.
    "experiments/launch.py": "# Where a run starts.\nSTARTED = 0\n",
    "experiments/degradation.py": (
        '"""\n# Plain against residual networks\n\n'
        "```\n"
        "python experiments/degradation.py --quick                    # minutes per network\n"
        "python experiments/degradation.py --depths 20 32 56 --out figure6.png --stand-in\n"
        "```\n\n"
        "Deeper plain networks train worse (Figure 6); residual ones do not.\n"
        '"""\n\nDEPTHS = (20, 56)\n'
    ),
    "experiments/aaa_tools.py": "# Sorts first alphabetically, still comes after cifar10.py.\nTOOLS = 1\n",
    "experiments/data.py": "# Reading data.\nDATA = 1\n",
}

FIGURES = {
    "basic_block.svg": ("3×3 conv", "ReLU", "identity shortcut"),
    "bottleneck_block.svg": ("1×1 conv, 64 filters", "3×3 conv, 64", "1×1 conv, 256 filters"),
    "shortcut_options.svg": ("Option A", "Option B", "Option C", "zero", "1×1 conv, stride 2"),
}


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fixture_repo")
    for name, text in FIXTURE_MODULES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def fixture_site(fixture_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("fixture_site") / "site"
    build.build_site(site, fixture_root)
    return site


def _repo_has_modules() -> bool:
    return any(
        path.read_text(encoding="utf-8").strip()
        for package in build.DEFAULT_PACKAGES
        for path in (REPO_ROOT / package).rglob("*.py")
    )


@pytest.fixture(scope="module")
def repo_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _repo_has_modules():
        pytest.skip("resnet/ and experiments/ hold no modules yet, so there is no real site to check")
    site = tmp_path_factory.mktemp("repo_site") / "site"
    build.build_site(site)
    return site


# ---------------------------------------------------------------------------------------------------
# Math is protected from markdown
# ---------------------------------------------------------------------------------------------------


def test_set_braces_survive_markdown() -> None:
    rendered = build.render_prose(r"weights $\{W_i\}$ of the block")
    assert rendered.count("<math") == 1
    assert "&#x0007B;" in rendered and "&#x0007D;" in rendered  # "{" and "}" as MathML operators
    assert "\\{" not in rendered and "$" not in rendered


def test_star_and_underscore_inside_math_are_not_emphasis() -> None:
    rendered = build.render_prose(r"$a*b*c$ and $x_i$ and $y_i$")
    assert "<em>" not in rendered and "<strong>" not in rendered
    assert rendered.count("<math") == 3
    assert "<msub><mi>x</mi><mi>i</mi></msub>" in rendered
    assert "<msub><mi>y</mi><mi>i</mi></msub>" in rendered


def test_protect_math_hides_formulas_from_markdown() -> None:
    text, formulas = build.protect_math(r"$\mathcal{F}(x) = H(x) - x$ with $a*b*c$ and $$y = x_1$$")
    assert len(formulas) == 3
    assert not re.search(r"[$*_\\{}]", text), text  # nothing markdown could act on is left
    assert sum('display="block"' in formula for formula in formulas) == 1
    assert build.restore_math(text, formulas).count("<math") == 3


def test_residual_definition_renders_as_script_f() -> None:
    rendered = build.render_prose(r"$\mathcal{F}(x) = H(x) - x$")
    assert "&#x02131;" in rendered  # U+2131 SCRIPT CAPITAL F
    assert "&#x02212;" in rendered  # a real minus sign


def test_display_math_is_not_wrapped_in_a_paragraph() -> None:
    rendered = build.render_prose("Before.\n\n$$y = F(x) + x$$\n\nAfter.")
    assert 'display="block"' in rendered
    assert "<p><math" not in rendered


def test_dollars_in_code_escaped_or_prices_stay_text() -> None:
    rendered = build.render_prose(r"Use `$x$` literally, pay \$5, or costs $5 and $6.")
    assert "<math" not in rendered
    assert "<code>$x$</code>" in rendered
    assert "pay $5" in rendered and "costs $5 and $6" in rendered


def test_unsupported_latex_is_a_clear_error() -> None:
    with pytest.raises(build.BuildError, match=r"\\notacommand.*rewrite the formula"):
        build.render_prose(r"$\notacommand{x}$", where="resnet/model.py:3")


# ---------------------------------------------------------------------------------------------------
# Links to the paper
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "page"),
    [
        ("§3.3", 3),
        ("§4.2", 7),
        ("Table 3", 6),
        ("Figure 6", 8),
        ("Fig. 5", 6),
        ("Eqn. (2)", 3),
        ("Table 1", 5),
    ],
)
def test_paper_references_open_the_right_pdf_page(reference: str, page: int) -> None:
    linked = build.link_paper_references(f"<p>see {reference}.</p>")
    assert f'href="https://arxiv.org/pdf/1512.03385#page={page}"' in linked
    assert f">{reference}</a>" in linked


def test_equation_reference_does_not_swallow_the_closing_parenthesis() -> None:
    linked = build.link_paper_references("<p>(§3.2, Eq. 1)</p>")
    assert ">Eq. 1</a>)" in linked


def test_paper_references_inside_code_or_links_are_left_alone() -> None:
    source = '<p><code>Table 3</code> <a href="x.html">Figure 6</a></p>'
    assert build.link_paper_references(source) == source


# ---------------------------------------------------------------------------------------------------
# Splitting a module into rows
# ---------------------------------------------------------------------------------------------------


def test_each_comment_run_or_docstring_starts_a_row_with_the_code_below_it() -> None:
    sections = build.split_sections(FIXTURE_TUTORIAL)
    prose = ["\n\n".join(section.prose) for section in sections]
    assert prose[0].startswith("---")  # the module docstring, front matter included
    assert sections[0].code == ["from torch import nn"]
    # The comment above the class and the class docstring explain the same code: one row.
    assert prose[1].startswith("## The block")
    assert "\n\nTwo $3 \\times 3$ layers" in prose[1]  # the empty `#` line became a paragraph break
    assert prose[1].endswith("see [the helpers](helpers.py).")
    assert sections[1].code[0] == "class Block(nn.Module):"
    assert 'text = "# not a comment"' in "\n".join(sections[1].code)
    assert prose[2] == r"The residual branch $\mathcal{F}$"
    branch_code = "\n".join(sections[2].code)
    assert "# trailing comments stay in the code" in branch_code
    assert "# noqa: D102" in branch_code  # tool directives are code, not prose
    assert len(sections) == 3


def test_a_definition_sits_beside_its_own_docstring() -> None:
    source = (
        "x = 1\n\n\n"
        "@decorator\n"
        "def scaled(value: float,\n"
        "           factor: float) -> float:\n"
        '    """Why scaling helps."""\n'
        "    return value * factor\n"
    )
    sections = build.split_sections(source)
    assert [section.code for section in sections] == [
        ["x = 1"],
        [
            "@decorator",
            "def scaled(value: float,",
            "           factor: float) -> float:",
            "    return value * factor",
        ],
    ]
    assert sections[1].prose == ["Why scaling helps."]
    assert sections[1].code_line_numbers == [4, 5, 6, 8]


def test_code_before_any_comment_gets_a_row_without_prose() -> None:
    sections = build.split_sections("import os\n\n# Why we need it.\nx = os.sep\n")
    assert sections[0].prose == [] and sections[0].code == ["import os"]
    assert sections[1].prose == ["Why we need it."] and sections[1].code == ["x = os.sep"]


def test_syntax_error_names_the_file() -> None:
    with pytest.raises(build.BuildError, match="broken.py.*syntax"):
        build.split_sections("def f(:\n", "broken.py")


# ---------------------------------------------------------------------------------------------------
# The built site
# ---------------------------------------------------------------------------------------------------


class _PageLinks(HTMLParser):
    """Collects every URL a page refers to, which element refers to it, and every id it defines."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []
        self.ids: set[str] = set()
        self.id_list: list[str] = []  # in page order, repeats kept
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"] or "")
            self.id_list.append(values["id"] or "")
        if tag == "script":
            self.scripts += 1
        for name in ("href", "src"):
            if values.get(name) is not None:
                self.urls.append((tag, values[name] or ""))


def _parse(page: Path) -> _PageLinks:
    parser = _PageLinks()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def assert_site_is_self_contained(site: Path) -> list[Path]:
    """Every internal link and image resolves; nothing is loaded from the network; no scripts."""
    pages = sorted(site.rglob("*.html"))
    assert pages, f"no pages in {site}"
    ids = {page: _parse(page).ids for page in pages}
    for page in pages:
        parsed = _parse(page)
        assert parsed.scripts == 0, f"{page} has a <script>; the site must work without JavaScript"
        for tag, url in parsed.urls:
            parts = urlsplit(url)
            if parts.scheme or parts.netloc:
                assert tag == "a" and parts.scheme == "https" and parts.netloc == "arxiv.org", (
                    f"{page.relative_to(site)} refers to {url} from <{tag}>; "
                    "only links to the paper may leave the site"
                )
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            assert target.is_file(), f"{page.relative_to(site)}: <{tag}> {url!r} points at a missing file"
            assert site.resolve() in target.parents, f"{page.relative_to(site)}: {url!r} leaves the site"
            if parts.fragment and target.suffix == ".html":
                assert parts.fragment in ids[target], (
                    f"{page.relative_to(site)}: {url} points at #{parts.fragment}, which that page lacks"
                )
    return pages


def _prose_text(page: Path) -> str:
    """The visible text of the prose column, formulas removed (they are MathML, not text with `$`)."""
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"<math\b.*?</math>", " ", text, flags=re.DOTALL)
    text = re.sub(r"<pre\b.*?</pre>|<code\b.*?</code>", " ", text, flags=re.DOTALL)
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


RAW_MATH = re.compile(r"\$\$.+?\$\$|\$(?=\S)[^$\n]+?(?<=\S)\$(?!\d)", re.DOTALL)


def test_fixture_site_pages_follow_the_reading_order(fixture_site: Path) -> None:
    index = (fixture_site / "index.html").read_text(encoding="utf-8")
    order = re.findall(r'<li><a href="([^"]+)"', index)
    assert order == [
        "resnet/model.html",
        "resnet/helpers.html",
        "resnet/zoo/deep.html",
        "experiments/cifar10.html",
        "experiments/degradation.html",
        "experiments/launch.html",
        "experiments/data.html",
        "experiments/aaa_tools.html",
    ]
    assert not (fixture_site / "resnet" / "__init__.html").exists()
    # Listed in READING_ORDER, absent from the fixture: no page, and nothing links to one.
    assert "experiments/trainer.py" in build.READING_ORDER
    assert not (fixture_site / "experiments" / "trainer.html").exists()
    assert all(
        "trainer.html" not in page.read_text(encoding="utf-8") for page in fixture_site.rglob("*.html")
    )
    assert "Residual learning in brief" in index  # title from the front matter


def test_fixture_site_links_and_images_resolve(fixture_site: Path) -> None:
    pages = assert_site_is_self_contained(fixture_site)
    assert len(pages) == 9
    for name in FIGURES:
        assert (fixture_site / "figures" / name).is_file()
    deep = (fixture_site / "resnet" / "zoo" / "deep.html").read_text(encoding="utf-8")
    assert 'src="../../figures/shortcut_options.svg"' in deep
    tutorial = (fixture_site / "resnet" / "model.html").read_text(encoding="utf-8")
    assert 'href="helpers.html"' in tutorial  # a link to helpers.py leads to its page


def test_fixture_tutorial_page_has_math_and_no_raw_dollars(fixture_site: Path) -> None:
    page = fixture_site / "resnet" / "model.html"
    text = page.read_text(encoding="utf-8")
    assert text.count("<math") >= 8
    assert "$" not in _prose_text(page)
    assert "\\{" not in text and "<em>b</em>" not in text and "<em>i" not in text
    assert "title:" not in text and "summary:" not in text  # front matter is not shown as prose
    assert text.count('class="section"') == 3
    assert '<span class="k">class</span>' in text  # pygments highlighted the code
    assert re.search(r'href="https://arxiv.org/pdf/1512.03385#page=6"[^>]*>Table 3</a>', text)
    assert 'id="Block"' in text and 'id="Block.forward"' in text  # definitions can be linked as #Name


def test_a_second_build_replaces_its_own_output(fixture_root: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    build.build_site(site, fixture_root)
    extra = fixture_root / "experiments" / "renamed_later.py"
    extra.write_text("# Short-lived.\nX = 1\n", encoding="utf-8")
    try:
        build.build_site(site, fixture_root)
        assert (site / "experiments" / "renamed_later.html").is_file()
    finally:
        extra.unlink()
    build.build_site(site, fixture_root)
    assert not (site / "experiments" / "renamed_later.html").exists()  # its stale page was removed


def test_refuses_to_write_into_a_folder_it_did_not_make(fixture_root: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("mine", encoding="utf-8")
    with pytest.raises(build.BuildError, match="not empty and was not made by docs/build.py"):
        build.build_site(tmp_path, fixture_root)
    assert notes.read_text(encoding="utf-8") == "mine"
    assert not (tmp_path / "index.html").exists()


def test_command_line_reports_a_missing_source_root(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "docs" / "build.py"),
            str(tmp_path / "site"),
            "--source-root",
            str(tmp_path / "nowhere"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "no Python modules found" in result.stderr and "--source-root" in result.stderr


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figures_are_labelled_svg(name: str) -> None:
    root = ElementTree.parse(REPO_ROOT / "docs" / "figures" / name).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.find("{http://www.w3.org/2000/svg}title") is not None
    labels = " ".join(
        "".join(element.itertext()) for element in root.iter("{http://www.w3.org/2000/svg}text")
    )
    for label in FIGURES[name]:
        assert label in labels, f"{name} lacks the label {label!r}"


def test_repo_site_links_resolve_and_math_is_rendered(repo_site: Path) -> None:
    pages = assert_site_is_self_contained(repo_site)
    for page in pages:
        leftover = RAW_MATH.search(_prose_text(page))
        assert leftover is None, f"{page.relative_to(repo_site)} shows raw LaTeX: {leftover.group(0)!r}"
    # The tutorial module opens the reading order; its page must exist, come first, and show formulas.
    tutorial = build.READING_ORDER[0].removesuffix(".py") + ".html"
    assert (repo_site / tutorial).is_file(), f"the site has no page for the tutorial {build.READING_ORDER[0]}"
    assert "<math" in (repo_site / tutorial).read_text(encoding="utf-8")
    first = re.search(r'<li><a href="([^"]+)"', (repo_site / "index.html").read_text(encoding="utf-8"))
    assert first is not None and first.group(1) == tutorial


# ---------------------------------------------------------------------------------------------------
# Reading order
# ---------------------------------------------------------------------------------------------------


def test_reading_order_is_tutorial_then_training_then_experiment_then_operations() -> None:
    order = list(build.READING_ORDER)
    assert order[0] == "resnet/model.py"
    last_model_page = max(index for index, name in enumerate(order) if name.startswith("resnet/"))
    assert order[last_model_page + 1 : last_model_page + 6] == [
        "experiments/cifar10.py",  # the training tutorial
        "experiments/degradation.py",  # the paper's central experiment, Figure 6, built on it
        "experiments/trainer.py",  # and the machinery the tutorial imports
        "experiments/average.py",
        "experiments/launch.py",
    ]
    assert len(order) == len(set(order))


def test_repo_index_follows_the_reading_order(repo_site: Path) -> None:
    index = (repo_site / "index.html").read_text(encoding="utf-8")
    order = [page.removesuffix(".html") + ".py" for page in re.findall(r'<li><a href="([^"]+)"', index)]
    assert order[0] == "resnet/model.py"
    listed = [name for name in build.READING_ORDER if (REPO_ROOT / name).is_file() and name in order]
    assert [name for name in order if name in listed] == listed  # listed pages keep the listed order
    experiments = [name for name in order if name.startswith("experiments/")]
    assert experiments[:2] == ["experiments/cifar10.py", "experiments/degradation.py"]
    assert (
        order.index("experiments/cifar10.py")
        == max(index for index, name in enumerate(order) if name.startswith("resnet/")) + 1
    )


# ---------------------------------------------------------------------------------------------------
# Row anchors: named after headings, stable and unique
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Residual block", "residual-block"),
        ('Projection shortcut (<math display="inline"><mi>W</mi></math>)', "projection-shortcut"),
        ("The CIFAR-10 networks (§4.2)", "the-cifar-10-networks-4-2"),
        ("Choosing the number format: <code>amp=auto</code>", "choosing-the-number-format-amp-auto"),
        ("Café &amp; crème", "cafe-creme"),
    ],
)
def test_slugify(heading: str, slug: str) -> None:
    assert build.slugify(heading) == slug


def test_rows_are_named_after_their_headings(fixture_site: Path) -> None:
    page = (fixture_site / "resnet" / "model.html").read_text(encoding="utf-8")
    rows = re.findall(
        r'<div class="section" id="([^"]+)">\n<div class="docs">(?:<span[^>]*></span>)*'
        r'<a class="anchor" href="#([^"]+)"',
        page,
    )
    assert rows == [
        ("residual-learning", "residual-learning"),
        ("the-block", "the-block"),
        ("the-block-1", "the-block-1"),
    ]  # a row without a heading counts on from the one above
    assert "section-" not in page


def test_row_names_survive_rows_added_above_them(tmp_path: Path) -> None:
    before = _row_ids(FIXTURE_TUTORIAL, tmp_path / "before")
    edited = FIXTURE_TUTORIAL.replace(
        "from torch import nn\n", "from torch import nn\n\n# A new note.\nX = 1\n"
    )
    after = _row_ids(edited, tmp_path / "after")
    assert len(after) == len(before) + 1
    assert after[0] == before[0] == "residual-learning"
    assert "the-block" in after and after.index("the-block") == before.index("the-block") + 1
    assert after[after.index("the-block") + 1] == "the-block-1"  # the rows under "The block" keep theirs


def _render_page(source: str, tmp_path: Path) -> str:
    path = tmp_path / "resnet" / "model.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    module = build.Module(source=path, relative="resnet/model.py", page="resnet/model.html")
    return build.render_module(module, [module], build.HtmlFormatter(cssclass="highlight"))


def _row_ids(source: str, tmp_path: Path) -> list[str]:
    """The ids of a module's rows, in order, as render_module names them."""
    return re.findall(r'<div class="section" id="([^"]+)"', _render_page(source, tmp_path))


def test_row_names_are_unique_and_leave_definition_names_alone(tmp_path: Path) -> None:
    source = (
        '"""\n# Forward\n\n## Details\n\nMore.\n"""\n\nimport os\n\n'
        "# ## Forward\nA = 1\n\n"
        "# No heading.\nB = 2\n\n"
        "# ## Details\ndef forward():\n    return 1\n"
    )
    page = _render_page(source, tmp_path)
    # `#forward` belongs to the function; the headings named "Forward" take the next free names.
    assert re.findall(r'<div class="section" id="([^"]+)"', page) == [
        "forward-2",
        "forward-3",
        "forward-3-1",
        "details-2",
    ]
    assert '<span class="target" id="forward">' in page
    assert '<h2 id="details">Details</h2>' in page  # a later heading of one row gets an id of its own
    parsed = _PageLinks()
    parsed.feed(page)
    assert len(parsed.id_list) == len(set(parsed.id_list))


def test_repo_pages_have_unique_ids_and_named_rows(repo_site: Path) -> None:
    for page in sorted(repo_site.rglob("*.html")):
        parsed = _parse(page)
        repeated = sorted({name for name in parsed.id_list if parsed.id_list.count(name) > 1})
        assert repeated == [], f"{page.relative_to(repo_site)} repeats the ids {repeated}"
        assert not any(re.fullmatch(r"section-\d+", name) for name in parsed.id_list)
    tutorial = (repo_site / "resnet" / "model.html").read_text(encoding="utf-8")
    for heading in ("residual-block", "bottleneck-residual-block", "choosing-the-shortcut", "the-stem"):
        assert f'<div class="section" id="{heading}">' in tutorial


def _row(page_html: str, row_id: str) -> str:
    match = re.search(rf'<div class="section" id="{row_id}">(.*?)<div class="code">', page_html, re.DOTALL)
    assert match is not None, f"no row #{row_id}"
    return match.group(1)


def test_shortcut_figure_sits_under_choosing_the_shortcut(repo_site: Path) -> None:
    tutorial = (repo_site / "resnet" / "model.html").read_text(encoding="utf-8")
    assert "shortcut_options.svg" in _row(tutorial, "choosing-the-shortcut")
    assert "shortcut_options.svg" not in _row(tutorial, "projection-shortcut")
    assert tutorial.count('src="../figures/shortcut_options.svg"') == 1


# ---------------------------------------------------------------------------------------------------
# Links to the source file
# ---------------------------------------------------------------------------------------------------


def _source_href(page: Path) -> str:
    match = re.search(
        r'<a class="source-link" href="([^"]+)"><code>([^<]+)</code></a>', page.read_text("utf-8")
    )
    assert match is not None, f"{page} has no link to its source file"
    return html.unescape(match.group(1))


def test_each_page_links_to_a_copy_of_its_source(fixture_root: Path, fixture_site: Path) -> None:
    for name in FIXTURE_MODULES:
        if not FIXTURE_MODULES[name].strip():
            continue
        page = fixture_site / (name.removesuffix(".py") + ".html")
        href = _source_href(page)
        assert (page.parent / href).resolve() == (fixture_site / name).resolve()
        assert (fixture_site / name).read_text(encoding="utf-8") == (fixture_root / name).read_text("utf-8")


def test_source_links_can_point_at_a_hosted_repository(fixture_root: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    build.build_site(site, fixture_root, source_url="https://github.com/example/resnet/blob/main/")
    href = _source_href(site / "resnet" / "zoo" / "deep.html")
    assert href == "https://github.com/example/resnet/blob/main/resnet/zoo/deep.py"
    assert not list(site.rglob("*.py"))  # no copies when the sources are hosted


def test_repo_pages_link_to_their_source(repo_site: Path) -> None:
    for page in sorted(repo_site.glob("*/*.html")):
        source = page.relative_to(repo_site).as_posix().removesuffix(".html") + ".py"
        target = (page.parent / _source_href(page)).resolve()
        assert target.read_text(encoding="utf-8") == (REPO_ROOT / source).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------
# Citations of other papers, code in summaries, prose code blocks, fonts
# ---------------------------------------------------------------------------------------------------


def test_section_numbers_the_paper_does_not_have_are_not_linked_to_it() -> None:
    source = "<p>Delving Deep (§2.2) and §3.3</p>"
    linked = build.link_paper_references(source)
    assert "(§2.2)" in linked and ">§2.2</a>" not in linked
    assert ">§3.3</a>" in linked


def test_delving_deep_links_to_its_own_paper(repo_site: Path) -> None:
    tutorial = (repo_site / "resnet" / "model.html").read_text(encoding="utf-8")
    links = re.findall(r'<a\b[^>]*href="([^"]+)"[^>]*>([^<]*Delving Deep[^<]*)</a>', tutorial)
    assert links, "the tutorial does not link Delving Deep into Rectifiers"
    assert {href for href, _ in links} == {"https://arxiv.org/abs/1502.01852"}
    assert not re.search(r'1512\.03385[^"]*"[^>]*>§2\.2<', tutorial)  # §2.2 is not in the ResNet paper


def test_summaries_leave_code_blocks_out(fixture_site: Path) -> None:
    index = (fixture_site / "index.html").read_text(encoding="utf-8")
    summary = re.search(r'href="experiments/degradation.html".*?<div class="summary">(.*?)</div>', index)
    assert summary is not None
    assert "Deeper plain networks train worse" in summary.group(1)
    assert "python experiments" not in summary.group(1)
    # A summary's links are rewritten for the contents page, which sits at the root of the site.
    assert 'href="resnet/model.html#Block"' in index


def test_repo_summaries_do_not_flatten_code_blocks(repo_site: Path) -> None:
    index = (repo_site / "index.html").read_text(encoding="utf-8")
    summaries = " ".join(re.findall(r'<div class="summary">(.*?)</div></li>', index, re.DOTALL))
    text = html.unescape(re.sub(r"<[^>]+>", "", summaries))
    assert "<pre" not in summaries
    for page in re.findall(r'<li><a href="([^"]+)"', index):
        source = (REPO_ROOT / (page.removesuffix(".html") + ".py")).read_text(encoding="utf-8")
        for fence in re.findall(r"^```[^\n]*\n(.*?)^```", source, re.MULTILINE | re.DOTALL):
            lines = [" ".join(line.split()) for line in fence.splitlines() if line.strip()]
            for first, second in zip(lines, lines[1:], strict=False):
                assert f"{first} {second}" not in text, f"the summary of {page} runs code lines together"


def test_prose_code_blocks_keep_one_element_per_line() -> None:
    rendered = build.render_prose('```python\nx = """a\nb"""\n\ny = 2\n```')
    lines = re.findall(r'<span class="line">(.*?)\n</span>', rendered, re.DOTALL)
    assert len(lines) == 4
    for line in lines:  # each line is well-formed on its own, even inside a multi-line string
        assert line.count("<span") == line.count("</span>") and line.count("<code") == line.count("</code>")
    assert html.unescape(re.sub(r"<[^>]+>", "", "\n".join(lines))) == 'x = """a\nb"""\n\ny = 2'


def _math_font_families() -> list[str]:
    css = (REPO_ROOT / "docs" / "style.css").read_text(encoding="utf-8")
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL)
    rule = re.search(r"(?:^|\})\s*math\s*\{([^}]*)\}", css)
    assert rule is not None, "style.css has no rule for <math>"
    families = re.search(r"font-family:\s*([^;]+);", rule.group(1))
    assert families is not None, "the <math> rule sets no font-family"
    return [family.strip().strip("\"'") for family in families.group(1).split(",")]


def test_math_fonts_come_before_any_text_font() -> None:
    families = _math_font_families()
    assert "math" in families, "the generic `math` family is missing"
    named = families[: families.index("math")]
    assert named, "no named math font before the generic one"
    # Only fonts with a MATH table may come before `math`; a text font there (DejaVu Serif) wins for
    # every glyph it has, and scripts are then placed without the metrics they need.
    assert all("Math" in family for family in named), named


# ---------------------------------------------------------------------------------------------------
# In a real browser
# ---------------------------------------------------------------------------------------------------


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (no extra packages, no ports)."""

    def __init__(self, binary: str, profile: Path, width: int = 1400, height: int = 1000) -> None:
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()
        # Chromium expects the pipe on file descriptors 3 (commands in) and 4 (replies out).
        high_in = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
        high_out = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)

        def attach_pipe() -> None:
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        arguments = [
            binary,
            "--headless",
            "--remote-debugging-pipe",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            arguments.insert(1, "--no-sandbox")  # Chromium refuses to start its sandbox as root
        self._process = subprocess.Popen(
            arguments,
            preexec_fn=attach_pipe,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in (to_browser_read, from_browser_write, high_in, high_out):
            os.close(fd)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, object]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._from_browser], [], [], remaining)[0]:
                raise TimeoutError("Chromium did not answer within the time limit")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe (did it fail to start?)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, timeout: float = 30.0, **params: object) -> dict:
        self._next_id += 1
        message: dict = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def open(self, url: str, timeout: float = 30.0) -> None:
        self._events.clear()
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + timeout
        while not any(event.get("method") == "Page.loadEventFired" for event in self._events):
            self._events.append(self._read_message(deadline))

    def evaluate(self, expression: str) -> object:
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


# What the rendered page says about itself: formulas laid out by the MathML engine, images decoded,
# prose and code columns next to each other, code coloured by the stylesheet.
PAGE_REPORT = """(() => {
  const maths = [...document.querySelectorAll('math')];
  const rows = [...document.querySelectorAll('.section')].filter(row => row.querySelector('.code pre'));
  const firstRow = rows[0];
  const box = element => {
    const r = element.getBoundingClientRect();
    return [r.left, r.right, r.top, r.width];
  };
  const keyword = document.querySelector('.code .k');
  return {
    mathCount: maths.length,
    mathLaidOut: maths.filter(m => getComputedStyle(m).display.includes('math')
                                   && m.getBoundingClientRect().width > 0).length,
    brokenImages: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
                                      .map(i => i.getAttribute('src')),
    imageCount: document.images.length,
    proseText: [...document.querySelectorAll('.docs')].map(d => d.innerText).join('\\n'),
    prose: firstRow ? box(firstRow.querySelector('.docs')) : null,
    code: firstRow ? box(firstRow.querySelector('.code')) : null,
    keywordColour: keyword ? getComputedStyle(keyword).color : null,
    bodyColour: getComputedStyle(document.body).color,
  };
})()"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    binary = _find_chromium()
    if binary is None:
        pytest.skip("no Chromium binary on PATH (install the Debian package `chromium` to run browser tests)")
    session = Browser(binary, tmp_path_factory.mktemp("chromium_profile"))
    yield session
    session.close()


def _check_pages_in_browser(browser: Browser, site: Path) -> dict[str, dict]:
    reports = {}
    for page in sorted(site.rglob("*.html")):
        browser.open(page.as_uri())
        report = browser.evaluate(PAGE_REPORT)
        assert isinstance(report, dict)
        name = page.relative_to(site).as_posix()
        assert report["brokenImages"] == [], f"{name}: images failed to load: {report['brokenImages']}"
        assert report["mathLaidOut"] == report["mathCount"], f"{name}: some formulas are not laid out as math"
        leftover = RAW_MATH.search(report["proseText"])
        assert leftover is None, f"{name}: raw LaTeX in the rendered text: {leftover.group(0)!r}"
        reports[name] = report
    return reports


def _save_screenshot(browser: Browser, page: Path, path: Path) -> None:
    browser.open(page.as_uri())
    browser.screenshot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Keep a copy for people who want to look at it (tests never write into the repository).
    keep = os.environ.get("DOCS_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(keep) / path.name)


def test_fixture_site_renders_in_chromium(browser: Browser, fixture_site: Path, tmp_path: Path) -> None:
    reports = _check_pages_in_browser(browser, fixture_site)
    tutorial = reports["resnet/model.html"]
    assert tutorial["mathCount"] >= 8 and tutorial["imageCount"] == 1
    assert "$" not in tutorial["proseText"]
    prose_left, prose_right, prose_top, _ = tutorial["prose"]
    code_left, _, code_top, code_width = tutorial["code"]
    assert prose_right <= code_left + 1, "the prose column overlaps the code column"
    assert abs(prose_top - code_top) < 1, "prose and code of one row do not start at the same height"
    assert code_width > 500
    assert tutorial["keywordColour"] != tutorial["bodyColour"], "code is not highlighted"
    assert reports["resnet/zoo/deep.html"]["imageCount"] == 1
    _save_screenshot(browser, fixture_site / "resnet" / "model.html", tmp_path / "fixture_tutorial.png")


def test_repo_site_renders_in_chromium(browser: Browser, repo_site: Path, tmp_path: Path) -> None:
    reports = _check_pages_in_browser(browser, repo_site)
    tutorial = build.READING_ORDER[0].removesuffix(".py") + ".html"
    assert tutorial in reports, f"the browser was not shown the tutorial page {tutorial}"
    assert reports[tutorial]["mathCount"] > 0, "the tutorial page shows no formulas"
    _save_screenshot(browser, repo_site / tutorial, tmp_path / "repo_tutorial.png")
    _save_screenshot(browser, repo_site / "index.html", tmp_path / "repo_index.png")


# Every code block in the prose column, and how wide its text is against the room it has.
PROSE_CODE_REPORT = """(() => [...document.querySelectorAll('.docs pre')].map(pre => ({
  text: pre.innerText.slice(0, 60),
  room: pre.clientWidth,
  needed: pre.scrollWidth,
  lines: [...pre.querySelectorAll('.line')].filter(line => getComputedStyle(line).display === 'block').length,
})))()"""


def test_usage_blocks_fit_the_prose_column_in_chromium(browser: Browser, repo_site: Path) -> None:
    for name in ("experiments/cifar10.html", "experiments/degradation.html"):
        browser.open((repo_site / name).as_uri())
        blocks = browser.evaluate(PROSE_CODE_REPORT)
        assert isinstance(blocks, list) and blocks, f"{name} shows no usage block"
        for block in blocks:
            assert block["needed"] <= block["room"] + 1, f"{name}: a code block is cut off: {block}"
            assert block["lines"] > 0, f"{name}: a code block's lines are not wrapped one by one: {block}"


def _installed_font_families() -> set[str]:
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return set()
    listing = subprocess.run([fc_list, ":", "family"], capture_output=True, text=True).stdout
    return {family.strip() for line in listing.splitlines() for family in line.split(",")}


def test_formulas_are_set_in_a_math_font_in_chromium(browser: Browser, fixture_site: Path) -> None:
    wanted = [family for family in _math_font_families() if family != "math"]
    if not set(wanted) & _installed_font_families():
        pytest.skip(f"none of the math fonts {wanted} is installed")
    browser.open((fixture_site / "resnet" / "model.html").as_uri())
    browser.call("DOM.enable", session=True)
    browser.call("CSS.enable", session=True)
    root = browser.call("DOM.getDocument", session=True)["root"]["nodeId"]
    nodes = browser.call("DOM.querySelectorAll", session=True, nodeId=root, selector="math mi, math mn")
    glyphs: dict[str, int] = {}
    for node in nodes["nodeIds"]:
        for font in browser.call("CSS.getPlatformFontsForNode", session=True, nodeId=node)["fonts"]:
            glyphs[font["familyName"]] = glyphs.get(font["familyName"], 0) + font["glyphCount"]
    assert glyphs, "no formula glyphs were drawn"
    most_used = max(glyphs, key=lambda family: glyphs[family])
    assert "Math" in most_used, f"formulas are drawn mostly in {most_used}, not a math font: {glyphs}"
