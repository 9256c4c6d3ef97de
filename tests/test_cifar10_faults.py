"""
Faults injected into training runs: signals during training, evaluation and checkpoint writes, and a
second Ctrl+C; a full disk before and during a run (a real, tiny tmpfs where the machine lets the tests
mount one, and a simulated ENOSPC everywhere); missing data offline; an unwritable or read-only logs
folder; an unreachable labml server; two runs at once. Each must end cleanly, keep the last good
checkpoint, and resume to the same result.
"""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from synthetic_main import SCRIPT, only_run, run_trainer, tiny_args, write_data
from torch.optim.optimizer import register_optimizer_step_post_hook

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
        assert (
            run_trainer(
                tiny_args(data_dir, root / "logs", "--results", str(root / "r.json"), *extra, epochs=epochs)
            )
            == 0
        )
        _references[epochs, extra] = json.loads((root / "r.json").read_text())
    return _references[epochs, extra]


NO_DROPS = ("lr_decay=1.0",)


def comparable(results: dict) -> dict:
    return {k: v for k, v in results.items() if k not in TIMING_KEYS}


def resume(run_dir: Path, tmp_path: Path, *extra: str) -> dict:
    results = tmp_path / f"resumed-{run_dir.name}.json"
    status = run_trainer(
        [
            "--logs-dir",
            str(run_dir.parent.parent),
            "--resume",
            str(run_dir),
            "--results",
            str(results),
            *extra,
        ]
    )
    assert status == 0
    return json.loads(results.read_text())


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
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )


# SIGHUP is what a closed SSH session or terminal sends: it must save as SIGTERM does.
STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=[s.name for s in STOP_SIGNALS])
def test_a_signal_during_training_saves_exits_and_resumes_to_the_same_result(
    signum: int, data_dir: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    logs = tmp_path / "logs"
    # Far more epochs than the signal will let it run. The drops are fractions of the run's length, which
    # the resume below shortens: the steps trained before the stop had the 100-epoch run's rates, so it
    # and a short uninterrupted run share a rate only without drops; `lr_decay=1` removes them from both.
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


# With 1 epoch the interrupted evaluation is the run's last: the resumed run must still record that epoch.
@pytest.mark.parametrize("epochs", [2, 1])
def test_a_signal_during_evaluation_saves_the_finished_epoch_and_resumes_exactly(
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
    epochs: int,
) -> None:
    evaluate = cifar10.evaluate
    calls = []

    def interrupted_evaluate(model, loader, **options) -> dict[str, float]:
        calls.append(loader)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(model, loader, **options)

    monkeypatch.setattr(cifar10, "evaluate", interrupted_evaluate)
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs, epochs=epochs)) == 128 + signal.SIGINT
    run_dir = only_run(logs)
    # Training of epoch 1 is complete; its evaluation is what remains.
    position = load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]
    assert position == {"step": 5, "epoch": 0, "batch": 5}
    monkeypatch.setattr(cifar10, "evaluate", evaluate)
    resumed = resume(run_dir, tmp_path)
    assert comparable(resumed) == comparable(reference(data_dir, tmp_path_factory, epochs))
    records = (Path(resumed["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in records] == list(range(1, epochs + 1))


class SignalsPartWayThrough:
    """A file whose writer receives SIGINT once the first `after` bytes of a checkpoint are written."""

    def __init__(self, file, after: int) -> None:
        self.file, self.after, self.written, self.written_at_signal = file, after, 0, None

    def write(self, data) -> int:
        count = self.file.write(data)
        self.written += count
        if self.written_at_signal is None and self.written >= self.after:
            self.written_at_signal = self.written
            os.kill(os.getpid(), signal.SIGINT)
        return count

    def flush(self) -> None:
        self.file.flush()


def test_a_signal_during_a_checkpoint_write_lets_the_write_finish(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    save = ckpt.torch.save
    writes: list[SignalsPartWayThrough] = []

    def save_interrupted_half_way(state: dict, f) -> None:
        if writes:
            return save(state, f)
        # Only the first write is interrupted: a second Ctrl+C means "quit without saving".
        writes.append(SignalsPartWayThrough(f, after=4096))
        save(state, writes[0])

    monkeypatch.setattr(ckpt.torch, "save", save_interrupted_half_way)
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs, epochs=2)) == 128 + signal.SIGINT
    monkeypatch.setattr(ckpt.torch, "save", save)
    # The signal came with bytes of the checkpoint already written and more still to write.
    assert 0 < writes[0].written_at_signal < writes[0].written
    run_dir = only_run(logs)
    position = load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]
    # The epoch-end write completed; the run stopped right after the next step.
    assert position == {"step": 6, "epoch": 1, "batch": 1}
    assert comparable(resume(run_dir, tmp_path)) == comparable(reference(data_dir, tmp_path_factory, 2))


def test_a_second_ctrl_c_quits_at_once_and_leaves_the_last_complete_checkpoint(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    save = ckpt.torch.save
    attempts: list[dict] = []
    completed: list[bytes] = []

    def save_and_interrupt(state: dict, f) -> None:
        attempts.append(state["position"])
        if len(attempts) == 1:
            # First Ctrl+C during the epoch-end write: the write finishes, the run stops after a step.
            os.kill(os.getpid(), signal.SIGINT)
            save(state, f)
            return
        # While the stop checkpoint is being written, the user presses Ctrl+C again.
        completed.append((run_dir() / "checkpoints" / "last.pt").read_bytes())
        os.kill(os.getpid(), signal.SIGINT)
        save(state, f)
        completed.append(b"the write went on after the second Ctrl+C")

    def run_dir() -> Path:
        return only_run(tmp_path / "logs")

    monkeypatch.setattr(ckpt.torch, "save", save_and_interrupt)
    assert run_trainer(tiny_args(data_dir, tmp_path / "logs", epochs=3)) == 128 + signal.SIGINT
    monkeypatch.setattr(ckpt.torch, "save", save)
    err = capsys.readouterr().err
    assert "press Ctrl+C again to quit without saving" in err
    assert err.strip().splitlines()[-1] == "interrupted; the last complete checkpoint is unchanged"
    # The stop checkpoint (after step 6) was started and abandoned at once, not finished.
    assert attempts == [{"step": 5, "epoch": 1, "batch": 0}, {"step": 6, "epoch": 1, "batch": 1}]
    assert len(completed) == 1
    # The epoch-end checkpoint is there byte for byte, and nothing half-written beside it.
    checkpoints = run_dir() / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["last.pt"]
    assert (checkpoints / "last.pt").read_bytes() == completed[0]
    assert load_checkpoint(checkpoints / "last.pt")["position"] == attempts[0]


def test_a_signal_lets_the_step_in_flight_finish_and_starts_no_other(data_dir: Path, tmp_path: Path) -> None:
    steps = []

    def after_each_optimizer_step(optimizer, args, kwargs) -> None:
        steps.append(1)
        if len(steps) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    handle = register_optimizer_step_post_hook(after_each_optimizer_step)
    try:
        status = run_trainer(tiny_args(data_dir, tmp_path / "logs", epochs=4))
    finally:
        handle.remove()
    assert status == 128 + signal.SIGINT
    assert len(steps) == 3, "no step may start after the signal"
    position = load_checkpoint(only_run(tmp_path / "logs") / "checkpoints" / "last.pt")["position"]
    assert position == {"step": 3, "epoch": 0, "batch": 3}


def test_a_write_failure_mid_run_stops_cleanly_and_keeps_the_last_good_checkpoint(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Simulated: torch.save raises ENOSPC part way through the second write, on any machine. The real
    # full disk is test_a_disk_that_fills_up_mid_run_..., where mounting a tmpfs is allowed.
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


# ### A full disk and a read-only folder, for real
#
# The tests run as root, which ignores file modes, and no ordinary folder is ever full. So these start the
# trainer in a child process: for a read-only folder without the two capabilities that let root write
# anywhere (as tests/test_data.py does for unreadable data), for a full disk inside a private mount
# namespace holding a tmpfs of a few hundred KiB. Where the machine allows neither, they skip; the
# simulated ENOSPC above runs everywhere.

WITHOUT_ROOT_FILE_ACCESS = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
ON_A_TINY_DISK = [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "--",
    "sh",
    "-c",
    'mount -t tmpfs -o "size=$1" tmpfs "$2" && shift 2 && exec "$@"',
    "sh",
]

# Runs inside the child: the trainer in-process (optionally filling the disk once the first checkpoint
# is written), then a report of what the logs folder holds, as the last line of output.
DISK_DRIVER = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from synthetic_main import run_trainer, tiny_args
from experiments import checkpoint
from experiments.checkpoint import load_checkpoint
data_dir, logs, fill = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "fill"
save = checkpoint.save_checkpoint

def save_then_fill_the_disk(path, state):
    save(path, state)
    if fill and not (logs / "filler").exists():
        # Every free byte taken: the next write gets ENOSPC from the kernel, not from a mock.
        with open(logs / "filler", "wb", buffering=0) as filler:
            try:
                while filler.write(bytes(1 << 16)):
                    pass
            except OSError as error:
                assert error.errno == 28, error

checkpoint.save_checkpoint = save_then_fill_the_disk
status = run_trainer(tiny_args(data_dir, logs, epochs=int(sys.argv[5])))
runs = sorted((logs / "cifar10").glob("*")) if (logs / "cifar10").is_dir() else []
checkpoints = runs[0] / "checkpoints" if runs else None
report = {"status": status, "runs": len(runs),
          "checkpoint_files": sorted(p.name for p in checkpoints.iterdir()) if checkpoints else [],
          "position": (load_checkpoint(checkpoints / "last.pt")["position"]
                       if checkpoints and (checkpoints / "last.pt").exists() else None)}
print(json.dumps(report))
"""


def can_run(prefix: list[str], probe: list[str]) -> str:
    """'' when `prefix` works on this machine, else the reason it does not."""
    if os.geteuid() != 0:
        return ""
    if shutil.which(prefix[0]) is None:
        return f"{prefix[0]} is not installed"
    result = subprocess.run([*prefix, *probe], capture_output=True, text=True, timeout=60)
    return "" if result.returncode == 0 else f"{prefix[0]} failed here: {result.stderr.strip()[:200]}"


def on_a_tiny_disk(
    size: str, logs: Path, data_dir: Path, *, fill: bool, epochs: int
) -> tuple[dict, list[str]]:
    """Run the driver with `logs` on a fresh tmpfs of `size`; its report and the lines it printed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    logs.mkdir()
    reason = can_run(ON_A_TINY_DISK, ["64k", str(logs), "true"])
    if reason:
        pytest.skip(reason)
    result = subprocess.run(
        [
            *ON_A_TINY_DISK,
            size,
            str(logs),
            sys.executable,
            "-c",
            DISK_DRIVER,
            str(Path(SCRIPT).parent),
            str(data_dir),
            str(logs),
            "fill" if fill else "no",
            str(epochs),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-3000:]
    return json.loads(lines[-1]), result.stderr.strip().splitlines()


def test_too_little_free_space_is_reported_before_training(data_dir: Path, tmp_path: Path) -> None:
    # 256 KiB free: less than the tiny model's checkpoints need with the trainer's margin.
    report, err = on_a_tiny_disk("256k", tmp_path / "logs", data_dir, fill=False, epochs=1)
    assert report == {"status": 1, "runs": 0, "checkpoint_files": [], "position": None}
    assert len(err) == 1 and err[0].startswith("error: only ") and "MiB free under" in err[0]
    assert str(tmp_path / "logs") in err[0] and "--logs-dir" in err[0]


def test_a_disk_that_fills_up_mid_run_stops_cleanly_and_keeps_the_last_good_checkpoint(
    data_dir: Path, tmp_path: Path
) -> None:
    report, err = on_a_tiny_disk("8m", tmp_path / "logs", data_dir, fill=True, epochs=3)
    assert report == {
        "status": 1,
        "runs": 1,
        "checkpoint_files": ["last.pt"],
        "position": {"step": 5, "epoch": 1, "batch": 0},
    }
    assert err[-1].startswith("error: could not write ") and "No space left on device" in err[-1]
    assert "--resume" in err[-1] and "Traceback" not in "\n".join(err)


def test_a_read_only_logs_folder_is_reported_before_training(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "notes.txt").write_text("keep me")
    logs.chmod(0o555)
    try:
        if os.geteuid() == 0:
            reason = can_run(WITHOUT_ROOT_FILE_ACCESS, ["true"])
            if reason:
                pytest.skip(f"running as root, which ignores file modes, and {reason}")
        prefix = WITHOUT_ROOT_FILE_ACCESS if os.geteuid() == 0 else []
        result = subprocess.run(
            [*prefix, sys.executable, str(SCRIPT), *tiny_args(data_dir, logs)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        logs.chmod(0o755)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert len(err) == 1 and err[0].startswith("error: cannot write run logs under ") and str(logs) in err[0]
    assert "not a writable folder" in err[0] and "--logs-dir" in err[0]
    assert [p.name for p in logs.iterdir()] == ["notes.txt"]


def test_missing_data_offline_fails_fast_naming_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Port 9 refuses connections: as offline as a machine gets, without depending on the network.
    monkeypatch.setattr(cifar_data, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    data_dir, logs = tmp_path / "nothing-here", tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(data_dir) in err[0]
    assert "cifar-10-python.tar.gz" in err[0]
    assert not data_dir.exists() and not (logs / "cifar10").exists()


def test_an_unwritable_logs_folder_is_reported_before_training(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert run_trainer(tiny_args(data_dir, blocker / "logs")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker) in err[0] and "--logs-dir" in err[0]


def test_an_unreachable_labml_server_does_not_keep_the_process_alive(data_dir: Path, tmp_path: Path) -> None:
    process = start_script(
        [*tiny_args(data_dir, tmp_path / "logs"), "--labml-url", "http://127.0.0.1:9/api/v1/track?"]
    )
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


class TwoSignalsPartWayThrough(SignalsPartWayThrough):
    """A checkpoint writer that receives SIGINT after `after` bytes, and again at its next write."""

    def __init__(self, file, after: int) -> None:
        super().__init__(file, after)
        self.written_at_second: int | None = None

    def write(self, data) -> int:
        signalled = self.written_at_signal is not None
        count = super().write(data)
        if signalled and self.written_at_second is None:
            self.written_at_second = self.written
            os.kill(os.getpid(), signal.SIGINT)
        return count


def test_two_ctrl_c_during_one_checkpoint_write_quit_in_one_line_and_keep_the_last_checkpoint(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Both signals land inside torch.save's writer, one write call apart (a user's double Ctrl+C a few
    # ms apart): the second used to surface as torch's "RuntimeError ... unexpected pos" traceback.
    save = ckpt.torch.save
    saves: list[TwoSignalsPartWayThrough | None] = []
    first: list[bytes] = []

    def second_save_interrupted_twice(state: dict, f) -> None:
        if saves:
            first.append((only_run(tmp_path / "logs") / "checkpoints" / "last.pt").read_bytes())
            saves.append(TwoSignalsPartWayThrough(f, after=4096))
            return save(state, saves[-1])
        saves.append(None)
        return save(state, f)

    monkeypatch.setattr(ckpt.torch, "save", second_save_interrupted_twice)
    assert run_trainer(tiny_args(data_dir, tmp_path / "logs", epochs=3)) == 128 + signal.SIGINT
    monkeypatch.setattr(ckpt.torch, "save", save)
    interrupted = saves[1]
    assert interrupted is not None and interrupted.written_at_second is not None
    assert interrupted.written_at_signal < interrupted.written_at_second
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeError" not in err and "unexpected pos" not in err
    assert err.strip().splitlines()[-1] == "interrupted; the last complete checkpoint is unchanged"
    # The epoch-1 checkpoint is there byte for byte, and no half-written file beside it.
    checkpoints = only_run(tmp_path / "logs") / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["last.pt"]
    assert (checkpoints / "last.pt").read_bytes() == first[0]
    assert load_checkpoint(checkpoints / "last.pt")["position"] == {"step": 5, "epoch": 1, "batch": 0}


# The same double Ctrl+C in a process of its own, as a user's terminal delivers it: the exit status and
# everything printed are the script's, with no test framework in between.
DOUBLE_CTRL_C_DRIVER = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from synthetic_main import OWN_DATA, tiny_args
from experiments import checkpoint, cifar10
save, saves = checkpoint.torch.save, []

class Writer:
    def __init__(self, file):
        self.file, self.written, self.signals = file, 0, 0
    def write(self, data):
        count = self.file.write(data)
        self.written += count
        if self.signals == 1 or (self.signals == 0 and self.written >= 4096):
            self.signals += 1
            os.kill(os.getpid(), signal.SIGINT)
        return count
    def flush(self):
        self.file.flush()

def second_save_interrupted_twice(state, f):
    saves.append(state["position"])
    return save(state, Writer(f) if len(saves) == 2 else f)

checkpoint.torch.save = second_save_interrupted_twice
sys.exit(cifar10.main([*OWN_DATA, *tiny_args(Path(sys.argv[2]), Path(sys.argv[3]), epochs=3)]))
"""


def test_two_ctrl_c_during_a_checkpoint_write_in_a_separate_process(data_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    result = subprocess.run(
        [sys.executable, "-c", DOUBLE_CTRL_C_DRIVER, str(Path(SCRIPT).parent), str(data_dir), str(logs)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 128 + signal.SIGINT, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "unexpected pos" not in result.stderr
    err = result.stderr.strip().splitlines()
    assert err[-1] == "interrupted; the last complete checkpoint is unchanged"
    assert [line for line in err if line] == [
        "SIGINT received: saving a checkpoint after this step (press Ctrl+C again to quit without saving)",
        "interrupted; the last complete checkpoint is unchanged",
    ]
    checkpoints = only_run(logs) / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["last.pt"]
    assert load_checkpoint(checkpoints / "last.pt")["position"] == {"step": 5, "epoch": 1, "batch": 0}


# ### Runs started together on an archive-only data folder
#
# Each run unpacks into a staging folder of its own, and the first to rename it into place wins. The
# others must use the winner's folder. The two moments a winner can get in first (while a loser unpacks,
# and between its check and its rename) are forced here by doing the winner's whole load at that moment.


ARCHIVE_AND_FOLDER = [cifar_data.ARCHIVE_NAME, cifar_data.BATCHES_FOLDER]


def archive_only(root: Path) -> Path:
    from cifar_synthetic import write_synthetic_cifar10_archive

    write_synthetic_cifar10_archive(root, n_per_train_batch=4, n_test=6)
    return root


@pytest.mark.parametrize("moment", ["while unpacking", "before the rename"])
def test_a_run_that_loses_the_unpacking_race_uses_the_winners_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    root = archive_only(tmp_path / "data")
    winner: list[cifar_data.CifarArrays] = []
    started: list[bool] = []

    def another_run_finishes_first() -> None:
        if not started:
            started.append(True)
            winner.append(cifar_data.load_cifar10(root, download=False, verify_checksums=False))

    if moment == "while unpacking":
        extract = cifar_data.tarfile.TarFile.extractall

        def extract_then_lose(self, *args, **kwargs):
            extract(self, *args, **kwargs)
            another_run_finishes_first()

        monkeypatch.setattr(cifar_data.tarfile.TarFile, "extractall", extract_then_lose)
    else:
        rename = cifar_data.os.rename

        def lose_then_rename(source, target):
            # The loser has seen no folder yet; the winner renames its own in before the loser does.
            if Path(target) == root / cifar_data.BATCHES_FOLDER:
                another_run_finishes_first()
            return rename(source, target)

        monkeypatch.setattr(cifar_data.os, "rename", lose_then_rename)
    arrays = cifar_data.load_cifar10(root, download=False, verify_checksums=False)
    monkeypatch.undo()
    assert winner and torch.equal(arrays.train_images, winner[0].train_images)
    assert torch.equal(arrays.test_labels, winner[0].test_labels)
    # One folder, the archive, and no staging folder left behind.
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [cifar_data.ARCHIVE_NAME, cifar_data.BATCHES_FOLDER]
    )


LOAD_TOGETHER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from experiments import data
start = float(sys.argv[3])
while time.time() < start:
    pass
arrays = data.load_cifar10(Path(sys.argv[2]), download=False, verify_checksums=False)
print(tuple(arrays.train_images.shape))
"""


def test_three_runs_started_together_on_an_archive_only_folder_all_load(tmp_path: Path) -> None:
    root = archive_only(tmp_path / "data")
    start = time.time() + 3  # all three spin until the same moment, past their imports
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", LOAD_TOGETHER, str(Path(SCRIPT).parent.parent), str(root), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err[-2000:] for _, err in outcomes]
    assert [out.strip() for out, _ in outcomes] == ["(20, 3, 32, 32)"] * 3
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [cifar_data.ARCHIVE_NAME, cifar_data.BATCHES_FOLDER]
    )


# ### Output paths that cannot be written, found before training


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_an_unwritable_results_path_is_reported_before_training(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "a-folder").mkdir()
    results = tmp_path / "a-folder" if where == "a folder" else tmp_path / "a-file" / "results.json"
    logs = tmp_path / "logs"
    assert run_trainer(tiny_args(data_dir, logs, "--results", str(results))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and f"--results {results}" in err[0]
    assert not (logs / "cifar10").exists(), "nothing may train"
    assert (tmp_path / "a-file").read_text() == "not a folder" and not any((tmp_path / "a-folder").iterdir())


def test_atomic_write_reports_the_write_error_not_its_clean_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from resnet.files import atomic_write

    def clean_up_fails(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    def disk_full(f) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "unlink", clean_up_fails)
    with pytest.raises(OSError) as caught:
        atomic_write(tmp_path / "results.json", disk_full)
    assert caught.value.errno == errno.ENOSPC and caught.value.__context__ is None


# Runs inside a private mount namespace where `ro` is a read-only bind mount: atomic_write's own error,
# then the trainer with --results there (logs elsewhere), and what the logs folder holds afterwards.
READ_ONLY_DRIVER = r"""
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from synthetic_main import run_trainer, tiny_args
from experiments.files import write_json
data_dir, ro, logs = Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
try:
    write_json(ro / "direct.json", {})
    error = None
except OSError as e:
    error = {"errno": e.errno, "chained": e.__context__ is not None}
status = run_trainer(tiny_args(data_dir, logs, "--results", str(ro / "results.json")))
print(json.dumps({"write_json": error, "status": status, "runs": (logs / "cifar10").is_dir()}))
"""
READ_ONLY_MOUNT = [
    "unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
    'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"', "sh",
]  # fmt: skip


def test_a_results_path_on_a_read_only_file_system_is_reported_before_training(
    data_dir: Path, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    ro = tmp_path / "ro"
    ro.mkdir()
    reason = can_run(READ_ONLY_MOUNT, [str(ro), "true"])
    if reason:
        pytest.skip(reason)
    args = [str(Path(SCRIPT).parent), str(data_dir), str(ro), str(tmp_path / "logs")]
    result = subprocess.run(
        [*READ_ONLY_MOUNT, str(ro), sys.executable, "-c", READ_ONLY_DRIVER, *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-3000:]
    import errno

    # The error reported is the write's own, not the clean-up's second EROFS raised while handling it.
    assert json.loads(lines[-1]) == {
        "write_json": {"errno": errno.EROFS, "chained": False},
        "status": 1,
        "runs": False,
    }
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and f"cannot write --results {ro / 'results.json'}" in err[0]


# ### A batch too large for the machine
#
# A real allocation failure, not a mock: the child caps its own address space a little above what it
# uses once torch is loaded, so the first forward pass over a 10,000-image batch cannot get its memory.
OUT_OF_MEMORY_DRIVER = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from synthetic_main import run_trainer, tiny_args
from experiments.synthetic import write_synthetic_cifar10
data, logs = Path(sys.argv[2]), Path(sys.argv[3])
write_synthetic_cifar10(data, n_per_train_batch=2000, n_test=20)
size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
status = run_trainer(tiny_args(data, logs, "--batch-size", "10000000", "--threads", "1"))
print(json.dumps({"status": status, "runs": sorted(p.name for p in (logs / "cifar10").iterdir())}))
"""


def test_a_batch_too_large_for_memory_is_one_line_and_leaves_no_empty_run_folder(tmp_path: Path) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("reads its own address-space size from /proc")
    result = subprocess.run(
        [sys.executable, "-c", OUT_OF_MEMORY_DRIVER, str(Path(SCRIPT).parent), str(tmp_path / "data"),
         str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-3000:]
    assert json.loads(lines[-1]) == {"status": 2, "runs": []}
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: out of memory with --batch-size 10000000 (")
    assert "MiB more" in err[0] and "give a smaller --batch-size" in err[0]


OUT_OF_MEMORY_IN_RUN_DIR = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from synthetic_main import run_trainer, tiny_args
from experiments.synthetic import write_synthetic_cifar10
data, logs, run_dir = Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
write_synthetic_cifar10(data, n_per_train_batch=2000, n_test=20)
size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), size + (1 << 30)))
args = [a for a in tiny_args(data, logs, "--batch-size", "10000000", "--threads", "1") if a != "--logs-dir"]
args.remove(str(logs))
status = run_trainer([*args, "--run-dir", str(run_dir)])
print(json.dumps({"status": status, "kept": run_dir.exists()}))
"""


@pytest.mark.parametrize("before", ["new", "an earlier attempt's"])
def test_out_of_memory_in_a_run_dir_removes_it_only_if_this_command_made_it(
    tmp_path: Path, before: str
) -> None:
    if not Path("/proc/self/status").exists():
        pytest.skip("reads its own address-space size from /proc")
    run_dir = tmp_path / "run"
    if before != "new":  # what a command killed before labml started leaves: the next one goes on there
        (run_dir / "pids").mkdir(parents=True)
        (run_dir / "run.lock").write_text("pid 1 on node7")
    result = subprocess.run(
        [sys.executable, "-c", OUT_OF_MEMORY_IN_RUN_DIR, str(Path(SCRIPT).parent), str(tmp_path / "data"),
         str(tmp_path / "logs"), str(run_dir)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-3000:]
    assert json.loads(lines[-1]) == {"status": 2, "kept": before != "new"}
    if before != "new":
        assert (run_dir / "pids").is_dir()


def test_the_printed_continue_command_pastes_as_it_is(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Spaces and a quote in the paths: the command must come out quoted for the shell, and carry
    # --logs-dir (else the resumed run would go to ./logs), --device and --data-dir.
    logs, results = tmp_path / "run's logs", tmp_path / "final results.json"
    argv = tiny_args(data_dir, logs, "--stop-after-steps", "3", "--results", str(results), epochs=2)
    assert run_trainer(argv) == 0
    (line,) = (x for x in capsys.readouterr().out.splitlines() if x.startswith("continue with: "))
    command = shlex.split(line.removeprefix("continue with: "))
    assert command[:2] == ["python", os.path.relpath(cifar10.__file__)]
    stopped = only_run(logs)
    # The launcher's verify_checksums=False was typed, and a checkpoint never brings it: said again.
    settings = [word for word in command[2:] if word == "verify_checksums=false"]
    flags = [word for word in command[2:] if word not in settings]
    assert settings == ["verify_checksums=false"]
    options = dict(zip(flags[::2], flags[1::2], strict=True))
    assert options == {
        "--resume": str(stopped), "--logs-dir": str(logs), "--data-dir": str(data_dir), "--device": "cpu",
        "--results": str(results),
    }  # fmt: skip
    # Run as pasted (the test's launcher adds only its verify_checksums=False): it finishes the run.
    assert run_trainer(command[2:]) == 0
    summary = json.loads(results.read_text())
    assert (summary["epochs"], summary["steps"], summary["resumed_from"]) == (
        2, 10, str(stopped / "checkpoints" / "last.pt")
    )  # fmt: skip
    assert Path(summary["run_dir"]).parent == logs / "cifar10"


def test_every_test_the_readme_reliability_section_names_exists() -> None:
    import re

    root = Path(SCRIPT).parent.parent
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Reliability") : readme.index("**Verified only on a GPU.**")]
    named = set(re.findall(r"`(test_\w+)", section))
    defined = {
        name for path in (root / "tests").glob("test_*.py")
        for name in re.findall(r"^def (test_\w+)", path.read_text(), flags=re.MULTILINE)
    }  # fmt: skip
    assert len(named) >= 20 and not named - defined, sorted(named - defined)
    files = set(re.findall(r"`(tests/test_\w+\.py)`", section))
    assert files and all((root / f).exists() for f in files)


def test_a_disk_that_fills_up_inside_torch_save_is_reported_by_its_cause(tmp_path: Path) -> None:
    # Met on a real full disk (2026-12-07): the file's write failed with ENOSPC inside torch.save
    # (`write_record("data.pkl", ...)`), and torch's writer then raised its own RuntimeError while closing
    # the archive, the OSError only in its context. That chain, as torch raised it:
    import errno

    from experiments import trainer

    target = tmp_path / "last.pt"
    with pytest.raises(trainer.RunError, match=r"^could not write .*\(No space left on device\); keep"):
        with trainer._writing(f"could not write checkpoint {target}", "keep the last"):
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")  # noqa: B904
    # Anything else still propagates as itself.
    with pytest.raises(RuntimeError, match="unexpected pos"):
        with trainer._writing(f"could not write checkpoint {target}", "keep the last"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
