"""
# Trained weights and the input they expect

A trained network is only useful with the input it was trained on. The trainer feeds CIFAR-10 images
as float tensors `[batch, 3, 32, 32]`, each channel scaled to $[0, 1]$ and then standardised with the
training set's per-channel mean and standard deviation. Those two constants live here, in the
installed package, so that the trainer and any code that classifies images with its weights read them
from one place: [`normalize_cifar10`](#normalize_cifar10) and [`ImageTransform`](#ImageTransform) turn
images (PIL, `uint8` arrays or tensors, one or a batch) into exactly what the network saw in training.

## The weights that ship with the package

Each trained network lies in `resnet/weights/` as two files named after it and its data set:

* `<network>_<dataset>.safetensors`: the tensors, in the format the ecosystem exchanges. Unlike a
  pickle, a safetensors file holds a JSON header and raw numbers, so reading one can never run code.
* `<network>_<dataset>.json`: its *record* ([`WeightRecord`](#WeightRecord)): where it came from (recipe,
  seed, command, machine), its single-view and test-time-augmented accuracy, its size and SHA-256.

The weights are found by those names alone: a new network's pair of files appears in
`resnet.list_models(pretrained=True)` with no code change, any other file in the folder is ignored, and
a record that cannot be read is refused only when its own weights are asked for.

**What the hash protects against.** [`read_weights`](#read_weights) reads the file once, checks the
SHA-256 of those bytes against the record and parses those same bytes, so a damaged file (a truncated
download, a flipped bit) is refused, and a file swapped on disk after the check cannot be what is
loaded. The record lies beside the file, so someone who can rewrite both can make any weights pass:
the hash is a check against damage, not a signature. What stops such a file from doing harm beyond
wrong predictions is the format: safetensors carries no code.
"""

import hashlib
import json
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as parse_safetensors

from resnet.files import read_regular_file

# Per-channel statistics of the 50,000 CIFAR-10 training images, on a 0..1 scale.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
# The label order of the official `batches.meta`: label `i` is `CIFAR10_CLASSES[i]`.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class WeightsError(ValueError):
    """Weights that cannot be used: a missing, damaged or malformed file or record. One line, with the fix."""


# ## The input format


def _as_uint8_images(images: Any) -> torch.Tensor | list[torch.Tensor]:
    """
    Any supported image input as `uint8` channels-last tensors: `[height, width, 3]` for one image,
    `[batch, height, width, 3]` for a batch, and a list of single images for a list (whose images may
    differ in size). Errors name the shape the caller passed.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("expected at least one image, got an empty list")
        converted = [_as_uint8_images(image) for image in images]
        singles = [image for image in converted if isinstance(image, torch.Tensor) and image.dim() == 3]
        if len(singles) != len(converted):
            raise ValueError("a list of images must hold single images [height, width, 3], not batches")
        return singles
    try:
        from PIL import Image
    except ImportError:  # Pillow comes with torchvision; without it, no input can be a PIL image.
        Image = None  # type: ignore[assignment]
    if Image is not None and isinstance(images, Image.Image):
        # CIFAR-10 is RGB: a grey, palette or RGBA image is given three colour channels (alpha dropped).
        rgb = images if images.mode == "RGB" else images.convert("RGB")
        return torch.from_numpy(np.array(rgb, dtype=np.uint8))
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"expected a PIL image, or uint8 images as a numpy array or tensor, or a list of them; "
            f"got {type(images).__name__}"
        )
    shape = list(images.shape)
    if images.dtype != torch.uint8:
        raise TypeError(
            f"expected uint8 images with values 0..255, got dtype {images.dtype} with shape {shape}; "
            f"images scaled to 0..1 become uint8 with (x * 255).round().to(torch.uint8)"
        )
    if images.dim() not in (3, 4) or images.shape[-1] != 3:
        hint = (
            "; it looks channels-first: permute it to channels-last (x.permute(1, 2, 0), or "
            "x.permute(0, 2, 3, 1) for a batch)"
            if images.dim() in (3, 4) and images.shape[-3] == 3
            else ""
        )
        raise ValueError(
            f"expected uint8 images [height, width, 3] or [batch, height, width, 3] (the layout of a PNG "
            f"or of CIFAR-10's arrays), got shape {shape}{hint}"
        )
    return images


def _normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """`uint8` `[batch, height, width, 3]` to the float `[batch, 3, height, width]` the trainer feeds."""
    # The trainer's arithmetic (`experiments/loader.py`), operation for operation, so the two agree to
    # the last bit: one multiply by 1 / (255 std) and one subtraction of mean / std.
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return images.permute(0, 3, 1, 2).float() * (1.0 / (255.0 * std_t)) - mean_t / std_t


def _stack(images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images if images.dim() == 4 else images.unsqueeze(0)
    sizes = {tuple(image.shape) for image in images}
    if len(sizes) > 1:
        raise ValueError(
            f"images of different sizes ({', '.join(str(list(s)) for s in sorted(sizes))}) cannot form "
            f"one batch; use the weights' transforms(), which resizes them"
        )
    return torch.stack(images)


def normalize_cifar10(images: Any) -> torch.Tensor:
    """
    `uint8` images, `[height, width, 3]` or `[batch, height, width, 3]` (the layout of a PNG or of
    CIFAR-10's `uint8` arrays), as a tensor, a numpy array, a PIL image or a list of them, to the float
    batch `[batch, 3, height, width]` the trainer feeds. The size is left as it is; the weights'
    [`transforms()`](#ImageTransform) also resize.
    """
    return _normalize(_stack(_as_uint8_images(images)), CIFAR10_MEAN, CIFAR10_STD)


@dataclass(frozen=True)
class ImageTransform:
    """
    What trained weights expect, as a callable: `transform(images)` takes what
    [`normalize_cifar10`](#normalize_cifar10) takes and returns the normalised float batch
    `[batch, 3, size, size]`. An image of another size is first resized so its shorter side is `size`
    (bilinear, antialiased, rounded back to `uint8`) and centre-cropped to a square, the shape the
    network was trained on. Images that already have that size are not touched, so CIFAR-10's own
    images come out exactly as the trainer feeds them.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: int

    def __call__(self, images: Any) -> torch.Tensor:
        converted = _as_uint8_images(images)
        if isinstance(converted, torch.Tensor):
            batch = self._resize(converted if converted.dim() == 4 else converted.unsqueeze(0))
        else:
            batch = torch.cat([self._resize(image.unsqueeze(0)) for image in converted])
        return _normalize(batch, self.mean, self.std)

    def _resize(self, batch: torch.Tensor) -> torch.Tensor:
        height, width = batch.shape[1], batch.shape[2]
        if (height, width) == (self.size, self.size):
            return batch
        scale = self.size / min(height, width)
        new = (max(self.size, round(height * scale)), max(self.size, round(width * scale)))
        resized = F.interpolate(
            batch.permute(0, 3, 1, 2).float(), size=new, mode="bilinear", antialias=True, align_corners=False
        )
        top, left = (new[0] - self.size) // 2, (new[1] - self.size) // 2
        cropped = resized[:, :, top : top + self.size, left : left + self.size]
        return cropped.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@dataclass(frozen=True)
class DatasetFormat:
    """A data set weights can be trained on: its class names and the input its networks expect."""

    name: str
    classes: tuple[str, ...]
    transform: ImageTransform


# The data sets trained weights may name. A record naming another is refused: the record cannot choose
# the preprocessing, only point at one that is known here.
DATASETS: dict[str, DatasetFormat] = {
    "cifar10": DatasetFormat("cifar10", CIFAR10_CLASSES, ImageTransform(CIFAR10_MEAN, CIFAR10_STD, 32)),
}


# ## The records


@dataclass(frozen=True)
class WeightRecord:
    """
    The JSON record beside a weight file. Every field is required except `notes`, and no other is
    allowed, so a misspelt field is an error rather than a silently missing number.

    * `network`, `dataset`: the names in the file names, `<network>_<dataset>.json`
    * `file`: `<network>_<dataset>.safetensors`, the weights
    * `file_size`, `sha256`: the file's length in bytes and the SHA-256 of its bytes
    * `test_accuracy_single_view`: accuracy on the 10,000 test images, one view of each image as the
      paper evaluates (§4.2), between 0 and 1
    * `test_accuracy_tta`, `tta_views`: the accuracy with test-time augmentation and which views it
      averages, when the recipe evaluates that way; both `null` otherwise
    * `recipe`, `seed`, `command`, `machine`: how and where the weights were trained
    """

    network: str
    dataset: str
    file: str
    file_size: int
    sha256: str
    test_accuracy_single_view: float
    test_accuracy_tta: float | None
    tta_views: str | None
    recipe: str
    seed: int
    command: str
    machine: str
    notes: str = ""

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


# `<network>_<dataset>.json`: names are lower-case letters and digits, as every registered network's is.
_RECORD_NAME = re.compile(r"^([a-z][a-z0-9]*)_([a-z][a-z0-9]*)\.json$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A record is a few hundred bytes; a huge "record" is not one, and is not read into memory.
_MAX_RECORD_BYTES = 1 << 16


def shipped_weights(known_networks: Sequence[str]) -> dict[str, list[str]]:
    """
    The data sets each network has weights for, from the record files' names alone (nothing is read),
    networks in the order of `known_networks`. A file whose name is not `<network>_<dataset>.json`
    for a known network and data set is not a record and is ignored.
    """
    found: dict[str, list[str]] = {}
    names = sorted(p.name for p in WEIGHTS_DIR.glob("*.json")) if WEIGHTS_DIR.is_dir() else []
    for name in names:
        match = _RECORD_NAME.match(name)
        if match and match.group(1) in known_networks and match.group(2) in DATASETS:
            found.setdefault(match.group(1), []).append(match.group(2))
    return {network: found[network] for network in known_networks if network in found}


def read_small_json(path: Path, max_bytes: int, what: str) -> Any:
    """
    The JSON value in `path`, read once and never more than `max_bytes` (an untrusted file cannot make
    us read a huge one). A problem raises `ValueError` in words that follow the file's name.
    """
    try:
        raw = read_regular_file(path, max_bytes, what)
    except OSError as e:
        raise ValueError(f"cannot be read ({e.strerror or e})") from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"is not valid JSON ({_first_line(e)})") from None


def read_record(network: str, dataset: str, folder: Path | None = None) -> WeightRecord:
    """
    The record of `network`'s `dataset` weights in `folder` (default `WEIGHTS_DIR`), checked field by
    field; anything wrong is one line.
    """
    path = (WEIGHTS_DIR if folder is None else folder) / f"{network}_{dataset}.json"

    def refuse(problem: str) -> WeightsError:
        return WeightsError(f"{path}: {problem}; reinstall the package (or re-export the weights)")

    try:
        data = read_small_json(path, _MAX_RECORD_BYTES, "a weights record")
    except ValueError as e:
        raise refuse(str(e)) from None
    if not isinstance(data, dict):
        raise refuse(f"holds a {type(data).__name__}, not a JSON object")
    allowed = {f.name: f for f in fields(WeightRecord)}
    if unknown := sorted(set(data) - set(allowed)):
        raise refuse(f"has unknown field(s) {', '.join(map(repr, unknown))}")
    if missing := sorted(name for name, f in allowed.items() if name not in data and name != "notes"):
        raise refuse(f"lacks the field(s) {', '.join(map(repr, missing))}")
    types: dict[str, tuple[type, ...]] = {
        "file_size": (int,),
        "seed": (int,),
        "test_accuracy_single_view": (float, int),
        "test_accuracy_tta": (float, int, type(None)),
        "tta_views": (str, type(None)),
    }
    for name, value in data.items():
        expected = types.get(name, (str,))
        if isinstance(value, bool) or not isinstance(value, expected):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in expected)
            raise refuse(f"field {name!r} must be {names}, got {value!r}")
    record = WeightRecord(**data)
    if (record.network, record.dataset) != (network, dataset):
        raise refuse(f"describes {record.network}/{record.dataset}, not what its name says")
    if record.file != f"{network}_{dataset}.safetensors":
        # The record names its file for people to read; it cannot point the loader anywhere else.
        raise refuse(f"names the file {record.file!r}, but it must be '{network}_{dataset}.safetensors'")
    if not _SHA256.match(record.sha256):
        raise refuse("field 'sha256' must be 64 lower-case hex digits")
    accuracies = [record.test_accuracy_single_view, record.test_accuracy_tta]
    if not all(a is None or 0.0 <= a <= 1.0 for a in accuracies):
        raise refuse("accuracies must be fractions between 0 and 1")
    if (record.test_accuracy_tta is None) != (record.tta_views is None):
        raise refuse("'test_accuracy_tta' and 'tta_views' must both be given or both be null")
    return record


# ## Reading a weight file


def read_safetensors_metadata(raw: bytes) -> dict[str, str]:
    """
    The string-to-string metadata in the header of safetensors bytes. safetensors' own Python API reads
    metadata only from a path, which would be a second read of a file that may have changed since the
    first; the header is an 8-byte length and a JSON object, so we read it from the bytes we hold.
    """
    if len(raw) < 8:
        raise ValueError("too short to be a safetensors file")
    (length,) = struct.unpack("<Q", raw[:8])
    if length > len(raw) - 8:
        raise ValueError(
            f"its header claims {length} bytes, more than the file holds: it is truncated or malformed"
        )
    try:
        header = json.loads(raw[8 : 8 + length])
    except RecursionError:
        # Python's JSON parser recurses once per `[` or `{`; a real header nests three levels deep.
        raise ValueError("its header nests lists or objects too deeply to be a safetensors header") from None
    metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError("its metadata is not a string-to-string map")
    return metadata


def parse_weights(raw: bytes, source: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata from safetensors bytes; anything unparsable is one line naming `source`."""
    try:
        # The metadata first: its checks of the header name what is wrong in our words.
        metadata = read_safetensors_metadata(raw)
        return parse_safetensors(raw), metadata
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for bad bytes
        raise WeightsError(f"{source} is not a readable safetensors file ({_first_line(e)})") from None


def _first_line(error: BaseException) -> str:
    """An exception's message cut to one short line, or its type's name when it has none."""
    text = str(error).strip()
    return text.splitlines()[0][:160] if text else type(error).__name__


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_weights(record: WeightRecord) -> dict[str, torch.Tensor]:
    """
    The tensors of a shipped weight file: read once, the SHA-256 of those bytes checked against the
    record, then those same bytes parsed.
    """
    try:
        # Never more than the record's size: a longer file cannot match it, and is not read whole.
        raw = read_regular_file(record.path, record.file_size, "the weight file its record describes")
    except OSError as e:
        raise WeightsError(
            f"{record.path} cannot be read ({e.strerror or e}); reinstall the package"
        ) from None
    except ValueError as e:
        raise WeightsError(f"{record.path} {e}; reinstall the package") from None
    if len(raw) != record.file_size or sha256_hex(raw) != record.sha256:
        raise WeightsError(
            f"{record.path} ({len(raw)} bytes) does not match its record ({record.file_size} bytes, "
            f"SHA-256 {record.sha256[:12]}…): the file is damaged or was replaced; reinstall the package"
        )
    tensors, _ = parse_weights(raw, record.path)
    return tensors
