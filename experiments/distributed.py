"""
# Several processes, one model

`torchrun --nproc_per_node=N experiments/cifar10.py ...` starts N copies of the trainer and tells each
its `RANK`, `LOCAL_RANK` and `WORLD_SIZE` through environment variables. Each copy reads its own share
of every epoch (the loader takes each rank's indices from a `DistributedSampler`), computes
gradients on it, and `DistributedDataParallel` averages the gradients across copies before each
optimizer step, so all copies hold the same weights after every step.

Only rank 0 talks to the user: it prints progress, writes the run folder, checkpoints and
`results.json`. The other ranks compute and stay quiet.

`--batch-size` is the *global* batch: with N processes each takes `batch_size / N` images per step, so
the recipe does not change with the number of GPUs. What a multi-process step equals, exactly: one
process that averages the losses of the N per-rank batches, each normalised with batch-norm statistics
of its own images, keeping rank 0's running statistics (DDP broadcasts rank 0's buffers before every
forward pass). `tests/test_cifar10_ddp.py` rebuilds that in one process and finds the same weights up to
float rounding. With `--sync-bn` (GPUs only: PyTorch's `SyncBatchNorm` has no CPU implementation) the
statistics span all ranks, and N processes × `b/N` images approximate one process with batch `b`.

Decisions that must be the same on every rank (stop because of a signal, stop because the loss went
non-finite) are made with an all-reduce, so no rank waits forever for a partner that already left.

## Several machines

`torchrun --nnodes=M --nproc-per-node=N --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT` on each of M
machines (or one `srun` that starts them) makes one world of M × N ranks; nothing above changes. Two
things do, and this module decides both. The data must be prepared once per machine before anyone reads
it: [`local_leader_first`](#local_leader_first) lets local rank 0 of each node download and unpack while
the node's other ranks wait. And every rank must start from the same point: each reads the checkpoint
itself, so a run folder that one node sees and another does not would split the run;
[`agree_on_start`](#agree_on_start) compares what each rank found, and the settings it was given, before
the first step. When a worker dies, `torchrun --max-restarts` starts the same command on every node again;
with `--run-dir` that command continues from the folder's last checkpoint
([`run_folder.py`](run_folder.html)). (Set `TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1` for restarts: with
the store PyTorch shares between rendezvous rounds, a restarted round failed or hung in our test; the
README's multi-machine section says what was seen.)
"""

import contextlib
import hashlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from experiments.errors import ExperimentError, UsageError
from resnet.loading import TRAINER_DIGEST


@dataclass(frozen=True)
class World:
    """Where this process sits among the training processes."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1


def world_from_environment() -> World:
    """The world torchrun describes, or a world of one when started without it."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", "0")), size=size)


def init_process_group(world: World, device: torch.device) -> None:
    """NCCL between GPUs, gloo between CPU processes."""
    if not world.is_distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        # NCCL's collectives (and `all_gather_object`) run on the current device: make it ours.
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)


# How long the last process-group threads get to let go of their work before the interpreter exits.
GLOO_SETTLE_S = 0.2


def destroy_process_group() -> None:
    """
    Shut the process group down, then wait a moment. A gloo worker thread lets go of a finished
    collective (and of the Python tensors in it, which takes the GIL) only after the caller has been
    told it finished. On a busy machine that thread may not have run again by the time a short script
    reaches interpreter shutdown, and then it aborts the process ("terminate called without an active
    exception"; a few percent of 2-process CPU runs on a loaded machine). Sleeping releases the GIL and
    the CPU, so the thread finishes first.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(GLOO_SETTLE_S)


def any_rank(flag: torch.Tensor, world: World) -> torch.Tensor:
    """Element-wise maximum over all ranks of a small tensor: a flag set on any rank is set on all."""
    if world.is_distributed:
        flag = flag.clone()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


def sum_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """Sum of a tensor over all ranks (epoch loss sums and counts)."""
    if world.is_distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def state_hash(model: torch.nn.Module) -> str:
    """A SHA-256 of every tensor in the model's state, to compare weights across processes."""
    return tensors_hash(model.state_dict())


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    """A SHA-256 of named tensors: their names, and their bytes in a fixed order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def state_hashes(state_hash: str, world: World) -> list[str]:
    """Every rank's weight hash, gathered on all ranks, to prove they agree."""
    if not world.is_distributed:
        return [state_hash]
    gathered: list[str] = [""] * world.size
    dist.all_gather_object(gathered, state_hash)
    return gathered


# ## Stopping together
#
# A rank that stops on its own leaves the others waiting forever in their next all-reduce. So a rank
# never acts on a signal or a diverged loss alone: every few steps all ranks exchange two numbers, "has
# anyone been asked to stop?" and "what is the first step at which anyone saw a non-finite loss?", and
# all of them act on the answer together.

# "No non-finite loss seen yet": larger than any step, so that the first bad step is a minimum.
NO_BAD_STEP = 2**62


def agree_on_stop(
    stop_requested: bool, first_bad_step: torch.Tensor, world: World
) -> tuple[bool, int | None]:
    """
    Whether any rank was asked to stop, and the first step at which any rank's loss was non-finite
    (`None` when none was). `first_bad_step` is a tensor on this rank's device holding `NO_BAD_STEP`
    or the step, so that checking it costs no host synchronisation until this exchange.
    """
    device = first_bad_step.device
    flags = torch.stack(
        [torch.tensor(1.0 if stop_requested else 0.0, device=device), -first_bad_step.to(torch.float32)]
    )
    # Negated, "the smallest bad step" becomes a maximum, which one all-reduce finds with the stop flag.
    flags = any_rank(flags, world)
    bad = int(-flags[1].item())
    return bool(flags[0].item() > 0), (bad if bad < NO_BAD_STEP else None)


# ## Several machines: the data once per node, one starting point for all


class PreparationFailed(ExperimentError):
    """Another rank could not prepare the data; its own message says why (exit status 1)."""


@contextlib.contextmanager
def local_leader_first(world: World, device: torch.device) -> Iterator[None]:
    """
    Run the body (reading the data, which may download and unpack it) on local rank 0 of every node
    first, and on the node's other ranks once all of those have finished. Two ranks on a node never
    download or unpack into the same folder at once, and the waiting ranks find the data ready. Local
    ranks 0 of different nodes may still share a folder (a network file system); `data.py` makes that
    safe, as it does for separate runs started together on one folder.

    The wait is an all-reduce rather than a barrier so that it carries one bit: if a leader's body
    fails, every other rank stops with a one-line error instead of waiting for a partner that is gone
    (or reading a folder it left half-checked). Every rank takes part exactly once.
    """
    if not world.is_distributed:
        yield
        return

    def exchange(failed: bool) -> bool:
        flag = torch.tensor([1.0 if failed else 0.0], device=device)
        return bool(any_rank(flag, world).item() > 0)

    failed_elsewhere = PreparationFailed(
        f"rank {world.rank}: local rank 0 of a node could not prepare the data, so this rank stops too; "
        f"that rank's own error (in its node's output) says what to fix"
    )
    if world.local_rank == 0:
        try:
            yield
        except BaseException:
            exchange(failed=True)
            raise
        # A leader that succeeded stops as well when another node's failed, rather than train alone.
        if exchange(failed=False):
            raise failed_elsewhere
        return
    if exchange(failed=False):
        raise failed_elsewhere
    yield


@dataclass(frozen=True)
class Start:
    """
    Where one rank starts: the checkpoint it continues (`None` for a new run) with its digest and step,
    and a digest of the settings it was given. Equal on every rank, or the run would split.
    """

    checkpoint: str | None
    checkpoint_digest: str | None
    step: int
    settings_digest: str
    host: str = ""


def start_of(checkpoint: Path | None, saved: dict[str, Any] | None, settings: dict[str, Any]) -> Start:
    """
    This rank's [`Start`](#Start): `saved` is the loaded checkpoint at path `checkpoint` (both `None`
    for a new run); `settings` those to compare between ranks, without what may differ between machines
    (the data's folder, the device).
    """
    text = repr(sorted((key, repr(value)) for key, value in settings.items()))
    # Checkpoints of version 3 carry a digest of everything in them; older ones, only their weights'.
    digest = None if saved is None else str(saved.get(TRAINER_DIGEST) or tensors_hash(saved["model"]))
    step = 0 if saved is None else int(saved["position"]["step"])
    return Start(
        checkpoint=None if checkpoint is None else str(checkpoint),
        checkpoint_digest=digest,
        step=step,
        settings_digest=hashlib.sha256(text.encode()).hexdigest(),
        host=socket.gethostname(),
    )


def agree_on_start(start: Start, world: World) -> None:
    """
    Refuse to train unless every rank continues the same checkpoint (or none) with the same settings.
    Every rank gathers every rank's `Start` and decides alike, so all stop together with the same line
    (exit status 2: the folder or the command is what must change).
    """
    if not world.is_distributed:
        return
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, start)
    first = gathered[0]
    for rank, other in enumerate(gathered):
        where = f"rank {rank} (host {other.host})"
        if (other.checkpoint_digest, other.step) != (first.checkpoint_digest, first.step):
            raise UsageError(
                f"{where} {_describe(other)}, but rank 0 (host {first.host}) {_describe(first)}; every rank "
                f"reads the checkpoint itself, so the run folder (--run-dir or --resume) must be on storage "
                f"every node sees at the same path, e.g. a network file system"
            )
        if other.settings_digest != first.settings_digest:
            raise UsageError(
                f"{where} was given other settings than rank 0 (host {first.host}); start every node with "
                f"the same command"
            )


def _describe(start: Start) -> str:
    if start.checkpoint is None:
        return "finds no checkpoint and starts a new run"
    return f"continues {start.checkpoint} at step {start.step}"
