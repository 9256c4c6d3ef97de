"""
# Checkpoints that survive crashes and cannot run code

A run can be killed at any moment (by the user, a scheduler, a full disk), so the last checkpoint written
must always be complete, and loading one must never do anything but load numbers.

**Atomic writes.** Into a temporary file in the same folder, `fsync`ed, then renamed over the old one
([`files.py`](files.html)): a reader sees the old file or the new one, never half of either, even after
`kill -9` mid-write.

**Safe loading.** `torch.load(weights_only=True)` rebuilds only tensors and plain containers, never
objects or code; everything we save fits that (RNG states as tensors, positions as ints, settings as
strings and numbers). Every way a file can be wrong (missing, truncated, not a checkpoint, another
network, carrying code) is a [`CheckpointError`](#CheckpointError): one line naming the file and the fix.

**Damage is detected.** A disk can flip bits inside a tensor and leave a file that still loads, with
wrong weights. So every checkpoint records a SHA-256 of all its other entries (the library's
[`checkpoint_digest`](../resnet/loading.html#checkpoint_digest), so the trainer and `resnet.load_checkpoint`
check the same thing), computed as it is saved and checked over the very tensors just parsed as it is
loaded. A mismatch is refused in one line that names an intact older checkpoint beside it, if any.

**One schema.** [`checkpoint_state`](#checkpoint_state) writes every entry and
[`restore_checkpoint`](#restore_checkpoint) reads every one back, so the two cannot drift apart.
"""

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from experiments.errors import ExperimentError, UsageError
from experiments.files import atomic_write
from resnet.loading import TRAINER_DIGEST, checkpoint_damage, checkpoint_digest, intact_alternative

# Written into every checkpoint so we can tell our files from any other pickle.
FORMAT = "resnet-annotated/cifar10-checkpoint"
# Version 3 adds the digest; versions 1 and 2 still load, unverified (they carry nothing to check against).
# Version 2 dropped Python's `random` state; version 1 files load unchanged (the entry is ignored).
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)

# The file name of the newest checkpoint inside a run folder.
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


class CheckpointError(ExperimentError):
    """A checkpoint that cannot be used; its message is one line naming the file and the fix."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """
    Write `state` to `path` atomically (see [`experiments/files.py`](files.py)): either the whole new
    file is there afterwards, or the old one is untouched. The digest of `state` is added as it is
    written. Errors (a full disk, a read-only folder) propagate after the temporary file is removed.
    """
    state = {**state, TRAINER_DIGEST: checkpoint_digest(state)}
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, *, advise: bool = True) -> dict[str, Any]:
    """
    Load and check a checkpoint written by [`save_checkpoint`](#save_checkpoint). Tensors come back on
    the CPU. Raises `CheckpointError` for anything that is not a complete, intact checkpoint of this
    trainer; for a damaged one, its message names what to use instead (unless `advise` is false).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder; pass a checkpoint file (e.g. {path / LAST}), or give the run folder "
            f"to --resume or --eval, which find its checkpoint"
        )
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # `weights_only=True` refuses pickles that would construct objects or call functions.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe pickle"
        raise CheckpointError(
            f"{path} is not a checkpoint of this trainer: it holds objects or code that "
            f"a weights-only load refuses to run ({reason[:120]})"
        ) from None
    except Exception as e:
        # Truncated zips, garbage bytes read as a legacy pickle (KeyError, IndexError, ...): any failure
        # to parse means the file is not a usable checkpoint.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        instead = _alternative(path, advise)
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be loaded ({reason[:120]}); {instead}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by experiments/cifar10.py")
    if state.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint version {state.get('version')!r}; this trainer reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    # Checked on what `torch.load` just parsed: these tensors are the ones a resume or `--eval` then uses.
    if damage := checkpoint_damage(state):
        raise CheckpointError(f"{path} is damaged: {damage}; {_alternative(path, advise)}")
    for key in ("model", "config", "signature", "position"):
        if key not in state:
            raise CheckpointError(f"{path} is incomplete: it has no '{key}' entry")
    return state


def _alternative(path: Path, advise: bool) -> str:
    """The newest intact checkpoint beside a damaged one, in words, or what to do without one."""
    if not advise:
        return "use an earlier checkpoint or start a new run"

    def intact(candidate: Path) -> bool:
        try:
            load_checkpoint(candidate, advise=False)
        except CheckpointError:
            return False
        return True

    return intact_alternative(path, intact)


def check_signature(path: Path, saved: dict[str, Any], expected: dict[str, Any]) -> None:
    """
    Refuse a checkpoint of another network. `saved` and `expected` are
    [`model_signature`](#model_signature)s; the message names the first difference in words a user
    recognises (preset, number of classes) before falling back to tensor shapes.
    """
    for key, what in (("model", "model"), ("num_classes", "number of classes")):
        if saved.get(key) != expected.get(key):
            raise CheckpointError(
                f"{path} was written for {what} {saved.get(key)!r}, but this run uses "
                f"{expected.get(key)!r}; pass the matching --model/num_classes or "
                f"another checkpoint"
            )
    saved_shapes, expected_shapes = saved.get("shapes", {}), expected.get("shapes", {})
    if saved_shapes != expected_shapes:
        names = sorted(set(saved_shapes) ^ set(expected_shapes))
        names += sorted(
            n for n in set(saved_shapes) & set(expected_shapes) if saved_shapes[n] != expected_shapes[n]
        )
        raise CheckpointError(
            f"{path} holds a network of another shape (first difference: "
            f"{names[0] if names else '?'}); it does not fit this model"
        )


def model_signature(model_name: str, num_classes: int, model: torch.nn.Module) -> dict[str, Any]:
    """What identifies a network: its name, classes and the shape of every tensor in its state."""
    return {
        "model": model_name,
        "num_classes": int(num_classes),
        "shapes": {name: list(t.shape) for name, t in model.state_dict().items()},
    }


def find_checkpoint(reference: str, logs_dir: Path) -> Path:
    """
    Turn what a user passes to `--resume` into a checkpoint file: a checkpoint path, a run folder, or a
    run's uuid (searched for under `logs_dir/<experiment>/`).
    """
    candidate = Path(reference).expanduser()
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        run_dir = candidate
    else:
        matches = sorted(logs_dir.glob(f"*/{reference}")) if logs_dir.is_dir() and reference else []
        matches = [m for m in matches if m.is_dir()]
        if not matches:
            # Nothing by that name: a mistyped setting, not a damaged file.
            raise UsageError(
                f"no run '{reference}': pass a run uuid from {logs_dir}, a run folder or a checkpoint file"
            )
        run_dir = matches[0]
    checkpoint = run_dir / CHECKPOINT_DIR / LAST
    if not checkpoint.is_file():
        raise CheckpointError(
            f"run folder {run_dir} has no checkpoint ({checkpoint} is missing); the run "
            f"stopped before its first checkpoint, start it again"
        )
    return checkpoint


def rng_state() -> dict[str, Any]:
    """
    The random number generators' states, as tensors (weights-only loadable). Only PyTorch's: the loader
    draws every batch from its own generator seeded by (seed, epoch, batch), and nothing in a run uses
    Python's `random`, so its state would restore nothing.
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what [`rng_state`](#rng_state) captured (older checkpoints' Python state is ignored)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


# ## What a checkpoint holds
#
# One function writes the schema and one reads it, so the two cannot drift apart. The run's own state
# is that of its parts, each with `state_dict`/`load_state_dict`: the network, the optimizer, the
# schedule, the fp16 loss scaler and the weight average when the run has them, and the run's
# [`Progress`](trainer.html#Progress) (where it stopped, the partial epoch's sums, the history, the clocks).


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def run_config(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint keeps: what the run is, not the hardware it ran on (`device.*`)."""
    return {k: v for k, v in settings.items() if not k.startswith("device.")}


@dataclass(frozen=True)
class RunParts:
    """The parts of a run whose state a checkpoint holds; `scaler` and `ema` only when the run has them."""

    model: Stateful
    optimizer: Stateful
    scheduler: Stateful
    scaler: Stateful | None
    ema: Stateful | None
    progress: Stateful


def checkpoint_state(parts: RunParts, settings: dict[str, Any], signature: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to continue exactly here; only tensors, numbers, strings and containers."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
        "ema": parts.ema.state_dict() if parts.ema is not None else None,
        # `position`, `epoch_sums`, `history` and `timing`.
        **parts.progress.state_dict(),
        "rng": rng_state(),
        "config": run_config(settings),
        "signature": signature,
    }


def restore_checkpoint(
    path: Path, state: dict[str, Any], parts: RunParts, signature: dict[str, Any], batches_per_epoch: int
) -> None:
    """
    Load a [`load_checkpoint`](#load_checkpoint)ed `state` into the run's parts, or refuse it clearly.
    `batches_per_epoch` is what this run's data gives: a checkpoint taken later in an epoch than that
    cannot continue exactly.
    """
    check_network(path, state, signature)
    batch = saved_position(state)["batch"]
    if batch > batches_per_epoch:
        raise CheckpointError(
            f"{path} stopped at batch {batch} of an epoch that now has {batches_per_epoch} batches; "
            f"resume with the same data and batch size"
        )
    if parts.ema is not None and state.get("ema") is None:
        raise CheckpointError(
            f"{path} has no averaged weights, but this run sets ema_decay; resume without changing ema_decay"
        )
    try:
        parts.model.load_state_dict(state["model"])
        parts.optimizer.load_state_dict(state["optimizer"])
        parts.scheduler.load_state_dict(state["scheduler"])
        if parts.scaler is not None and state.get("scaler"):
            parts.scaler.load_state_dict(state["scaler"])
        if parts.ema is not None:
            parts.ema.load_state_dict(state["ema"])
        parts.progress.load_state_dict(state)
        set_rng_state(state["rng"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path} does not fit this run ({str(e).splitlines()[0][:160]})") from None


def evaluation_weights(state: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """
    The weights a run reported its numbers with, and which they are: a run with `ema_decay` evaluated
    its averaged weights, so those are the ones to measure again.
    """
    if state.get("ema"):
        return state["ema"]["model"], "averaged (ema)"
    return state["model"], "trained"


def saved_settings(state: dict[str, Any]) -> dict[str, Any]:
    """
    The settings a checkpoint's run was given ([`run_config`](#run_config)); a resume starts from them.
    They are the file's content, unchecked: the trainer passes them through the command line's checks
    ([`launch.checked_settings`](launch.html#checked_settings)) before it uses them.
    """
    return dict(state["config"])


def saved_position(state: dict[str, Any]) -> dict[str, int]:
    """Where in the schedule the checkpoint was taken: `step`, `epoch` and `batch`."""
    return dict(state["position"])


def check_network(path: Path, state: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse a loaded checkpoint whose network is not the `expected` [signature](#model_signature)."""
    check_signature(path, state["signature"], expected)


def evaluation_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """
    The settings to rebuild a checkpoint's network and data with for `--eval`, from its (checked)
    [`saved_settings`](#saved_settings). The run's subsets say what it trained on and watched; an
    evaluation measures the whole test set unless it asks for a subset.
    """
    return {k: v for k, v in settings.items() if k not in ("test_subset", "train_subset")}
