"""
`--tensorboard`: labml's TensorBoard writer puts the run's curves in `<run folder>/tensorboard/`, where
`tensorboard --logdir` finds them. Asking for it without the package is a usage error that names the
install command and leaves nothing behind.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from synthetic_main import SCRIPT, run_trainer, tiny_args, write_data

EPOCHS = 2


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve in the event files under `folder`, read back the way TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_files_hold_every_epochs_metrics(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    data_dir = write_data(tmp_path / "data")
    # A separate process, as a user runs it: the event file is complete once the run has ended.
    argv = tiny_args(
        data_dir, tmp_path / "logs", "--tensorboard", "--threads", "1", "log_every=1", epochs=EPOCHS
    )
    process = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=300
    )
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-2000:]
    (run_dir,) = (tmp_path / "logs" / "cifar10").iterdir()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    curves = scalars(run_dir / "tensorboard")

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # labml turns `train.loss` into the TensorBoard tag `train/loss`, so each split gets its own section.
    for split in ("train", "test"):
        for metric in ("loss", "accuracy"):
            expected = [(r["step"], r[f"{split}_{metric}"]) for r in records]
            got = curves[f"{split}/{metric}"]
            assert [step for step, _ in got] == [step for step, _ in expected]
            # Event files store 32-bit floats.
            assert [value for _, value in got] == pytest.approx([value for _, value in expected], rel=1e-6)
    # The running training loss, logged every `log_every` steps, is a curve of its own.
    assert [step for step, _ in curves["loss/train"]] == list(range(1, 5 * EPOCHS + 1))


def test_tensorboard_without_the_package_is_a_usage_error_before_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # A `None` entry in sys.modules is how Python spells "this package cannot be imported".
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(tmp_path / "data", logs, "--tensorboard")) == 2
    assert 'pip install -e ".[tensorboard]"' in capsys.readouterr().err
    assert not logs.exists()


def test_tensorboard_with_eval_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_trainer(["--eval", str(tmp_path / "last.pt"), "--tensorboard"]) == 2
    assert "--eval trains nothing" in capsys.readouterr().err
