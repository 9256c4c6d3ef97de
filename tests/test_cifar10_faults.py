"""
Faults injected for real into training runs: signals during training, evaluation and checkpoint writes;
a disk that fails mid-run; missing data offline; an unwritable logs folder; an unreachable labml server;
two runs at once. Each must end cleanly, keep the last good checkpoint, and resume to the same result.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from synthetic_main import SCRIPT, run_trainer, tiny_args, write_data

from experiments import checkpoint as ckpt
from experiments import cifar10
from experiments import data as cifar_data
from experiments.checkpoint import load_checkpoint

TIMING_KEYS = {"wall_time_s", "train_time_s", "train_images_per_s", "run_dir", "resumed_from"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("cifar"))


_references: dict[tuple[int, tuple[str, ...]], dict] = {}


def reference(data_dir: Path, tmp_path_factory: pytest.TempPathFactory, epochs: int, *extra: str) -> dict:
    """results.json of an uninterrupted run of `epochs` epochs (cached per epoch count and settings)."""
    if (epochs, extra) not in _references:
        root = tmp_path_factory.mktemp(f"reference{epochs}")
        assert run_trainer(tiny_args(data_dir, root / "logs", "--results", str(root / "r.json"), *extra,
                                     epochs=epochs)) == 0
        _references[epochs, extra] = json.loads((root / "r.json").read_text())
    return _references[epochs, extra]


NO_DROPS = ("lr_decay=1.0",)


def comparable(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in TIMING_KEYS}


def resume(run_dir: Path, tmp_path: Path, *extra: str) -> dict:
    results = tmp_path / f"resumed-{run_dir.name}.json"
    status = run_trainer(["--logs-dir", str(run_dir.parent.parent), "--resume", str(run_dir),
                          "--results", str(results), *extra])
    assert status == 0
    return json.loads(results.read_text())


def only_run(logs: Path) -> Path:
    (run_dir,) = (logs / "cifar10").iterdir()
    return run_dir


class Output:
    """Collects a child process's output in the background, so the test can wait for a phrase."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen) -> None:
        for chunk in iter(lambda: process.stdout.read1(4096), b""):
            self.text += chunk.decode(errors="replace")

    def wait_for(self, phrase: str, process: subprocess.Popen, limit_s: float = 120) -> None:
        deadline = time.monotonic() + limit_s
        while phrase not in self.text:
            assert process.poll() is None, f"exited before '{phrase}':\n{self.text[-3000:]}"
            assert time.monotonic() < deadline, f"no '{phrase}' yet:\n{self.text[-3000:]}"
            time.sleep(0.05)


def start_script(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(SCRIPT), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_training_saves_exits_and_resumes_to_the_same_result(
        signum: int, data_dir: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    logs = tmp_path / "logs"
    # Far more epochs than the signal will let it run. The drops are fractions of the run, and a resumed
    # run keeps its saved schedule, so a 100-epoch run cut short and a short uninterrupted one share a
    # rate only without drops; `lr_decay=1` removes them from both.
    process = start_script(tiny_args(data_dir, logs, *NO_DROPS, epochs=100))
    output = Output(process)
    output.wait_for("Train", process)
    process.send_signal(signum)
    # The step in flight finishes, the checkpoint is written, and the process leaves.
    assert process.wait(timeout=60) == 128 + signum
    output._thread.join(timeout=10)
    assert "continue with:" in output.text and "--resume" in output.text

    run_dir = only_run(logs)
    position = load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]
    assert position["step"] >= 1
    # Finish the epoch it stopped in and compare with a run that was never interrupted.
    epochs = position["epoch"] + 1
    results = resume(run_dir, tmp_path, "--epochs", str(epochs))
    assert comparable(results) == comparable(reference(data_dir, tmp_path_factory, epochs, *NO_DROPS))


def test_a_signal_during_evaluation_saves_the_finished_epoch_and_resumes_exactly(
        data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    evaluate = cifar10.Trainer.evaluate
    calls = []

    def interrupted_evaluate(self: cifar10.Trainer, loader, name: str) -> tuple[float, float]:
        calls.append(name)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(self, loader, name)

    monkeypatch.setattr(cifar10.Trainer, "evaluate", interrupted_evaluate)
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs, epochs=2)) == 128 + signal.SIGINT
    run_dir = only_run(logs)
    # Training of epoch 1 is complete; its evaluation is what remains.
    position = load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]
    assert position == {"step": 5, "epoch": 0, "batch": 5}
    monkeypatch.setattr(cifar10.Trainer, "evaluate", evaluate)
    assert comparable(resume(run_dir, tmp_path)) == comparable(reference(data_dir, tmp_path_factory, 2))


def test_a_signal_during_a_checkpoint_write_lets_the_write_finish(
        data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    save = ckpt.torch.save
    writes = []

    def save_interrupted_half_way(state: dict, f) -> None:
        writes.append(1)
        if len(writes) == 1:
            # Only once: a second Ctrl+C means "quit without saving".
            os.kill(os.getpid(), signal.SIGINT)
        save(state, f)

    monkeypatch.setattr(ckpt.torch, "save", save_interrupted_half_way)
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs, epochs=2)) == 128 + signal.SIGINT
    monkeypatch.setattr(ckpt.torch, "save", save)
    run_dir = only_run(logs)
    position = load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]
    # The epoch-end write completed; the run stopped right after the next step.
    assert position == {"step": 6, "epoch": 1, "batch": 1}
    assert comparable(resume(run_dir, tmp_path)) == comparable(reference(data_dir, tmp_path_factory, 2))


def test_a_write_failure_mid_run_stops_cleanly_and_keeps_the_last_good_checkpoint(
        data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    save = ckpt.torch.save
    writes = []

    def fails_the_second_time(state: dict, f) -> None:
        writes.append(1)
        if len(writes) == 2:
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        save(state, f)

    monkeypatch.setattr(ckpt.torch, "save", fails_the_second_time)
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs, epochs=3)) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    run_dir = only_run(logs)
    checkpoint = run_dir / "checkpoints" / "last.pt"
    assert error.startswith("error: could not write checkpoint") and str(checkpoint) in error
    assert "No space left on device" in error and "--resume" in error
    assert load_checkpoint(checkpoint)["position"]["epoch"] == 1
    assert [p.name for p in checkpoint.parent.iterdir()] == ["last.pt"]


def test_missing_data_offline_fails_fast_naming_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture) -> None:
    # Port 9 refuses connections: as offline as a machine gets, without depending on the network.
    monkeypatch.setattr(cifar_data, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    data_dir, logs = tmp_path / "nothing-here", tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(data_dir) in err[0]
    assert "cifar-10-python.tar.gz" in err[0]
    assert not data_dir.exists() and not (logs / "cifar10").exists()


def test_an_unwritable_logs_folder_is_reported_before_training(data_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert run_trainer(tiny_args(data_dir, blocker / "logs")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker) in err[0] and "--logs-dir" in err[0]


def test_an_unreachable_labml_server_does_not_keep_the_process_alive(data_dir: Path, tmp_path: Path) -> None:
    process = start_script([*tiny_args(data_dir, tmp_path / "logs"), "--labml-url",
                            "http://127.0.0.1:9/api/v1/track?"])
    output = Output(process)
    # Without the fix labml's sender thread retries forever and the process never ends.
    assert process.wait(timeout=120) == 0
    output._thread.join(timeout=10)
    assert "test accuracy:" in output.text


def test_two_runs_at_once_get_separate_folders(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    processes = [start_script(tiny_args(data_dir, logs, "--seed", str(seed))) for seed in (1, 2)]
    outputs = [Output(p) for p in processes]
    assert [p.wait(timeout=300) for p in processes] == [0, 0], [o.text[-2000:] for o in outputs]
    run_dirs = sorted((logs / "cifar10").iterdir())
    assert len(run_dirs) == 2
    seeds = sorted(json.loads((d / "results.json").read_text())["seed"] for d in run_dirs)
    assert seeds == [1, 2]
    for run_dir in run_dirs:
        state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        assert state["config"]["seed"] in (1, 2)
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
