"""
The command line as a user meets it, in a real process: two-line mistakes, a short `--help`, and a
`--data-dir` that forgives pointing at `cifar-10-batches-py/` itself.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_main import ROOT, run_trainer, tiny_args, write_data

from experiments.data import BATCHES_FOLDER
from experiments.loader import data_root

SCRIPT = ROOT / "experiments" / "cifar10.py"


def run_script(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )


def test_a_mistyped_flag_is_two_lines_with_a_suggestion_and_exit_2(tmp_path: Path) -> None:
    done = run_script("--epcohs", "1", "--logs-dir", str(tmp_path / "logs"))
    assert done.returncode == 2 and done.stdout == ""
    first, second = done.stderr.strip().splitlines()
    assert first == "experiments/cifar10.py: error: unknown option --epcohs; did you mean --epochs?"
    assert second.startswith("usage: experiments/cifar10.py")
    assert not (tmp_path / "logs").exists()


def test_help_fits_on_a_screen_and_points_to_the_full_lists() -> None:
    done = run_script("--help")
    assert done.returncode == 0
    assert len(done.stdout.splitlines()) < 60
    assert "--help-recipes" in done.stdout and "--list-configs" in done.stdout


def test_data_dir_is_the_parent_of_the_batches_folder_or_that_folder_itself(tmp_path: Path) -> None:
    root = tmp_path / "data"
    assert data_root(root) == root
    assert data_root(root / BATCHES_FOLDER) == root
    # A cifar-10-batches-py/ that holds one of its own is a parent like any other.
    nested = root / BATCHES_FOLDER / BATCHES_FOLDER
    nested.mkdir(parents=True)
    assert data_root(root / BATCHES_FOLDER) == root / BATCHES_FOLDER


def test_a_run_pointed_at_the_batches_folder_trains_on_it_as_on_its_parent(tmp_path: Path) -> None:
    root = write_data(tmp_path / "data")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    summaries = []
    for name, data_dir in (("folder", root / BATCHES_FOLDER), ("parent", root)):
        results = tmp_path / f"{name}.json"
        argv = tiny_args(data_dir, tmp_path / name, "--results", str(results), "--no-download")
        assert run_trainer(argv) == 0
        summaries.append(json.loads(results.read_text()))
    # The same images, so the same run: the same test scores to the last bit.
    folder, parent = summaries
    assert (folder["test_loss"], folder["test_accuracy"]) == (parent["test_loss"], parent["test_accuracy"])
    # Nothing was downloaded, unpacked or written beside the data.
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


@pytest.mark.parametrize("argv", [["--lr", "inf"], ["--seed", str(2**64)], ["--no-verify-checksums", "x"]])
def test_refusals_are_one_line_not_a_traceback(argv: list[str]) -> None:
    done = run_script(*argv)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 2
