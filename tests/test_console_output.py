"""
What the trainer prints. Redirected to a file or a pipe (a cluster job, `nohup`, CI) a run writes whole
plain lines: no carriage returns, no colour codes, one line when it starts, the status line every
`progress_every_s` seconds, one per epoch with that epoch's numbers, and one at the end. On a terminal
the status line is redrawn in place, within 100 columns, each number once. Nothing reads a clock.
"""

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from synthetic_main import SCRIPT, tiny_args, write_data

from experiments import console, trainer
from experiments.precision import AmpChoice

EPOCHS = 2


@pytest.fixture(scope="module")
def redirected_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """A two-epoch run of the script with stdout and stderr captured, as a batch job would have them."""
    root = tmp_path_factory.mktemp("console")
    data_dir = write_data(root / "data")
    # The status line every 2 steps and, piped, every time: 5 steps an epoch give two per epoch.
    args = [
        *tiny_args(data_dir, root / "logs", epochs=EPOCHS),
        "--threads",
        "1",
        "log_every=2",
        "progress_every_s=0",
    ]
    process = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
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


def test_nothing_but_the_start_line_comes_before_the_first_status_line(
    redirected_run: tuple[subprocess.CompletedProcess, Path],
) -> None:
    process, _ = redirected_run
    lines = process.stdout.splitlines()
    # No `Prepare ...` lines, no commit message, no configuration table: one line says what runs.
    assert lines[0].startswith("Training custom ")
    assert lines[1] == console.status_line(2, 10, *_numbers(lines[1]))
    assert not process.stderr.strip()
    status = [line for line in lines if line.startswith("step ")]
    # Steps 2, 4 of the first epoch and 6, 8, 10 of the second: piped, each as a whole line.
    assert [line.split()[1] for line in status] == ["2/10", "4/10", "6/10", "8/10", "10/10"]
    assert all(len(line) <= console.WIDTH for line in status)


def _numbers(line: str) -> tuple[float, float, float, float | None]:
    """The loss, accuracy, images/s and ETA a status line shows (the ETA as whole seconds)."""
    words = line.split()
    eta_words = words[words.index("ETA") + 1 :]
    units = {"h": 3600, "min": 60, "s": 1}
    eta = sum(int(n) * units[u] for n, u in zip(eta_words[::2], eta_words[1::2], strict=True))
    return float(words[3]), float(words[5]), float(words[6]), float(eta)


class _Terminal(io.StringIO):
    """Standard output as a terminal shows it to a program: `isatty` is what matters."""

    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_status_line_redrawn_in_place_within_100_columns() -> None:
    terminal = _Terminal()
    out = console.Console(terminal, every_s=30.0)
    assert out.live
    longest = console.status_line(64000, 64000, 12.345678, 0.99999, 123456.7, 400_000.0)
    assert len(longest) <= 100
    out.status(console.status_line(20, 64000, 2.30251, 0.1015, 341.2, 31_380.0))
    out.status(console.status_line(40, 64000, 2.1, 0.2, 340.0, 7 * 3600 + 5 * 60))
    out.line("epoch 1/164: ...")
    text = terminal.getvalue()
    # Redrawn with a carriage return, never a new line, until a whole line replaces it.
    first, second = text.split("\r")[1:3]
    assert first == "step 20/64000  loss 2.3025  accuracy 0.1015  341 images/s  ETA 8 h 43 min"
    assert second.rstrip() == "step 40/64000  loss 2.1000  accuracy 0.2000  340 images/s  ETA 7 h 5 min"
    assert text.endswith("\repoch 1/164: ...\n") and text.count("\n") == 1
    # Each number once: the loss and the accuracy are not repeated under another name.
    assert first.count("loss") == 1 and first.count("accuracy") == 1 and "train." not in first


def test_a_pipe_gets_the_status_line_whole_every_so_many_seconds() -> None:
    pipe, now = io.StringIO(), [0.0]
    out = console.Console(pipe, every_s=30.0, clock=lambda: now[0])
    assert not out.live
    for second in (0, 10, 29, 30, 45, 61):
        now[0] = second
        out.status(f"status at {second}")
    assert pipe.getvalue() == "status at 0\nstatus at 30\nstatus at 61\n"


def test_the_start_line_of_a_gpu_sized_recipe_on_a_cpu_names_the_cpu_recipe() -> None:
    line = console.start_line(
        Path("logs/cifar10/abc"), model="resnet20", recipe="paper", epochs=164, batch_size=128,
        device="cpu (2 threads)", gpu_sized_on_cpu=True,
    )  # fmt: skip
    assert line.endswith("this recipe is sized for a GPU, --recipe cpu for a CPU")
    estimate = console.estimate_line(8 * 3600 + 43 * 60, 64000, 156.4, cpu_recipe_s=2 * 3600 + 13 * 60)
    assert estimate == (
        "estimated training time: 8 h 43 min for 64000 steps at 156 images/s; "
        "--recipe cpu would take about 2 h 13 min"
    )
    assert console.duration(45.4) == "45 s" and console.duration(725) == "12 min 5 s"


@pytest.mark.parametrize(
    ("requested", "chosen", "units", "caveat"),
    [
        ("none", "none", [], ""),  # without native bf16 the cpu recipe's amp=auto keeps float32 too
        ("auto", "none", ["AMX"], ""),  # this run made the very choice the cpu recipe would make
        ("auto", "bf16", ["AMX"], ""),
        ("none", "none", ["AMX"],
         " in float32, this run's format (its amp=auto times bf16 against float32 on this CPU's AMX)"),
        ("bf16", "bf16", [], " in bf16, this run's format (its amp=auto uses float32 here)"),
    ],
)  # fmt: skip
def test_the_cpu_recipe_estimate_names_the_number_format_where_amp_auto_may_choose_another(
    monkeypatch: pytest.MonkeyPatch, requested: str, chosen: str, units: list[str], caveat: str
) -> None:
    # The estimate is this run's measured speed; the cpu recipe computes in what amp=auto picks.
    monkeypatch.setattr(trainer, "cpu_bf16_units", lambda: units)
    assert trainer.cpu_recipe_caveat(AmpChoice(requested, chosen, "why")) == caveat
    line = console.estimate_line(3600, 100, 50.0, cpu_recipe_s=1800, cpu_caveat=caveat)
    assert line.endswith("; --recipe cpu would take about 30 min 0 s" + caveat)


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


@pytest.mark.parametrize(
    ("device", "recipe", "iterations", "batch_size", "gpu_sized"),
    [
        ("cpu", "paper", 64_000, 128, True),  # the default: 8.2M images, 6.5x the cpu recipe's 1.25M
        ("cpu", "resnet9", 2_352, 512, True),  # 24 epochs of 98 steps: 1.2M images
        ("cpu", "cpu", 9_775, 128, False),  # the CPU's own recipe
        ("cpu", "paper", 391 * 5, 128, False),  # five epochs: short enough for a CPU
        ("cuda", "paper", 64_000, 128, False),
    ],
)
def test_a_gpu_sized_run_is_one_on_a_cpu_with_half_the_cpu_recipes_images_or_more(
    device: str, recipe: str, iterations: int, batch_size: int, gpu_sized: bool
) -> None:
    c = SimpleNamespace(
        device=torch.device(device), recipe=recipe, iterations=iterations, batch_size=batch_size
    )
    assert trainer.gpu_sized_on_cpu(c) is gpu_sized
