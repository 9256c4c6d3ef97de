"""
The README's Python examples run as written. Every ```` ```python ```` block in `README.md` is executed,
statement by statement, in a fresh namespace that holds only what the blocks above it imported (a reader
going down the page has those), and where a statement's comment states a result, it is checked:

* `name = ...  # [8, 128, 16, 16]`: `name` is a tensor of that shape;
* `name = ...  # ..., 853,018 parameters`: the model `name` has that many parameters;
* `...  # ValueError: unknown model 'resnt56'; did you mean ...`: the statement raises that exception,
  and its message contains the text shown (up to a trailing `...`).

A block that cannot run here (it needs a GPU, the network, a checkpoint, a path of the reader's own)
opens with a line starting with `SKIP_MARKER` followed by the reason, which becomes the skip message.
Blocks in other languages (`bash`, printed output) are never run.
"""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parent.parent / "README.md"
SKIP_MARKER = "# not run by tests/test_readme.py:"

_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
_SHAPE = re.compile(r"#\s*\[(\d+(?:\s*,\s*\d+)*)\]\s*$")
_PARAMETERS = re.compile(r"#.*?\b(\d{1,3}(?:,\d{3})+|\d+) parameters\b")
_RAISES = re.compile(r"#\s*(\w+(?:Error|Exception|Exit)):\s*(.*?)\s*(?:\.\.\.|…)?\s*$")


def python_blocks() -> dict[str, tuple[int, str]]:
    """Each Python block of the README by where it starts (`README.md:<line>`): first line, code."""
    text = README.read_text(encoding="utf-8")
    blocks = {}
    for match in _BLOCK.finditer(text):
        first_line = text.count("\n", 0, match.start()) + 2
        blocks[f"README.md:{first_line}"] = (first_line, match.group(1))
    return blocks


BLOCKS = python_blocks()


def runnable(code: str) -> bool:
    return not code.startswith(SKIP_MARKER)


def imports_above(where: str) -> list[ast.stmt]:
    """The top-level imports of the runnable blocks before `where`."""
    statements: list[ast.stmt] = []
    for name, (_, code) in BLOCKS.items():
        if name == where:
            break
        if runnable(code):
            statements += [s for s in ast.parse(code).body if isinstance(s, (ast.Import, ast.ImportFrom))]
    return statements


def run(statement: ast.stmt, namespace: dict[str, object], first_line: int) -> None:
    ast.increment_lineno(statement, first_line - 1)  # so a traceback names the README's own line
    exec(compile(ast.Module(body=[statement], type_ignores=[]), str(README), "exec"), namespace)


def test_the_readme_has_python_examples_to_run() -> None:
    # A change to the fences that hid every block from this file would otherwise pass unnoticed.
    count = sum(runnable(code) for _, code in BLOCKS.values())
    assert count >= 3, f"found {count} runnable ```python blocks in {README}"


@pytest.mark.parametrize("where", BLOCKS)
def test_a_readme_example_runs_and_gives_what_its_comments_say(where: str) -> None:
    first_line, code = BLOCKS[where]
    if not runnable(code):
        pytest.skip(code.splitlines()[0][len(SKIP_MARKER) :].strip() or "marked as not runnable")
    namespace: dict[str, object] = {"__name__": "readme_example"}
    for statement in imports_above(where):
        exec(compile(ast.Module(body=[statement], type_ignores=[]), str(README), "exec"), namespace)
    lines = code.splitlines()
    for statement in ast.parse(code).body:
        line = lines[statement.end_lineno - 1]
        at = f"{README.name}:{first_line + statement.end_lineno - 1}"
        if raises := _RAISES.search(line):
            name, shown = raises.groups()
            expected = getattr(builtins, name, None) or namespace.get(name)
            assert isinstance(expected, type) and issubclass(expected, BaseException), f"{at}: no {name}"
            with pytest.raises(expected) as caught:
                run(statement, namespace, first_line)
            assert shown in str(caught.value), f"{at}: the {name} says {str(caught.value)!r}"
            continue
        run(statement, namespace, first_line)
        target = statement.targets[0] if isinstance(statement, ast.Assign) else None
        if not isinstance(target, ast.Name):
            continue
        value = namespace[target.id]
        if shape := _SHAPE.search(line):
            expected_shape = [int(v) for v in shape.group(1).split(",")]
            assert isinstance(value, torch.Tensor), f"{at}: {target.id} is not a tensor"
            assert list(value.shape) == expected_shape, f"{at}: {target.id} has shape {list(value.shape)}"
        if parameters := _PARAMETERS.search(line):
            expected_count = int(parameters.group(1).replace(",", ""))
            assert isinstance(value, torch.nn.Module), f"{at}: {target.id} is not a module"
            counted = sum(p.numel() for p in value.parameters())
            assert counted == expected_count, f"{at}: {target.id} has {counted:,} parameters"
