"""
# Checkpoints that survive crashes and cannot run code

A run can be killed at any moment, so the last checkpoint must always be whole (the library's
[`atomic_write`](../resnet/files.html#atomic_write) writes it), and loading one must do nothing but
load numbers (`torch.load(weights_only=True)`, through the library's
[`load_weights_only`](../resnet/loading.html), which first refuses an archive
`torch.save` did not write). Each records a SHA-256 of its other entries
([`checkpoint_digest`](../resnet/loading.html), which `resnet.load_checkpoint` checks too), checked over
the very tensors just parsed, and each entry must have the shape its writer gives it
([`malformed`](#malformed)). Every way a file can be wrong is a `CheckpointError`: one line naming the
file and the fix.
"""

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from experiments.errors import ExperimentError, UsageError
from resnet.files import atomic_write, read_regular_file
from resnet.loading import (
    MAX_FILE_BYTES,
    TRAINER_DEFAULTS,
    TRAINER_DIGEST,
    checkpoint_damage,
    checkpoint_digest,
    intact_alternative,
    load_weights_only,
)

# Tells our files from any other pickle.
FORMAT = "resnet-annotated/cifar10-checkpoint"
# Version 3 adds the digest; 1 and 2 still load, unverified (they carry nothing to check against).
# Version 2 dropped Python's `random` state, which version 1 files still hold and is ignored.
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"


class CheckpointError(ExperimentError):
    """A checkpoint that cannot be used; its message is one line naming the file and the fix."""


# What a checkpoint fixes for the rest of its run, so that a new value typed with `--resume` would be
# recorded and never honestly used: its random state, the network its weights belong to, and the data
# split and batch its saved position counts in (a new split would train on validation images).
FIXED_BY_CHECKPOINT = {
    "seed": "its random state",
    **{key: "the network its weights fit" for key in ("model", *TRAINER_DEFAULTS)},
    **{key: "how its data is split and batched" for key in ("batch_size", "train_subset", "valid_split")},
    "ema_decay": "whether it averages its weights",
    "lookahead_every": "whether it keeps Lookahead's slow weights",
}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` with our format, version and digest to `path` atomically; errors propagate."""
    state = {"format": FORMAT, "version": VERSION, **state}
    state[TRAINER_DIGEST] = checkpoint_digest(state)
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path, *, advise: bool = True) -> dict[str, Any]:
    """
    Load a checkpoint of [`save_checkpoint`](#save_checkpoint), its tensors on the CPU, or raise a
    `CheckpointError`; for a damaged one the message names what to use instead (unless not `advise`).
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
        raw = read_regular_file(path, MAX_FILE_BYTES, "a checkpoint")
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror or e}); check the path") from None
    except ValueError as e:
        raise CheckpointError(f"{path} {e}; pass the last.pt of a run folder") from None
    try:
        state = load_weights_only(raw)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        if isinstance(e, pickle.UnpicklingError):  # what `weights_only` refuses to construct or call
            raise CheckpointError(
                f"{path} is not a checkpoint of this trainer: it holds objects or code that "
                f"a weights-only load refuses to run ({reason})"
            ) from None
        # Truncated zips, garbage read as a legacy pickle (KeyError, IndexError, ...): not a checkpoint.
        instead = _alternative(path, advise)
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be loaded ({reason}); {instead}"
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
    if problem := malformed(state):
        raise CheckpointError(
            f"{path} is malformed: {problem}; it was edited or written by another version of this "
            f"trainer: use another checkpoint, or start a new run"
        )
    return state


def _alternative(path: Path, advise: bool) -> str:
    """The newest intact checkpoint beside a damaged one, in words, or what to do without one."""
    if not advise:
        return "use an earlier checkpoint or start a new run"

    def intact(candidate: Path) -> bool:
        try:
            return bool(load_checkpoint(candidate, advise=False))
        except CheckpointError:
            return False

    return intact_alternative(path, intact)


def model_signature(model_name: str, num_classes: int, model: torch.nn.Module) -> dict[str, Any]:
    """What identifies a network: its name, classes and the shape of every tensor in its state."""
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    return {"model": model_name, "num_classes": int(num_classes), "shapes": shapes}


def check_network(path: Path, state: dict[str, Any], expected: dict[str, Any]) -> None:
    """
    Refuse a loaded checkpoint whose network is not the `expected` [signature](#model_signature), naming
    the first difference in words a user recognises (preset, number of classes) before tensor shapes.
    """
    saved = state["signature"]
    for key, what in (("model", "model"), ("num_classes", "number of classes")):
        if saved.get(key) != expected.get(key):
            raise CheckpointError(
                f"{path} was written for {what} {saved.get(key)!r}, but this run uses "
                f"{expected.get(key)!r}; pass the matching --model/num_classes or another checkpoint"
            )
    saved_shapes, shapes = saved.get("shapes", {}), expected.get("shapes", {})
    differ = sorted(n for n in saved_shapes.keys() | shapes.keys() if saved_shapes.get(n) != shapes.get(n))
    if differ:
        raise CheckpointError(
            f"{path} holds a network of another shape (first difference: {differ[0]}); it does not fit "
            f"this model"
        )


def find_checkpoint(reference: str, logs_dir: Path) -> Path:
    """What a user passes to `--resume`, as a checkpoint file: a file, a run folder or a run's uuid."""
    candidate = Path(reference).expanduser()
    if candidate.is_file():
        return candidate
    run_dir = candidate
    if not candidate.is_dir():
        matches = [m for m in sorted(logs_dir.glob(f"*/{reference}")) if m.is_dir()] if reference else []
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


# ## What a checkpoint holds
#
# The state of each of the run's parts (`None` for a part the run does not have), its
# [`Progress`](trainer.html#Progress)'s entries, PyTorch's random states (the loader seeds each batch's
# generator by seed, epoch and batch, and nothing uses Python's `random`), the settings and the signature.
PARTS = ("model", "optimizer", "scheduler", "scaler", "ema", "lookahead", "progress")
Parts = dict[str, Any]  # the run's part under each name of `PARTS`, or `None`


# ### The shape of each entry
#
# A checkpoint whose digest matches is not damaged, but it may still have been edited (the digest is
# rewritten with it) or written by another version. Its entries are checked here, once, against what
# their writers (`checkpoint_state`, each part's `state_dict`) give them, so that `--resume`, `--eval` and
# `export_weights.py` refuse such a file in one line before any of it is used, instead of failing part
# way through (a `history` that is not a list fails only after the first new epoch, its run folder
# made). The settings (`config`) are checked like a command line's, by `launch.checked_settings`.


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_tensors(value: Any) -> bool:
    """A state dict: tensors by name."""
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _is_signature(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("model"), str)
        and _is_count(value.get("num_classes"))
        and isinstance(shapes := value.get("shapes"), dict)
        and all(isinstance(s, list) and all(_is_count(n) for n in s) for s in shapes.values())
    )


def _is_history(value: Any) -> bool:
    """One record per epoch, as `metrics.jsonl` holds them; the next epoch reads the last one's time."""
    scalars = (int, float, str, type(None))
    return isinstance(value, list) and all(
        isinstance(record, dict)
        and _is_number(record.get("train_time_s"))
        and all(isinstance(k, str) and isinstance(v, scalars) for k, v in record.items())
        for record in value
    )


def _is_rng(value: Any) -> bool:
    """PyTorch's CPU generator state, and the GPUs' when the run had them."""
    cuda = value.get("cuda") if isinstance(value, dict) else None
    return (
        isinstance(value, dict)
        and isinstance(value.get("torch"), torch.ByteTensor)
        and (cuda is None or (isinstance(cuda, list) and all(isinstance(t, torch.ByteTensor) for t in cuda)))
    )


# Each entry's test and what it must be, in words. `model`, `signature` and `position` are in every
# checkpoint; the others are tested when present (a run without the part saves `None` for it).
_ENTRY_SHAPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (_is_tensors, "a state dict (tensors by name)"),
    "ema": (
        lambda v: v is None or (isinstance(v, dict) and _is_tensors(v.get("model"))),
        "null or a weight average ({'model': a state dict, ...})",
    ),
    "lookahead": (
        lambda v: v is None or (isinstance(v, dict) and _is_tensors(v.get("slow"))),
        "null or Lookahead's {'slow': a state dict}",
    ),
    "signature": (_is_signature, "{'model': a name, 'num_classes': a count, 'shapes': {name: [sizes]}}"),
    "position": (
        lambda v: isinstance(v, dict) and all(_is_count(v.get(k)) for k in ("step", "epoch", "batch")),
        "{'step', 'epoch', 'batch': counts}",
    ),
    "epoch_sums": (_is_tensors, "tensors by name"),
    "history": (_is_history, "a list of epoch records (numbers and text by name, with 'train_time_s')"),
    "rng": (_is_rng, "{'torch': a byte tensor, 'cuda': a list of them or absent}"),
}


def malformed(state: dict[str, Any]) -> str | None:
    """What in a parsed checkpoint does not have the shape its writer gives it, in words, or `None`."""
    for entry, (fits, expected) in _ENTRY_SHAPES.items():
        if entry in state and not fits(state[entry]):
            return f"its '{entry}' entry is not {expected}"
    return None


def run_config(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint keeps: what the run is, not the hardware it ran on (`device.*`)."""
    return {k: v for k, v in settings.items() if not k.startswith("device.")}


def checkpoint_state(parts: Parts, settings: dict[str, Any], signature: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to continue exactly here, from the run's `PARTS`: tensors, numbers and text."""
    states = {name: None if part is None else part.state_dict() for name, part in parts.items()}
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    # The progress's entries are `position`, `epoch_sums`, `history` and `timing`.
    progress = states.pop("progress")
    return {**states, **progress, "rng": rng, "config": run_config(settings), "signature": signature}


def restore_checkpoint(
    path: Path, state: dict[str, Any], parts: Parts, signature: dict[str, Any], batches_per_epoch: int
) -> None:
    """
    Load a [`load_checkpoint`](#load_checkpoint)ed `state` into the run's `PARTS`, or refuse it in one
    line. A checkpoint taken later in an epoch than this run's `batches_per_epoch` cannot continue exactly.
    """
    check_network(path, state, signature)
    if (batch := saved_position(state)["batch"]) > batches_per_epoch:
        raise CheckpointError(
            f"{path} stopped at batch {batch} of an epoch that now has {batches_per_epoch} batches; "
            f"resume with the same data and batch size"
        )
    for part, setting in (("ema", "ema_decay"), ("lookahead", "lookahead_every")):
        if parts[part] is not None and state.get(part) is None:
            raise CheckpointError(
                f"{path} has no {part} weights, though its settings set {setting}; it was edited or written "
                f"by another version of this trainer: use another checkpoint, or start a new run"
            )
    try:
        for name, part in parts.items():
            # An fp16 run keeps a fresh loss scale when the checkpoint has none; progress reads the top level.
            if part is not None and (name != "scaler" or state.get("scaler")):
                part.load_state_dict(state if name == "progress" else state[name])
        optimizer = parts["optimizer"]
        if isinstance(optimizer, torch.optim.Optimizer) and (misfit := optimizer_misfit(optimizer)):
            raise ValueError(misfit)
        torch.set_rng_state(state["rng"]["torch"])
        cuda = state["rng"].get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path} does not fit this run ({str(e).splitlines()[0][:160]})") from None


def optimizer_misfit(optimizer: torch.optim.Optimizer) -> str | None:
    """
    What in a just-loaded optimizer state does not fit its parameters, or `None`. PyTorch loads a momentum
    buffer of any shape without a word, and the run would then fail at its first step with a traceback,
    after its folder exists; a buffer must have its parameter's shape.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    shape = list(value.shape)
                    return f"its optimizer's {key} of shape {shape} fits no parameter of this network"
    return None


def evaluation_weights(state: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The weights a run reported its numbers with: the averaged ones when it kept an average."""
    if state.get("ema"):
        return state["ema"]["model"], "averaged (ema)"
    return state["model"], "trained"


def saved_settings(state: dict[str, Any]) -> dict[str, Any]:
    """The run's settings as the file holds them, unchecked: `launch.checked_settings` checks them."""
    return dict(state["config"])


def saved_position(state: dict[str, Any]) -> dict[str, int]:
    """Where in the schedule the checkpoint was taken: `step`, `epoch` and `batch`."""
    return dict(state["position"])


def evaluation_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The saved settings that rebuild the network and data for `--eval`: the whole test set by default."""
    return {k: v for k, v in settings.items() if k not in ("test_subset", "train_subset")}
