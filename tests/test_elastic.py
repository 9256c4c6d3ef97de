"""
Runs that outgrow one machine, and restart: `--run-dir`, the data prepared once per node, the ranks'
agreement on where they start, and two "nodes" under `torchrun --max-restarts` that lose a worker and
still end with the weights of a run that never did.

Everything runs on synthetic data in CPU processes (gloo on 127.0.0.1). Nothing is timed: where a test
needs a worker to be killed mid-run, the worker itself says when it is there (a file it writes), and the
test waits for that file rather than for a number of seconds.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from synthetic_main import SCRIPT, TINY_MODEL, run_trainer, write_data

from experiments import data as cifar_data
from experiments import distributed, run_folder
from experiments.checkpoint import CHECKPOINT_DIR, LAST, load_checkpoint
from experiments.distributed import PreparationFailed, World, agree_on_start, start_of
from experiments.errors import UsageError

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
TESTS = Path(__file__).resolve().parent


def run_dir_args(data_dir: Path, run_dir: Path, *extra: str, epochs: int = 2) -> list[str]:
    """
    A tiny CPU run (5 steps of 64 images an epoch) in the fixed folder `run_dir`. One thread per process
    always: torchrun sets it for several processes on a node and not for one, and a convolution summed
    over another number of threads rounds differently, so equal weights need equal thread counts.
    """
    return [
        "--data-dir", str(data_dir), "--run-dir", str(run_dir), "--device", "cpu", "--epochs", str(epochs),
        "--batch-size", "64", "--threads", "1", *TINY_MODEL, *extra,
    ]  # fmt: skip


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / CHECKPOINT_DIR / LAST)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def losses(run_dir: Path) -> list[tuple[float, ...]]:
    """Each epoch's training and test numbers from `results.json`'s run (timings differ, these may not)."""
    history = load_checkpoint(run_dir / CHECKPOINT_DIR / LAST)["history"]
    keys = ("step", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
    return [tuple(record.get(key) for key in keys) for record in history]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("elastic") / "data")


@pytest.fixture(scope="module")
def uninterrupted(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert run_trainer(run_dir_args(data_dir, run_dir)) == 0
    return run_dir


# ## `--run-dir`: one folder, continued by the same command


def test_a_new_run_dir_holds_the_whole_run(uninterrupted: Path) -> None:
    names = {p.name for p in uninterrupted.iterdir()}
    assert {"run.yaml", "configs.yaml", "metrics.jsonl", "results.json", CHECKPOINT_DIR} <= names
    results = json.loads((uninterrupted / "results.json").read_text())
    assert results["run_dir"] == str(uninterrupted) and results["resumed_from"] is None
    assert (results["epochs"], results["steps"]) == (2, 10)


def test_the_same_command_continues_a_stopped_run_dir_to_the_uninterrupted_weights(
    data_dir: Path, uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    # Stopped in the middle of the first epoch, as a killed worker's run would be after a restart.
    assert run_trainer(run_dir_args(data_dir, run_dir, "--stop-after-steps", "3")) == 0
    out = capsys.readouterr().out
    assert f"--run-dir {run_dir}" in out and "--resume" not in out
    assert not (run_dir / "results.json").exists()
    assert run_trainer(run_dir_args(data_dir, run_dir)) == 0
    assert f"resumed from {run_dir / CHECKPOINT_DIR / LAST} after epoch 0 (step 3)" in capsys.readouterr().out
    assert_same_weights(weights(run_dir), weights(uninterrupted))
    assert losses(run_dir) == losses(uninterrupted)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["run_dir"] == str(run_dir) and (results["epochs"], results["steps"]) == (2, 10)
    # One folder for the whole run: no second run folder anywhere beside it.
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_continuing_needs_only_the_folder_and_refuses_other_settings(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    assert run_trainer(run_dir_args(data_dir, run_dir, "--stop-after-steps", "3")) == 0
    capsys.readouterr()
    checkpoint = run_dir / CHECKPOINT_DIR / LAST
    before = checkpoint.read_bytes()
    # Another length, learning rate or network is another run: refused, the folder left as it was.
    for argv in (
        run_dir_args(data_dir, run_dir, epochs=3),
        run_dir_args(data_dir, run_dir, "--lr", "0.05"),
        run_dir_args(data_dir, run_dir, "--seed", "6"),
    ):
        assert run_trainer(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--run-dir {run_dir} holds a run with" in err[0], err
        assert checkpoint.read_bytes() == before
    # The folder alone (where the data is may be said again) continues with the run's own settings.
    assert run_trainer(["--run-dir", str(run_dir), "--data-dir", str(data_dir), "--device", "cpu"]) == 0
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 10


@pytest.mark.parametrize(
    "case", ["a file", "a folder of other files", "with --resume", "with --logs-dir", "with --eval"]
)
def test_run_dir_refusals_are_one_line_and_touch_nothing(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    target = tmp_path / "target"
    extra: list[str] = []
    if case == "a file":
        target.write_text("mine")
    elif case == "a folder of other files":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    elif case in ("with --resume", "with --eval"):
        extra = [case.split()[1], str(tmp_path / "elsewhere")]
    else:
        extra = ["--logs-dir", str(tmp_path / "logs")]
    listing = sorted(str(p) for p in tmp_path.rglob("*"))
    assert run_trainer(run_dir_args(data_dir, target, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    if extra:
        # Refused with the command line's other mistakes: its line, then where the flags are listed.
        assert len(err) == 2 and f"error: --run-dir and {extra[0]} exclude each other" in err[0], err
    else:
        assert len(err) == 1 and err[0].startswith(f"error: --run-dir {target} "), err
    assert sorted(str(p) for p in tmp_path.rglob("*")) == listing


def test_a_run_dir_in_use_by_a_running_command_is_refused_until_it_ends(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import fcntl

    run_dir = tmp_path / "run"
    assert run_trainer(run_dir_args(data_dir, run_dir, "--stop-after-steps", "3")) == 0
    checkpoint = run_dir / CHECKPOINT_DIR / LAST
    before = checkpoint.read_bytes()
    capsys.readouterr()
    # The same command started again while the first still trains (here: holds the folder's lock).
    with open(run_dir / run_folder.LOCK, "a+") as first:
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        first.truncate(0)
        first.write("pid 12345 on node7")
        first.flush()
        assert run_trainer(run_dir_args(data_dir, run_dir)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--run-dir {run_dir} is in use by pid 12345 on node7" in err[0], err
        assert checkpoint.read_bytes() == before
    # Once it has ended (the kernel lets go of a dead process's lock too), the command continues the run.
    assert run_trainer(run_dir_args(data_dir, run_dir)) == 0
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 10


def test_a_new_run_dir_whose_run_never_started_is_not_left_behind(data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "new" / "run"
    # A setting only the configuration can refuse (after the folder is held): nothing may stay behind.
    assert run_trainer(run_dir_args(data_dir, run_dir, "--data-dir", str(tmp_path / "nowhere"),
                                    "--no-download")) == 1  # fmt: skip
    assert not run_dir.exists()


def test_a_run_dir_whose_run_died_before_its_first_checkpoint_starts_again(
    data_dir: Path, uninterrupted: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.yaml").write_text("name: cifar10\n")
    assert run_trainer(run_dir_args(data_dir, run_dir)) == 0
    assert_same_weights(weights(run_dir), weights(uninterrupted))


def test_the_same_command_on_a_finished_run_dir_trains_nothing(
    data_dir: Path, uninterrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, run_dir)
    before = (run_dir / "results.json").read_bytes(), (run_dir / CHECKPOINT_DIR / LAST).read_bytes()
    assert run_trainer(run_dir_args(data_dir, run_dir)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a finished run (2 epochs, 10 steps): nothing to train" in err[0], err
    assert ((run_dir / "results.json").read_bytes(), (run_dir / CHECKPOINT_DIR / LAST).read_bytes()) == before


# ## Every rank starts from the same place


def gathered_as(monkeypatch: pytest.MonkeyPatch, *others: distributed.Start) -> None:
    """Make `all_gather_object` hand back these ranks' starts (rank 0 first), as a real gather would."""

    def gather(into: list, mine: object) -> None:
        into[:] = list(others)

    monkeypatch.setattr(distributed.dist, "all_gather_object", gather)


def test_ranks_that_find_different_checkpoints_refuse_to_start(
    monkeypatch: pytest.MonkeyPatch, uninterrupted: Path
) -> None:
    path = uninterrupted / CHECKPOINT_DIR / LAST
    found = start_of(path, load_checkpoint(path), {"epochs": 2})
    # Rank 1 is on a node that does not see the folder (no shared storage): it would start afresh.
    gathered_as(monkeypatch, found, start_of(None, None, {"epochs": 2}))
    with pytest.raises(UsageError) as error:
        agree_on_start(found, World(rank=0, size=2))
    message = str(error.value)
    assert (
        "rank 1" in message and "finds no checkpoint" in message and f"continues {path} at step 10" in message
    )
    assert "storage every node sees" in message and "\n" not in message
    # Same checkpoint, other settings: another command was typed on one node.
    gathered_as(monkeypatch, found, start_of(path, load_checkpoint(path), {"epochs": 3}))
    with pytest.raises(UsageError, match="rank 1 .* other settings than rank 0.*same command"):
        agree_on_start(found, World(rank=0, size=2))
    gathered_as(monkeypatch, found, start_of(path, load_checkpoint(path), {"epochs": 2}))
    agree_on_start(found, World(rank=1, size=2))


# ## The data, once per node


def _leader_first_rank(rank: int, store: str, root: str, outcomes: "mp.Queue") -> None:
    """
    One of two ranks on one node, twice: local rank 0 "prepares" `root/prepared` (and the first time
    fails to), the other rank reads it after.
    """
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    world = World(rank=rank, local_rank=rank, size=2)
    prepared = Path(root) / "prepared"
    seen = []
    for leader_fails in (True, False):
        try:
            with distributed.local_leader_first(world, torch.device("cpu")):
                if rank == 0:
                    if leader_fails:
                        raise cifar_data.DataError(Path(root), "is not CIFAR-10", "fix it")
                    prepared.write_text("ready")
                    seen.append("prepared")
                else:
                    # Runs only after the leader's body has finished: the file must be complete.
                    seen.append("read " + prepared.read_text())
        except (cifar_data.DataError, PreparationFailed) as error:
            seen.append(type(error).__name__)
    outcomes.put((rank, seen))
    dist.destroy_process_group()


def test_local_rank_0_prepares_the_data_before_the_others_read_it(tmp_path: Path) -> None:
    context = mp.get_context("spawn")
    outcomes = context.Queue()
    store = tmp_path / "store"
    processes = [
        context.Process(target=_leader_first_rank, args=(rank, str(store), str(tmp_path), outcomes))
        for rank in (0, 1)
    ]
    for process in processes:
        process.start()
    results = dict(outcomes.get(timeout=300) for _ in processes)
    for process in processes:
        process.join(timeout=120)
    # When the leader fails, it reports its own error and the other rank stops at once instead of
    # waiting for it; when it succeeds, the other rank reads what it prepared.
    assert results == {0: ["DataError", "prepared"], 1: ["PreparationFailed", "read ready"]}


def test_runs_downloading_into_one_folder_together_all_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two runs (or the first ranks of two nodes on a shared folder) find no data and both download. The
    # loser's download ends after the winner has put the archive in place and unpacked it; it must use
    # the winner's files, not fail.
    from cifar_synthetic import write_synthetic_cifar10_archive
    from torchvision.datasets import utils

    source = write_synthetic_cifar10_archive(tmp_path / "source", n_per_train_batch=4, n_test=6)
    root = tmp_path / "data"
    winner: list[cifar_data.CifarArrays] = []
    downloads: list[str] = []

    def download(url: str, folder: str, filename: str) -> None:
        downloads.append(folder)
        if len(downloads) == 1:
            # The other run downloads, renames and unpacks while this one is still downloading.
            winner.append(cifar_data.load_cifar10(root, verify_checksums=False))
        (Path(folder) / filename).write_bytes(source.read_bytes())

    monkeypatch.setattr(utils, "download_url", download)
    arrays = cifar_data.load_cifar10(root, verify_checksums=False)
    assert winner and torch.equal(arrays.train_images, winner[0].train_images)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [cifar_data.ARCHIVE_NAME, cifar_data.BATCHES_FOLDER]
    )


# ## Two nodes, one killed worker, `torchrun --max-restarts=1`

# The trainer as the test runs it on one of the two "nodes": on that node's first attempt, the worker
# writes its process id to a file after the first epoch's checkpoint and then holds still, so that the
# test's kill lands in the middle of the run however loaded the machine is.
HOLDING_WORKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import synthetic_main
    from experiments.trainer import Run

    marker = os.environ.get("ELASTIC_TEST_MARKER")
    if marker and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
        end_epoch = Run.end_epoch

        def end_epoch_then_hold(self, scores):
            end_epoch(self, scores)
            if self.progress.epoch == 1:
                Path(marker).write_text(str(os.getpid()))
                time.sleep(600)

        Run.end_epoch = end_epoch_then_hold
    sys.exit(synthetic_main.cifar10.main([*synthetic_main.OWN_DATA, *sys.argv[1:]]))
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_nodes_lose_a_worker_restart_and_end_with_the_uninterrupted_weights(
    data_dir: Path, tmp_path: Path
) -> None:
    epochs = 3
    # Uninterrupted: the same two ranks on one node.
    reference = tmp_path / "reference"
    standalone = [TORCHRUN, "--standalone", "--nproc-per-node=2", str(SCRIPT)]
    done = subprocess.run(
        [*standalone, *run_dir_args(data_dir, reference, epochs=epochs)], capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    worker = tmp_path / "worker.py"
    worker.write_text(HOLDING_WORKER.format(tests=str(TESTS)))
    run_dir, marker = tmp_path / "run", tmp_path / "held-worker-pid"
    node = [
        TORCHRUN, "--nnodes=2", "--nproc-per-node=1", "--max-restarts=1", "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=elastic-test", "--local-addr=127.0.0.1",
        str(worker), *run_dir_args(data_dir, run_dir, epochs=epochs),
    ]  # fmt: skip
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    # A fresh store each rendezvous round (see the README): PyTorch's shared one keeps the first
    # round's keys and host, which a restarted round may read or miss.
    fresh_store = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    environments = [fresh_store, {**fresh_store, "ELASTIC_TEST_MARKER": str(marker)}]
    outputs = [open(log, "w") for log in logs]  # noqa: SIM115 - closed once the nodes have ended
    nodes = [
        subprocess.Popen(node, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        for out, env in zip(outputs, environments, strict=True)
    ]
    killed = False
    try:
        checkpoint = run_dir / CHECKPOINT_DIR / LAST
        # Wait (without a clock) until node 1's worker holds still after the first epoch's checkpoint.
        while not (marker.exists() and marker.read_text() and checkpoint.exists()):
            if any(n.poll() is not None for n in nodes):
                raise AssertionError(
                    "a node ended early:\n" + "\n".join(log.read_text()[-3000:] for log in logs)
                )
            try:
                nodes[0].wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        assert load_checkpoint(checkpoint)["position"] == {"step": 5, "epoch": 1, "batch": 0}
        os.kill(int(marker.read_text()), signal.SIGKILL)
        killed = True
        codes = [n.wait(timeout=600) for n in nodes]
    finally:
        # torchrun starts its workers in sessions of their own: on a failure, the launchers are asked
        # to stop theirs (SIGTERM), and the held worker, which nothing else would end, is killed.
        if not killed and marker.exists() and marker.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(marker.read_text()), signal.SIGKILL)
        for n in nodes:
            if n.poll() is None:
                n.terminate()
                try:
                    n.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(n.pid, signal.SIGKILL)
        for out in outputs:
            out.close()
    text = "\n".join(log.read_text() for log in logs)
    assert codes == [0, 0], text[-6000:]
    results = json.loads((run_dir / "results.json").read_text())
    # The restarted command continued the folder's checkpoint (epoch 1) and finished the run.
    assert results["resumed_from"] == str(checkpoint) and results["world_size"] == 2, text[-3000:]
    assert (results["epochs"], results["steps"], results["ranks_agree"]) == (epochs, 5 * epochs, True)
    assert_same_weights(weights(run_dir), weights(reference))
    assert losses(run_dir) == losses(reference)
