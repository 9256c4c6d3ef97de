"""
Checkpoints: written atomically, loaded without running code, and refused with a one-line reason when
they are truncated, foreign, malicious or from another network.
"""

import json
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from synthetic_main import run_trainer, trained_checkpoint

from experiments import checkpoint as ckpt
from experiments import distributed
from experiments.checkpoint import CheckpointError, check_network, find_checkpoint, load_checkpoint
from experiments.errors import UsageError


def minimal_state(value: float = 1.0) -> dict:
    return {
        "format": ckpt.FORMAT,
        "version": ckpt.VERSION,
        "model": {"w": torch.full((3,), value)},
        "config": {},
        "signature": {"model": "m", "num_classes": 10, "shapes": {"w": [3]}},
        "position": {"step": 0, "epoch": 0, "batch": 0},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint from a one-epoch tiny run."""
    return trained_checkpoint(tmp_path_factory.mktemp("trained"))


def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, minimal_state(1.0))

    def disk_full(state: dict, f) -> None:
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        ckpt.save_checkpoint(path, minimal_state(2.0))
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_process_killed_mid_write_leaves_the_previous_checkpoint_for_resume(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    ckpt.save_checkpoint(path, minimal_state(1.0))
    # A child process starts a second write and is killed with SIGKILL half way through it.
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
import torch
from experiments import checkpoint as ckpt
from experiments import cifar10
def dying_save(state, f):
    f.write(b"PK half of a zip")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
ckpt.torch.save = dying_save
ckpt.save_checkpoint(ckpt.Path({str(path)!r}), {{"format": "x"}})
"""
    process = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert process.returncode == -9
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    # The kill came in the middle of the write: its half-written temporary file is still there, next to
    # the intact checkpoint, and is never what --resume picks.
    (leftover,) = [p for p in path.parent.iterdir() if p != path]
    assert leftover.name.startswith(".last.pt.tmp") and leftover.read_bytes() == b"PK half of a zip"
    assert find_checkpoint(str(tmp_path), tmp_path) == path
    assert find_checkpoint(str(path.parent.parent), tmp_path) == path


def test_a_truncated_checkpoint_is_refused(trained: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(truncated)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n"])
def test_a_file_that_is_not_a_checkpoint_is_refused(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "file.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_another_programs_tensor_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint written by"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_carrying_code_is_refused_without_running_it(writer: str, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    state = {**minimal_state(), "model": _Payload(marker)}
    if writer == "torch.save":
        torch.save(state, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(state, f, protocol=2)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_checkpoint_of_another_shape_is_refused_naming_the_tensor() -> None:
    saved = {"model": "custom", "num_classes": 10, "shapes": {"head.weight": [10, 32]}}
    expected = {"model": "custom", "num_classes": 10, "shapes": {"head.weight": [10, 64]}}
    with pytest.raises(CheckpointError, match="head.weight"):
        check_network(Path("x.pt"), {"signature": saved}, expected)


def test_resuming_with_another_preset_is_refused(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    logs = tmp_path / "logs"
    # A typed setting the checkpoint cannot honour: the user's mistake, exit status 2.
    assert run_trainer(["--logs-dir", str(logs), "--resume", str(trained), "--model", "resnet20"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("error: --model resnet20 cannot apply to a resumed run")
    assert "(model=custom)" in err
    assert "Traceback" not in err
    # Refused before a run folder was made.
    assert not (logs / "cifar10").exists()


def test_evaluating_with_another_number_of_classes_is_refused(
    trained: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run_trainer(["--eval", str(trained), "num_classes=12"]) == 1
    assert "number of classes" in capsys.readouterr().err


@pytest.mark.parametrize("make", ["truncated", "text", "evil"])
def test_eval_of_a_bad_file_is_a_one_line_error(
    make: str, trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "bad.pt"
    marker = tmp_path / "code-ran"
    if make == "truncated":
        path.write_bytes(trained.read_bytes()[:1000])
    elif make == "text":
        path.write_text("hello\n")
    else:
        torch.save({**minimal_state(), "model": _Payload(marker)}, path)
    assert run_trainer(["--eval", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0]
    assert not marker.exists()


def test_resume_finds_runs_by_uuid_folder_or_file(trained: Path) -> None:
    run_dir = trained.parent.parent
    logs = run_dir.parent.parent
    assert find_checkpoint(run_dir.name, logs) == trained
    assert find_checkpoint(str(run_dir), logs) == trained
    assert find_checkpoint(str(trained), logs) == trained
    with pytest.raises(UsageError, match="no run"):  # names nothing: a mistyped setting, exit 2
        find_checkpoint("0123abcd", logs)


def test_every_saved_entry_loads_weights_only(trained: Path) -> None:
    state = torch.load(trained, weights_only=True)
    assert {"model", "optimizer", "scheduler", "position", "rng", "config", "signature"} <= state.keys()
    assert state["config"]["model"] == "custom" and state["signature"]["model"] == "custom"
    # What the weights-only load gives is the trained run itself: one epoch of 5 steps, and the very
    # weights the run reported in results.json.
    assert state["position"] == {"step": 5, "epoch": 1, "batch": 0}
    results = json.loads((trained.parent.parent / "results.json").read_text())
    weights = SimpleNamespace(state_dict=lambda: state["model"])
    assert distributed.state_hash(weights) == results["weights_sha256"]


def test_a_version_1_checkpoint_with_pythons_random_state_still_resumes(
    trained: Path, tmp_path: Path
) -> None:
    # Version 1 also saved Python's `random` state, which nothing used; such a file must keep resuming.
    state = load_checkpoint(trained)
    assert state["version"] == ckpt.VERSION == 3 and "python_state" not in state["rng"]
    # Nor did it have a digest (version 3's): it loads unverified.
    del state["digest"]
    state["version"] = 1
    state["rng"].update({"python_version": 3, "python_state": torch.zeros(625, dtype=torch.int64)})
    old = tmp_path / "v1.pt"
    torch.save(state, old)
    assert load_checkpoint(old)["version"] == 1
    logs = tmp_path / "logs"
    assert run_trainer(["--logs-dir", str(logs), "--resume", str(old), "--epochs", "2"]) == 0
    state["version"] = 4
    torch.save(state, old)
    with pytest.raises(CheckpointError, match="version 4; this trainer reads versions 1, 2, 3"):
        load_checkpoint(old)


def test_a_checkpoint_from_later_in_an_epoch_than_this_data_has_is_refused() -> None:
    # Stopped at batch 5; resumed with data (or a batch size) that makes epochs of 3 batches.
    state = minimal_state()
    state.update(
        position={"step": 5, "epoch": 0, "batch": 5},
        optimizer={},
        scheduler={},
        rng={"torch": torch.get_rng_state()},
    )
    loaded: list[str] = []

    class Part:
        def __init__(self, name: str) -> None:
            self.name = name

        def state_dict(self) -> dict:
            return {}

        def load_state_dict(self, state: dict) -> None:
            loaded.append(self.name)

    parts = {name: Part(name) for name in ckpt.PARTS} | {"scaler": None, "ema": None, "lookahead": None}
    signature = state["signature"]
    ckpt.restore_checkpoint(Path("last.pt"), state, parts, signature, batches_per_epoch=5)
    with pytest.raises(CheckpointError, match=r"last.pt stopped at batch 5 of an epoch that now has 3 "):
        ckpt.restore_checkpoint(Path("last.pt"), state, parts, signature, batches_per_epoch=3)
    # The first call loaded every part; the refused one loaded nothing.
    assert loaded == ["model", "optimizer", "scheduler", "progress"]
