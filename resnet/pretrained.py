"""
# Trained weights and the CIFAR-10 input format

A trained network is only useful with the input it was trained on. The trainer feeds CIFAR-10 images
as float tensors `[batch, 3, 32, 32]`, each channel scaled to $[0, 1]$ and then standardised with the
training set's per-channel mean and standard deviation. Those two constants live here, in the
installed package, so that the trainer and any code that classifies images with its weights read them
from one place: [`normalize_cifar10`](#normalize_cifar10) turns `uint8` images into exactly what the
network saw in training.

`resnet.resnet20(weights="cifar10")` loads the weights shipped with the package: ResNet-20 trained
with the trainer's `cpu` recipe. Beside the file lies a JSON record of where it came from (recipe,
seed, command, final-epoch test accuracy) and its SHA-256, which is checked before the file is loaded,
so a damaged or swapped file is refused instead of silently giving wrong predictions.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

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


def normalize_cifar10(images: torch.Tensor) -> torch.Tensor:
    """
    `uint8` images, `[height, width, 3]` or `[batch, height, width, 3]` (the layout of a PNG or of
    CIFAR-10's `uint8` arrays), to the float batch `[batch, 3, height, width]` the trainer feeds.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images with values 0..255, got dtype {images.dtype}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"expected [height, width, 3] or [batch, height, width, 3] uint8 images, got shape "
            f"{list(images.shape)}"
        )
    # The trainer's arithmetic, operation for operation, so the two agree to the last bit.
    std = torch.tensor(CIFAR10_STD, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    mean = torch.tensor(CIFAR10_MEAN, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return images.permute(0, 3, 1, 2).float() * (1.0 / (255.0 * std)) - mean / std


@dataclass(frozen=True)
class PretrainedWeights:
    """Where a shipped weight file came from, and how to check it."""

    network: str
    dataset: str
    file: str
    sha256: str
    test_accuracy: float
    recipe: str
    seed: int
    command: str
    notes: str = ""

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


def available_weights() -> dict[tuple[str, str], PretrainedWeights]:
    """Every shipped weight file, keyed by (network, dataset), from the JSON records beside them."""
    found: dict[tuple[str, str], PretrainedWeights] = {}
    for record in sorted(WEIGHTS_DIR.glob("*.json")):
        entry = PretrainedWeights(**json.loads(record.read_text()))
        found[entry.network, entry.dataset] = entry
    return found


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_pretrained(model: nn.Module, network: str, dataset: str) -> PretrainedWeights:
    """Check and strictly load the shipped `dataset` weights of `network` into `model`; returns the record."""
    shipped = available_weights()
    entry = shipped.get((network, dataset))
    if entry is None:
        names = ", ".join(f"{n}(weights={d!r})" for n, d in shipped) or "none"
        raise ValueError(f"no {dataset!r} weights ship for {network}; available: {names}")
    if not entry.path.is_file():
        raise FileNotFoundError(f"{entry.path} is missing from the installed package; reinstall it")
    actual = sha256_of(entry.path)
    if actual != entry.sha256:
        raise ValueError(
            f"{entry.path} has SHA-256 {actual}, but {entry.sha256} was recorded for it: the "
            f"file is damaged or was replaced; reinstall the package"
        )
    state: dict[str, Any] = torch.load(entry.path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        reason = str(e).splitlines()[0][:200]
        raise ValueError(
            f"the {dataset!r} weights of {network} are for the preset as trained (10 classes, "
            f"its default shortcut and stem); build it without architecture arguments to load "
            f"them ({reason})"
        ) from None
    return entry
