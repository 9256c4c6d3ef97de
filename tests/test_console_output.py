"""
What the trainer prints. Redirected to a file or a pipe (a cluster job, `nohup`, CI) a run writes whole
plain lines: no carriage returns, no colour codes, one line when it starts, one per epoch with that
epoch's numbers, and one at the end. On a terminal labml's live console stays as it was.
"""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from labml import logger
from labml.internal.logger import logger_singleton
from labml.internal.logger.destinations.console import ConsoleDestination
from labml.internal.monitor import monitor_singleton
from labml.logger import Text
from synthetic_main import SCRIPT, tiny_args, write_data

from experiments import console, runner

EPOCHS = 2


@pytest.fixture(scope="module")
def redirected_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """A two-epoch run of the script with stdout and stderr captured, as a batch job would have them."""
    root = tmp_path_factory.mktemp("console")
    data_dir = write_data(root / "data")
    process = subprocess.run(
        [sys.executable, str(SCRIPT), *tiny_args(data_dir, root / "logs", epochs=EPOCHS), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-2000:]
    (run_dir,) = (root / "logs" / "cifar10").iterdir()
    return process, run_dir


def test_redirected_output_has_no_carriage_returns_or_colour_codes(
    redirected_run: tuple[subprocess.CompletedProcess, Path],
) -> None:
    process, _ = redirected_run
    for name, text in (("stdout", process.stdout), ("stderr", process.stderr)):
        assert "\r" not in text, name
        assert "\x1b[" not in text, name


def test_redirected_output_has_one_line_per_epoch_with_the_numbers_of_metrics_jsonl(
    redirected_run: tuple[subprocess.CompletedProcess, Path],
) -> None:
    process, run_dir = redirected_run
    epoch_lines = [line for line in process.stdout.splitlines() if line.startswith("epoch ")]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epoch_lines == [console.epoch_line(record, EPOCHS) for record in records]
    for number, (line, record) in enumerate(zip(epoch_lines, records, strict=True), start=1):
        assert line.startswith(f"epoch {number}/{EPOCHS}: step {record['step']}, ")
        assert f"train loss {record['train_loss']:.4f} accuracy {record['train_accuracy']:.4f}" in line
        assert f"test loss {record['test_loss']:.4f} accuracy {record['test_accuracy']:.4f}" in line


def test_redirected_output_says_what_starts_where_and_how_it_ended(
    redirected_run: tuple[subprocess.CompletedProcess, Path],
) -> None:
    process, run_dir = redirected_run
    lines = process.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Training "))
    assert re.fullmatch(
        rf"Training custom \(\w+ recipe\) for {EPOCHS} epochs of batch 64 on cpu "
        rf"\(1 threads\); run folder {re.escape(str(run_dir))}",
        lines[start],
    )
    results = json.loads((run_dir / "results.json").read_text())
    epochs = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    # The start line first, the epochs in order, then the end line and the two lines that name the results.
    assert start < epochs[0] and epochs[-1] + 1 == len(lines) - 3
    assert lines[-3:] == [
        console.end_line(results),
        f"results: {run_dir / 'results.json'}",
        f"test accuracy: {results['test_accuracy']:.4f} (single view)",
    ]
    assert lines[-3].startswith(f"Finished {EPOCHS} epochs (10 steps) in ")


class _Terminal:
    """Standard output as a terminal shows it to a program: only `isatty` matters here."""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def test_a_terminal_keeps_labml_live_console_and_a_pipe_gets_plain_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", _Terminal())
        assert "screen" in runner.configure_labml(tmp_path, None)
        destinations = logger_singleton()._Logger__destinations
        assert [type(d) for d in destinations] == [ConsoleDestination]
        assert not monitor_singleton()._Monitor__is_silent
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert "screen" not in runner.configure_labml(tmp_path, None)
    assert [type(d) for d in logger_singleton()._Logger__destinations] == [console.PlainDestination]
    assert monitor_singleton()._Monitor__is_silent


def test_labml_messages_reach_a_pipe_as_whole_lines_without_colour(capsys: pytest.CaptureFixture) -> None:
    assert not console.use_live_console()
    logger.log([("cifar10", Text.title), ": ", ("0123abcd", Text.meta)])
    # A refresh of the status line and a spacing blank line mean nothing in a file.
    logger.log([("Train", Text.key), " 40%"], is_new_line=False)
    logger.log()
    assert capsys.readouterr().out == "cifar10: 0123abcd\n"


def test_an_epoch_without_evaluation_shows_only_its_training_numbers() -> None:
    record = {
        "epoch": 3,
        "step": 1173,
        "lr": 0.1,
        "train_loss": 0.51234,
        "train_accuracy": 0.8213,
        "epoch_train_time_s": 12.34,
        "train_time_s": 37.0,
        "train_images_per_s": 4051.7,
    }
    assert console.epoch_line(record, 182) == (
        "epoch 3/182: step 1173, lr 0.1, train loss 0.5123 accuracy 0.8213, 12.3 s, 4052 images/s"
    )
    with_valid = {**record, "valid_loss": 0.6, "valid_accuracy": 0.79}
    assert ", valid loss 0.6000 accuracy 0.7900, " in console.epoch_line(with_valid, 182)
