"""
# Networks from files

Three kinds of file hold a trained network, and [`load_checkpoint`](#load_checkpoint) builds the right
network from any of them, by the name and options each records:

* a **trainer checkpoint** (`logs/cifar10/<uuid>/checkpoints/last.pt`, written by
  `experiments/checkpoint.py`), whose saved settings name the network (`model`) and its options;
* a **weight file** (`.safetensors`, as `resnet/weights/` ships and `experiments/export_weights.py`
  writes), whose header metadata names the network and its options;
* a **folder in the Hugging Face hub's layout**, `config.json` + `model.safetensors`, which
  [`save_pretrained`](#save_pretrained) writes and [`from_pretrained`](#from_pretrained) reads.

Every one of these files comes from outside, so none of them chooses what gets constructed beyond a
registered network and its declared options (each checked for its type,
[`registry.check_untrusted_options`](registry.html#check_untrusted_options)). Each file is read once,
only if it is a regular file of at most `MAX_FILE_BYTES`, and those bytes are parsed; a trainer
checkpoint, a pickle in a zip archive, is parsed with `weights_only=True`, which builds tensors and
plain containers only, and only once its archive is known to hold nothing compressed
([`load_weights_only`](#load_weights_only)). The network is first built on the `meta` device, which
allocates nothing, and compared with the file's tensors, so a file that asks for a huge network it
does not hold is refused before any memory is spent on it.

A trainer checkpoint also records a SHA-256 [`checkpoint_digest`](#checkpoint_digest) of everything
else it holds, computed when it is saved. Storage damage (a flipped bit, a bad sector, a copy cut
short inside a tensor) leaves a file that still parses, and whose wrong weights would otherwise load
silently; its digest no longer matches, so it is refused, naming an intact older checkpoint beside it
if there is one. The digest is taken over the tensors and values just parsed, the very ones then used.
It detects damage, not a deliberate edit: whoever can rewrite the file can rewrite its digest too.
"""

import hashlib
import io
import json
import pickle
import re
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as serialize_safetensors
from torch import nn

from resnet import pretrained as weight_files
from resnet import registry
from resnet.files import atomic_write, read_regular_file
from resnet.registry import Model

# `experiments/checkpoint.py`'s FORMAT: the library reads the trainer's schema without importing the
# trainer (tests/test_loading.py checks the two agree).
TRAINER_FORMAT = "resnet-annotated/cifar10-checkpoint"
# The entry holding a trainer checkpoint's digest, and the first checkpoint version that has one; older
# checkpoints load unverified (nothing in them can tell damage apart from the weights a run learned).
TRAINER_DIGEST = "digest"
TRAINER_DIGEST_SINCE = 3
# The `format` in a weight file's metadata and in `config.json`.
WEIGHTS_FORMAT = "resnet-annotated/weights"
# A checkpoint saves the settings its run was given; the network's come from these defaults otherwise
# (`experiments/cifar10.py`'s `Configs`; tests/test_loading.py checks the two agree).
TRAINER_DEFAULTS: dict[str, Any] = {
    "num_classes": 10,
    "shortcut": "preset",
    "n_blocks": [3, 3, 3],
    "n_channels": [16, 32, 64],
    "bottlenecks": None,
    "zero_init_residual": False,
}
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CONFIG_VERSION = 1
_MAX_CONFIG_BYTES = 1 << 16
# The largest weight file or checkpoint read whole, 4 GiB: a checkpoint of the largest preset, ResNet-152
# (its weights, their momentum, a weight average and Lookahead's slow weights), is about a quarter of it.
# A larger file, or one that never ends (a link to `/dev/zero`), is refused before a byte of it is read.
MAX_FILE_BYTES = 1 << 32


class LoadError(ValueError):
    """A file that cannot become a network; its message is one line naming the file and the fix."""


def network_config(model: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """The name and options a network was built with by `create_model` or a public builder, if it was."""
    config = model.__dict__.get("network_config")
    if not isinstance(config, dict):
        return None
    return str(config["network"]), dict(config["options"])


# ## Writing


def weights_bytes(state: dict[str, torch.Tensor], network: str, options: dict[str, Any]) -> bytes:
    """
    A safetensors file of `state` whose metadata names `network` and its `options`, so that
    [`load_checkpoint`](#load_checkpoint) can build it again. Contiguous CPU copies: the file must not
    depend on the layout the network ran in (`channels_last`, a GPU).
    """
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    metadata = {"format": WEIGHTS_FORMAT, "network": network, "options": json.dumps(options, sort_keys=True)}
    return serialize_safetensors(tensors, metadata)


def _write_new(path: Path, data: bytes, overwrite: bool) -> None:
    """Write `data` to `path` whole or not at all; an existing file only when `overwrite`."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it, or choose another folder")
    atomic_write(path, lambda f: f.write(data))


def _saveable_config(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """The name and options to record for `model`, checked to rebuild exactly its tensors."""
    config = network_config(model)
    if config is None:
        raise ValueError(
            "this network was not built by name, so its name is unknown; build it with "
            "resnet.create_model(name, ...) or a resnet.<name>() builder"
        )
    name, options = config
    # Through JSON and back, as a reader will see them (tuples become lists).
    options = json.loads(json.dumps(options))
    if _tensor_shapes(_on_meta(name, options)) != _tensor_shapes(model):
        # A head replaced after building (another number of classes) is recorded as built.
        head = getattr(model, "head", None)
        options["num_classes"] = int(head.out_features) if isinstance(head, nn.Linear) else 0
        if _tensor_shapes(_on_meta(name, options)) != _tensor_shapes(model):
            raise ValueError(
                f"this {name}'s tensors no longer have the shapes {name} is built with; save its "
                f"state_dict() yourself"
            )
    registry.check_untrusted_options(name, options, "save_pretrained")
    return name, options


def save_pretrained(model: nn.Module, directory: str | Path, *, overwrite: bool = False) -> Path:
    """
    Write `model` to `directory` in the Hugging Face hub's layout: `config.json` (which network, with
    which options) and `model.safetensors` (its tensors). The folder loads back with
    [`from_pretrained`](#from_pretrained), and once pushed to the hub, with the repository's id. Files
    already there are kept unless `overwrite=True`. Returns the folder.
    """
    name, options = _saveable_config(model)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    for file in (CONFIG_NAME, WEIGHTS_NAME):
        if (folder / file).exists() and not overwrite:
            raise FileExistsError(
                f"{folder / file} exists; pass overwrite=True to replace it, or choose another folder"
            )
    config = {"format": WEIGHTS_FORMAT, "version": CONFIG_VERSION, "network": name, "options": options}
    _write_new(folder / WEIGHTS_NAME, weights_bytes(model.state_dict(), name, options), overwrite)
    _write_new(folder / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode(), overwrite)
    return folder


# ## Reading


def _on_meta(name: str, options: dict[str, Any]) -> nn.Module:
    # The `meta` device gives every tensor a shape and no memory.
    with torch.device("meta"):
        return registry.tutorial_builder(name)(**options)


def _tensor_shapes(source: nn.Module | dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    state = source.state_dict() if isinstance(source, nn.Module) else source
    return {k: tuple(v.shape) for k, v in state.items()}


def _checked_options(name: str, options: Any, source: str) -> dict[str, Any]:
    """A file's network `name` and `options`, checked against the registry before anything uses them."""
    try:
        registry.model_builder(name)
    except ValueError as e:
        raise LoadError(f"{source}: {e}") from None
    try:
        return registry.check_untrusted_options(name, options, source)
    except ValueError as e:
        raise LoadError(str(e)) from None


def _build_checked(name: str, options: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> Model:
    """
    The registered network `name`, built only once its shapes are known to be the file's tensors'
    (`options` already [checked](#_checked_options)).
    """
    if too_many_blocks(options.get("n_blocks"), len(state)):
        raise LoadError(f"{source}: n_blocks={options['n_blocks']} asks for more blocks than the file holds")
    try:
        skeleton = _on_meta(name, options)
    except (ValueError, TypeError) as e:
        raise LoadError(f"{source}: its options do not build {name} ({e})") from None
    if difference := registry.first_difference(_tensor_shapes(skeleton), _tensor_shapes(state)):
        raise LoadError(
            f"{source}: its tensors are not those of {name} with its recorded options ({difference})"
        )
    model = registry.build_named(name, options, None, f"{name}()")
    model.load_state_dict(state)
    return model


def _read_bytes(path: Path, what: str) -> bytes:
    if path.is_dir():
        raise LoadError(
            f"{path} is a folder without {CONFIG_NAME}; pass a {what} or a save_pretrained folder"
        )
    try:
        return read_regular_file(path, MAX_FILE_BYTES, f"a {what}")
    except OSError as e:
        raise LoadError(f"cannot read {path} ({e.strerror or e}); check the path") from None
    except ValueError as e:
        raise LoadError(f"{path} {e}; check the path") from None


def _parse(raw: bytes, source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        return weight_files.parse_weights(raw, source)
    except weight_files.WeightsError as e:
        raise LoadError(str(e)) from None


def _from_weights_file(raw: bytes, source: str) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    state, metadata = _parse(raw, source)
    if metadata.get("format") != WEIGHTS_FORMAT or "network" not in metadata:
        raise LoadError(
            f"{source} is a safetensors file without this library's metadata (the network's name); "
            f"load it into its network with model.load_state_dict(safetensors.torch.load_file(path))"
        )
    try:
        options = json.loads(metadata.get("options", "{}"))
    except json.JSONDecodeError:
        raise LoadError(f"{source}: its metadata's options are not JSON") from None
    except RecursionError:
        # Python's JSON parser recurses once per `[` or `{`; a network's options nest two levels at most.
        raise LoadError(
            f"{source}: its metadata's options nest too deeply to be a network's options"
        ) from None
    return metadata["network"], options, state


def trainer_options(settings: dict[str, Any], source: str) -> tuple[str, dict[str, Any]]:
    """
    The network a trainer run built, from its saved settings: the same call `experiments/models.py`'s
    `build_model` makes (`shortcut="preset"` is the network's own choice; the stages reach `custom` only).
    """
    name = settings.get("model", "resnet20")
    if not isinstance(name, str):
        raise LoadError(f"{source} names no network in its settings ('model' is {name!r})")
    settings = {**TRAINER_DEFAULTS, **settings}
    options: dict[str, Any] = {
        "num_classes": settings["num_classes"],
        "zero_init_residual": settings["zero_init_residual"],
    }
    if settings["shortcut"] != "preset":
        options["shortcut"] = settings["shortcut"]
    if name == "custom":
        options.update(
            n_blocks=settings["n_blocks"],
            n_channels=settings["n_channels"],
            bottlenecks=settings["bottlenecks"] if settings["bottlenecks"] else None,
        )
    return name, options


# ## Checkpoints that know they are damaged
#
# The digest is a hash tree over the parsed checkpoint: a tensor is hashed with its dtype and shape, a
# dict as the sorted hashes of its (key, value) pairs, a list in order. So the same numbers give the
# same digest whatever device, memory layout or dict order they had when saved, and no byte of one entry
# can pass for another's. Hand-written rather than a hash of the file: `torch.save`'s zip layout is not
# ours to pin down, and hashing what was parsed is what makes the check cover what is then used.


def checkpoint_digest(state: dict[str, Any]) -> str:
    """The SHA-256 (hex) of every entry of a trainer checkpoint's `state` except the digest itself."""
    return _digest({k: v for k, v in state.items() if k != TRAINER_DIGEST}).hex()


def _digest(value: Any) -> bytes:
    h = hashlib.sha256()
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu").contiguous()
        h.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}\0".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(b"dict\0")
        for pair in sorted(_digest(k) + _digest(v) for k, v in value.items()):
            h.update(pair)
    elif isinstance(value, (list, tuple)):
        h.update(b"list\0")
        for item in value:
            h.update(_digest(item))
    elif isinstance(value, float):
        h.update(f"float\0{value.hex()}".encode())
    elif value is None or isinstance(value, (bool, int, str, bytes, torch.dtype, torch.device)):
        h.update(f"{type(value).__name__}\0{value!r}".encode())
    else:
        raise TypeError(
            f"a checkpoint holds tensors, numbers, strings and containers, not {type(value).__name__}"
        )
    return h.digest()


def checkpoint_damage(state: dict[str, Any]) -> str | None:
    """
    What is wrong with a parsed trainer checkpoint's digest, or `None` when it matches (or when the
    checkpoint is older than digests and cannot be checked).
    """
    recorded = state.get(TRAINER_DIGEST)
    version = state.get("version")
    if recorded is None:
        if isinstance(version, int) and version >= TRAINER_DIGEST_SINCE:
            return f"it has no {TRAINER_DIGEST!r} entry, which every version-{version} checkpoint has"
        return None
    try:
        actual = checkpoint_digest(state)
    except (TypeError, ValueError, RuntimeError) as e:
        # A value of a kind our checkpoints never hold (a sparse or quantized tensor, say), or containers
        # nested deeper than Python recurses (`RecursionError` is a `RuntimeError`).
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        return f"it holds something no checkpoint of this trainer holds ({reason})"
    if recorded != actual:
        return "its contents do not match the SHA-256 digest recorded when it was saved"
    return None


def intact_alternative(path: Path, is_intact: Callable[[Path], bool]) -> str:
    """
    What to use instead of the damaged checkpoint `path`: the newest other `.pt` file beside it for
    which `is_intact(candidate)` holds, or else the advice to resume from an earlier run or retrain.
    """
    folder = path.parent
    try:
        others = [p for p in folder.glob("*.pt") if p.is_file() and not p.name.startswith(".") and p != path]
        others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        others = []
    for candidate in others:
        if is_intact(candidate):
            return f"use {candidate}, the newest intact checkpoint beside it"
    return f"no other intact checkpoint is in {folder}: resume from an earlier run's checkpoint, or retrain"


# ## Reading what `torch.save` wrote
#
# A trainer checkpoint is a zip archive: a pickle and one entry per tensor's storage. `torch.save` stores
# every entry as it is, but the zip format also allows compressed entries, which PyTorch's reader inflates
# before anything is checked: a 100 KB file can hold 100 MB of zeros. So before `torch.load` sees the
# bytes, Python's `zipfile` reads the archive's directory, and every entry must be stored uncompressed, as
# `torch.save` writes it, and all of them together must fit in the file.
#
# That check only means something if PyTorch's reader follows the same directory. PyTorch's reader
# looks where the records at the archive's end say the directory starts; `zipfile` looks right before
# those records, which is where it lies in an archive appended to other bytes. Where the two places
# differ, each reader could follow a directory of its own. So the end records must be those `torch.save`
# writes (APPNOTE.TXT 4.3.14-4.3.16: a zip64 end record, its locator, then the end record, with no
# comment), and the directory must end where they begin. Anything but a zip archive is refused too:
# `torch.load` would read it in the format of PyTorch before 1.6, which the trainer never wrote.

_ZIP_START = b"PK\x03\x04"
_END = struct.Struct("<4s4H2LH")  # signature, 4 disk and entry counts, directory size and offset, comment
_END64_LOCATOR = struct.Struct("<4sLQL")  # signature, disk, offset of the zip64 end record, disks
_END64 = struct.Struct("<4sQ2H2L4Q")  # signature, size, 2 versions, 2 disks, 2 counts, directory size, offset


def _archive_problem(raw: bytes) -> str | None:
    """Why `raw` is not a zip archive as `torch.save` writes one, in words, or `None` when it is."""
    if not raw.startswith(_ZIP_START) or len(raw) < _END.size:
        return "it is not the zip archive torch.save writes"
    end = len(raw) - _END.size
    signature, *_, size, offset, comment = _END.unpack_from(raw, end)
    if signature != b"PK\x05\x06" or comment:
        return "its zip archive does not end as torch.save ends one"
    locator = end - _END64_LOCATOR.size
    if locator >= _END64.size and raw.startswith(b"PK\x06\x07", locator):
        _, _, end64, _ = _END64_LOCATOR.unpack_from(raw, locator)
        end = locator - _END64.size
        signature, *_, size, offset = _END64.unpack_from(raw, end)
        if signature != b"PK\x06\x06" or end64 != end:
            return "its zip64 end record is not where its locator says"
    if offset + size != end:
        return "its zip directory is not where the archive's end says"
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            entries = archive.infolist()
    except Exception as e:  # noqa: BLE001 - zipfile raises several error types for bad bytes
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        return f"its zip directory cannot be read ({reason})"
    if any(e.compress_type != zipfile.ZIP_STORED or e.compress_size != e.file_size for e in entries):
        return "it has compressed entries, which torch.save never writes"
    if sum(e.file_size for e in entries) > len(raw):
        return "its entries claim more bytes than the file holds"
    return None


def load_weights_only(raw: bytes) -> Any:
    """
    What `torch.save` wrote into `raw`, loaded with `weights_only=True`, its tensors on the CPU, once its
    archive is known to be as `torch.save` writes it. Raises `pickle.UnpicklingError` for a pickle that
    would construct objects or call code, and another exception (a `ValueError` for an archive
    `torch.save` did not write) for anything else that is not such a file: each caller words the two.
    """
    if problem := _archive_problem(raw):
        raise ValueError(problem)
    loaded = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    _check_within(loaded, len(raw))
    return loaded


def _check_within(loaded: Any, size: int) -> None:
    """
    Refuse what `torch.load` built from `size` bytes if it is more than those bytes can hold, before
    anything reads it whole (the digest, a copy to the device). A pickle may give a tensor a zero
    stride, so that one stored element stands for any number of them, or fetch one list again and
    again into lists of lists, so that a small file reaches an object more often than it has bytes:
    either would fill memory or keep us hashing for hours, and `torch.save` writes neither.
    """
    pending, visits = [loaded], 0
    while pending:
        item = pending.pop()
        visits += 1
        if visits > size:
            raise ValueError("it reaches its values more often than it has bytes, as torch.save never does")
        # (A sparse tensor has no one storage to measure; the digest refuses it without reading it whole.)
        if isinstance(item, torch.Tensor) and item.layout == torch.strided:
            if item.numel() * item.element_size() > item.untyped_storage().nbytes():
                raise ValueError(
                    f"it holds a tensor of shape {list(item.shape)} with more elements than its storage, "
                    "which torch.save never writes"
                )
        elif isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            pending += list(item)


def too_many_blocks(n_blocks: Any, tensors: int) -> bool:
    """
    Whether `n_blocks` (a file's option) asks for more blocks than a file of `tensors` tensors can hold:
    each block holds at least two, so such a file cannot be that network, and even building it on the
    meta device would loop over every block asked for first.
    """
    counts = n_blocks if isinstance(n_blocks, list) else []
    return sum(n for n in counts if type(n) is int and n > 0) > tensors


def _trainer_file_intact(path: Path) -> bool:
    try:
        state = load_weights_only(read_regular_file(path, MAX_FILE_BYTES, "a checkpoint"))
    except Exception:  # noqa: BLE001 - a candidate that cannot be read is simply not the alternative
        return False
    return (
        isinstance(state, dict) and state.get("format") == TRAINER_FORMAT and checkpoint_damage(state) is None
    )


def _from_trainer_checkpoint(raw: bytes, source: str) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    try:
        saved = load_weights_only(raw)
    except pickle.UnpicklingError:
        # `weights_only=True` refuses pickles that would construct objects or call functions.
        raise LoadError(
            f"{source} holds objects or code that a weights-only load refuses to run; it is not a "
            f"checkpoint of this library's trainer"
        ) from None
    except Exception as e:  # noqa: BLE001 - any failure to parse means the bytes are not a checkpoint
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise LoadError(
            f"{source} is neither a safetensors weight file nor a readable trainer checkpoint ({reason})"
        ) from None
    if not isinstance(saved, dict) or saved.get("format") != TRAINER_FORMAT:
        raise LoadError(
            f"{source} is not a checkpoint of experiments/cifar10.py and names no network; load a "
            f"bare state dict with model.load_state_dict(torch.load(path, weights_only=True))"
        )
    if damage := checkpoint_damage(saved):
        alternative = intact_alternative(Path(source), _trainer_file_intact)
        raise LoadError(f"{source} is damaged: {damage}; {alternative}")
    settings = saved.get("config")
    if not isinstance(settings, dict):
        raise LoadError(f"{source} is incomplete: it has no saved settings")
    name, options = trainer_options(settings, source)
    # A run with `ema_decay` reported (and evaluated) its averaged weights, so those are the network.
    ema = saved.get("ema")
    state = ema["model"] if isinstance(ema, dict) and ema.get("model") else saved.get("model")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LoadError(f"{source} is incomplete: it holds no network weights")
    return name, options, state


def _is_safetensors(raw: bytes) -> bool:
    # A safetensors file opens with its header's length (8 bytes) and the header, a JSON object; a
    # `torch.save` archive with "PK". Told apart by these bytes alone, a header that is cut short or
    # nests a million deep is reported as a broken safetensors header, not parsed as a pickle.
    return raw[8:9] == b"{"


def _read_network_file(path: Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    raw = _read_bytes(path, "weight file or trainer checkpoint")
    if _is_safetensors(raw):
        return _from_weights_file(raw, str(path))
    return _from_trainer_checkpoint(raw, str(path))


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> Model:
    """
    The network a trainer checkpoint, weight file or `save_pretrained` folder holds, built from the
    network name and options it records and strictly loaded.

    With `model`, the weights are loaded into it instead, and returned. It must be the network the file
    holds: another one is refused in one line naming both. With only another number of classes, the
    trunk is loaded and the head is left as it is, with a warning.
    """
    path = Path(path)
    if path.is_dir() and (path / CONFIG_NAME).exists():
        name, options, state = _read_folder(path)
    else:
        name, options, state = _read_network_file(path)
    options = _checked_options(name, options, str(path))
    if model is None:
        return _build_checked(name, options, state, str(path))
    built = network_config(model)
    if built is not None and built[0] != name:
        head = state.get("head.weight")
        classes = options.get("num_classes", "?" if head is None else head.shape[0])
        raise LoadError(
            f"{path} holds {name} ({classes} classes), but the network given is "
            f"{built[0]}; let resnet.load_checkpoint(path) build it, or pass a {name}"
        )
    what = built[0] if built is not None else f"the network given{_shaped_like(model)}"
    try:
        registry.load_weights_into(model, state, f"the weights of {name} in {path}", what)
    except ValueError as e:
        raise LoadError(str(e)) from None
    return model  # type: ignore[return-value]


def _shaped_like(model: nn.Module) -> str:
    """` (shaped like resnet56)` for a network built without a name, if a registered one matches it."""
    shapes = _tensor_shapes(model)
    head = getattr(model, "head", None)
    classes = {"num_classes": head.out_features} if isinstance(head, nn.Linear) else {}
    for name in registry.list_models():
        if name != "custom" and _tensor_shapes(_on_meta(name, classes)) == shapes:
            return f" (shaped like {name})"
    return ""


def _read_folder(folder: Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    config_path = folder / CONFIG_NAME
    try:
        config = weight_files.read_small_json(config_path, _MAX_CONFIG_BYTES, "a config.json")
    except ValueError as e:
        raise LoadError(f"{config_path} {e}") from None
    expected = {"format", "version", "network", "options"}
    if not isinstance(config, dict) or set(config) != expected:
        keys = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise LoadError(f"{config_path} must hold exactly the keys {sorted(expected)}, got {keys}")
    if config["format"] != WEIGHTS_FORMAT or config["version"] != CONFIG_VERSION:
        raise LoadError(
            f"{config_path} is format {config['format']!r} version {config['version']!r}; this library "
            f"reads {WEIGHTS_FORMAT!r} version {CONFIG_VERSION}"
        )
    name, options = config["network"], config["options"]
    if not isinstance(name, str):
        raise LoadError(f"{config_path}: 'network' must be a name from resnet.list_models(), got {name!r}")
    try:
        registry.model_builder(name)
    except ValueError as e:
        raise LoadError(f"{config_path}: {e}") from None
    raw = _read_bytes(folder / WEIGHTS_NAME, WEIGHTS_NAME)
    state, metadata = _parse(raw, str(folder / WEIGHTS_NAME))
    if metadata.get("network", name) != name:
        raise LoadError(
            f"{folder / WEIGHTS_NAME} holds {metadata['network']}, but {config_path} says {name}; "
            f"save the folder again"
        )
    return name, options, state


def from_pretrained(directory_or_repo: str | Path) -> Model:
    """
    The network in a [`save_pretrained`](#save_pretrained) folder. A name that is not a local folder
    but a Hugging Face hub id (`"owner/name"`) is downloaded with `huggingface_hub`, if it is installed;
    nothing else here uses the network.
    """
    folder = Path(directory_or_repo)
    if not folder.is_dir():
        folder = _download(str(directory_or_repo))
    return load_checkpoint(folder)


def _download(repo_id: str) -> Path:
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id) or repo_id.startswith((".", "/")):
        raise LoadError(f"{repo_id} is not a folder (nor a Hugging Face hub id, 'owner/name'); check it")
    try:
        from huggingface_hub import snapshot_download  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise LoadError(
            f"{repo_id} is not a folder; to download it from the Hugging Face hub, pip install "
            f"huggingface_hub (or download the folder yourself)"
        ) from None
    return Path(snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
