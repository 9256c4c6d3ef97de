"""
Two processes with DistributedDataParallel on CPU (gloo), launched with torchrun as a user would.

The documented expectation: with N ranks and a global batch $b$, every rank draws its own $b/N$ images
of the step's $b$ (the loader shards the epoch's order like `DistributedSampler`), computes its loss
with batch-norm statistics of its own images, and DDP averages the gradients. So one step equals a single
process that averages the losses of the N per-rank batches, each normalised with its own statistics;
the running batch-norm statistics are rank 0's (DDP broadcasts rank 0's buffers before every forward
pass). We rebuild exactly that here in one process and compare the weights. (With `--sync-bn` on GPUs
the statistics span all ranks instead; PyTorch's SyncBatchNorm does not run on CPU, so that case is not
tested here.)
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from labml.internal.configs.processor import ConfigProcessor
from synthetic_main import SCRIPT, TINY_STAGES, tiny_args, write_data
from torch.func import functional_call

from experiments import data as cifar_data
from experiments.checkpoint import load_checkpoint
from experiments.cifar10 import Configs
from experiments.loader import TensorBatches
from experiments.models import build_model
from experiments.recipes import StepSchedule

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("ddp")
    data_dir = write_data(root / "data")
    results = root / "results.json"
    torchrun(tiny_args(data_dir, root / "logs", "--results", str(results)), timeout=600)
    return data_dir, root / "logs", json.loads(results.read_text())


def torchrun(argv: list[str], timeout: int) -> subprocess.CompletedProcess:
    """The trainer in two CPU processes, as `torchrun --nproc_per_node=2` starts it; it must exit 0."""
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", str(SCRIPT), *argv]
    process = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return process


def test_both_ranks_end_with_identical_weights_and_only_rank_0_writes(
    ddp_run: tuple[Path, Path, dict],
) -> None:
    _, logs, results = ddp_run
    assert results["world_size"] == 2 and results["ranks_agree"] is True
    assert results["steps"] == 5 and results["epochs"] == 1
    (run_dir,) = (logs / "cifar10").iterdir()
    assert (run_dir / "results.json").exists() and (run_dir / "checkpoints" / "last.pt").exists()


def test_the_weights_match_one_process_averaging_the_ranks_gradients(
    ddp_run: tuple[Path, Path, dict],
) -> None:
    data_dir, logs, _ = ddp_run
    torch.set_num_threads(1)
    arrays = cifar_data.load_cifar10(data_dir, download=False, verify_checksums=False)
    # The trainer's defaults: seed 5, global batch 64 split over two ranks, SGD as in the paper, and the
    # memory layout `channels_last=auto` picks for this CPU (the layout changes the rounding).
    defaults = Configs()
    ConfigProcessor(defaults, {"device.use_cuda": False})
    channels_last = defaults.channels_last
    torch.manual_seed(5)
    model = build_model(
        "custom",
        num_classes=10,
        shortcut="preset",
        **TINY_STAGES,
        bottlenecks=None,
        zero_init_residual=False,
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    # The paper's drops sit at 50% and 75% of the run: steps 2 and 4 of this 5-step one.
    milestones = [round(fraction * 5) for fraction in defaults.lr_milestones]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, StepSchedule(milestones, 0.1))
    ranks = [
        TensorBatches(
            arrays.train_images,
            arrays.train_labels,
            batch_size=32,
            shuffle=True,
            augment=True,
            device="cpu",
            seed=5,
            mean=cifar_data.CIFAR10_MEAN,
            std=cifar_data.CIFAR10_STD,
            rank=rank,
            world_size=2,
            channels_last=channels_last,
        )
        for rank in (0, 1)
    ]
    criterion = nn.CrossEntropyLoss()
    model.train()
    for (x0, y0), (x1, y1) in zip(ranks[0].epoch(0), ranks[1].epoch(0), strict=True):
        loss0 = criterion(model(x0), y0)
        # Rank 1 normalises with its own batch statistics, but its running statistics are discarded.
        params = dict(model.named_parameters())
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        loss1 = criterion(functional_call(model, {**params, **buffers}, (x1,)), y1)
        optimizer.zero_grad()
        ((loss0 + loss1) / 2).backward()
        optimizer.step()
        scheduler.step()

    (run_dir,) = (logs / "cifar10").iterdir()
    trained = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    expected = model.state_dict()
    assert trained.keys() == expected.keys()
    for name, tensor in expected.items():
        # Gradients are summed in another order across processes: equal up to float rounding.
        assert torch.allclose(trained[name].float(), tensor.float(), rtol=1e-4, atol=1e-5), name


def test_a_time_limit_stops_both_ranks_together_with_a_checkpoint(tmp_path: Path) -> None:
    # Each rank reaches its own limit; they stop at the next agreement all ranks take part in (the end
    # of the epoch here), so no rank waits in a collective the other has left.
    data_dir = write_data(tmp_path / "data")
    logs = tmp_path / "logs"
    process = torchrun(tiny_args(data_dir, logs, "--time-limit", "0.001", epochs=3), timeout=300)
    assert process.stdout.count("stopped at step 5 (epoch 1, batch 5)") == 1
    (run_dir,) = (logs / "cifar10").iterdir()
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["position"] == {"step": 5, "epoch": 0, "batch": 5}
    assert not (run_dir / "results.json").exists()


def _rank_pid(launcher: int, rank: int) -> int:
    """The process id of torchrun's worker with the given RANK (from /proc: Linux only)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker with RANK={rank} under process {launcher}")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker through /proc")
def test_a_signal_to_one_rank_stops_both_at_the_same_step_with_one_checkpoint(tmp_path: Path) -> None:
    # A scheduler that preempts one node signals only its processes. The rank that got the signal may
    # not leave the collectives alone, so it waits for the next agreement every rank takes part in; there
    # both stop, and rank 0 saves one checkpoint the run resumes from.
    data_dir = write_data(tmp_path / "data")
    logs = tmp_path / "logs"
    argv = tiny_args(data_dir, logs, epochs=500)
    command = [TORCHRUN, "--standalone", "--nproc_per_node=2", str(SCRIPT), *argv]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        output = []
        for line in process.stdout:
            output.append(line)
            if line.startswith("epoch 1/500"):
                break
        else:
            raise AssertionError("".join(output)[-3000:])
        os.kill(_rank_pid(process.pid, rank=1), signal.SIGTERM)
        rest, _ = process.communicate(timeout=300)
    text = "".join(output) + rest
    # The signalled rank exits with the signal's status (128 + 15), as a single process does, so the
    # launcher reports the run as stopped, not finished; rank 0 saved before it left.
    assert process.returncode != 0 and "exitcode  : 143" in text, text[-3000:]
    (run_dir,) = (logs / "cifar10").iterdir()
    position = load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]
    # The two ranks stopped together: rank 0 reports the step its checkpoint holds, once, and no
    # results were written for the unfinished run.
    step = position["step"]
    assert text.count(f"stopped at step {step} ") == 1, text[-3000:]
    assert 5 <= step < 500 * 5 and not (run_dir / "results.json").exists()
    assert f"--resume {run_dir}" in text


def test_an_epoch_resumed_mid_way_reports_the_uninterrupted_training_loss_and_accuracy(
    tmp_path: Path,
) -> None:
    # Each rank sums the loss and accuracy of its own share of an epoch; a checkpoint taken mid-epoch
    # must keep all ranks' partial sums, or the resumed epoch's record counts one rank's share twice.
    # A batch of 16 gives 20 steps per epoch; the ranks agree on a stop every 10th step, so a stop asked
    # for at step 3 takes effect at step 10, half-way through the epoch.
    data_dir = write_data(tmp_path / "data")
    uninterrupted = tmp_path / "uninterrupted.json"
    torchrun(tiny_args(data_dir, tmp_path / "a", "--batch-size", "16", "--results", str(uninterrupted)), 600)
    stopped = tiny_args(data_dir, tmp_path / "b", "--batch-size", "16", "--stop-after-steps", "3")
    assert "stopped at step 10 (epoch 1, batch 10)" in torchrun(stopped, 600).stdout
    (run_dir,) = (tmp_path / "b" / "cifar10").iterdir()
    resumed = tmp_path / "resumed.json"
    # The checkpoint brings the settings; the data folder and the device are this machine's.
    again = ["--data-dir", str(data_dir), "--logs-dir", str(tmp_path / "b"), "--device", "cpu"]
    torchrun([*again, "--resume", str(run_dir), "--results", str(resumed)], 600)
    expected, got = json.loads(uninterrupted.read_text()), json.loads(resumed.read_text())
    assert got["resumed_from"] is not None and got["steps"] == expected["steps"] == 20
    assert got["train_accuracy"] == expected["train_accuracy"]
    # The loss sums are float64 added in another order: equal up to float64 rounding.
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-12, abs=0)
    assert got["weights_sha256"] == expected["weights_sha256"]
