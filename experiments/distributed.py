"""
# Several processes, one model

`torchrun` starts one trainer per process (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`); each trains on its share
of every batch and `DistributedDataParallel` averages the gradients, so all hold the same weights; only
rank 0 prints and writes files (the README's "Several GPUs" and "Several machines, and restarts").

This module holds what every rank must decide alike: when to stop, who prepares the data on each
machine, and where the run starts. A rank that acted alone would leave the others waiting forever in
their next collective, so each decision is one collective that all ranks take part in.
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
from resnet.loading import TRAINER_DIGEST, checkpoint_digest


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
    if not world.is_distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        # NCCL's collectives (and `all_gather_object`) run on the current device: make it ours.
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=world.rank, world_size=world.size)


def destroy_process_group() -> None:
    """
    Shut the process group down, then sleep a moment: a gloo thread letting go of its last collective
    needs the GIL; a script reaching shutdown first aborts ("terminate called without an active exception").
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(0.2)


def sum_over_ranks(values: torch.Tensor, world: World, op: str = "sum") -> torch.Tensor:
    """`values` summed (or with `op="max"`, their element-wise maximum) over all ranks."""
    if world.is_distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return values


def state_hash(model: torch.nn.Module) -> str:
    """A SHA-256 of the names and bytes of every tensor in the model's state, to compare weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# "No non-finite loss seen yet": larger than any step, so that the first bad step is a minimum.
NO_BAD_STEP = 2**62


def agree_on_stop(
    stop_requested: bool, first_bad_step: torch.Tensor, world: World
) -> tuple[bool, int | None]:
    """
    Whether any rank was asked to stop, and the first step at which any rank's loss was non-finite
    (`None` if none). `first_bad_step` stays on the device (`NO_BAD_STEP` or the step) until this
    exchange, so watching the loss costs no host synchronisation.
    """
    flag = torch.tensor(1.0 if stop_requested else 0.0, device=first_bad_step.device)
    # Negated, "the smallest bad step" becomes a maximum, which one all-reduce finds with the stop flag.
    flags = sum_over_ranks(torch.stack([flag, -first_bad_step.to(torch.float32)]), world, "max")
    bad = int(-flags[1].item())
    return bool(flags[0].item() > 0), (bad if bad < NO_BAD_STEP else None)


class PreparationFailed(ExperimentError):
    """Another rank could not prepare the data; its own message says why (exit status 1)."""


@contextlib.contextmanager
def local_leader_first(world: World, device: torch.device) -> Iterator[None]:
    """
    Run the body (reading, maybe downloading and unpacking, the data) on local rank 0 of every node first,
    and on the other ranks once all of those have finished, so they find the data ready (leaders of several
    nodes may share a folder: `data.py` makes that safe). The wait is an all-reduce, not a barrier, so it
    carries one bit: if a leader fails, every rank stops with one line instead of waiting for a lost partner.
    """
    if not world.is_distributed:
        yield
        return
    failed = leader = world.local_rank == 0  # until the leader's body has finished
    try:
        if leader:
            yield
            failed = False
    finally:
        # Every rank takes part exactly once, the leaders after their body (also when it raised).
        flag = torch.tensor([1.0 if failed else 0.0], device=device)
        failed_somewhere = bool(sum_over_ranks(flag, world, "max").item() > 0)
    if failed_somewhere:
        raise PreparationFailed(
            f"rank {world.rank}: local rank 0 of a node could not prepare the data, so this rank stops "
            f"too; that rank's own error (in its node's output) says what to fix"
        )
    if not leader:
        yield


# Where one rank starts: what it found to continue, and a digest of its settings (`start_of`).
Start = dict[str, Any]


def start_of(checkpoint: Path | None, saved: dict[str, Any] | None, settings: dict[str, Any]) -> Start:
    """
    This rank's start: `saved` is the checkpoint loaded from `checkpoint` (both `None` for a new run),
    `settings` those every rank must share (not the data's folder or the device, which may differ).
    """
    text = repr(sorted((key, repr(value)) for key, value in settings.items()))
    step = 0 if saved is None else int(saved["position"]["step"])
    what = f"continues {checkpoint} at step {step}" if saved else "finds no checkpoint and starts a new run"
    return {
        # Checkpoints of version 3 carry the digest `load_checkpoint` checked; older ones are hashed here.
        "found": None if saved is None else (saved.get(TRAINER_DIGEST) or checkpoint_digest(saved), step),
        "what": what,
        "settings": hashlib.sha256(text.encode()).hexdigest(),
        "host": socket.gethostname(),
    }


def agree_on_start(start: Start, world: World) -> None:
    """
    Refuse to train unless every rank continues the same checkpoint (or none) with the same settings.
    Every rank gathers every rank's start and decides alike, so all stop together with the same line
    (exit status 2: the folder or the command is what must change).
    """
    if not world.is_distributed:
        return
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, start)
    first = gathered[0]
    for rank, other in enumerate(gathered):
        where, rank_0 = f"rank {rank} (host {other['host']})", f"rank 0 (host {first['host']})"
        if other["found"] != first["found"]:
            raise UsageError(
                f"{where} {other['what']}, but {rank_0} {first['what']}; every rank reads the checkpoint "
                f"itself, so the run folder (--run-dir or --resume) must be on storage every node sees at "
                f"the same path, e.g. a network file system"
            )
        if other["settings"] != first["settings"]:
            raise UsageError(
                f"{where} was given other settings than {rank_0}; start every node with the same command"
            )
