r"""
# CIFAR-10's file layout, written for images that are not CIFAR-10

The one writer of the official `cifar-10-batches-py/` layout for other images (the tests', the
degradation experiment's stand-in, the benchmarks'), so that they go through the loader
([`experiments.data`](data.py)) and all its checks, read with `verify_checksums=False`. Each batch file
is a pickled dict with `data` (`uint8` `[n, 3072]`: per image 1024 red, 1024 green, then 1024 blue
values, each plane row-major), `labels` (a list of ints), `batch_label` and `filenames`; `batches.meta`
holds the ten class names. We pickle them at the official files' protocol 2, with Python 3's `pickle`
([`experiments.cifar_pickle`](cifar_pickle.py) reads both).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.data import BATCHES_FOLDER, META_FILE, TEST_FILE, TRAIN_FILES
from resnet.pretrained import CIFAR10_CLASSES as CLASS_NAMES

# Labels as a list of ints or an integer array; the files hold a list either way.
Labels = Sequence[int] | np.ndarray


def write_batch_file(path: Path, data: np.ndarray, labels: Labels, batch_label: str) -> None:
    """One batch file: uint8 `data` `[n, 3072]` (or `[n, 3, 32, 32]`), labels, made-up file names."""
    entry = {
        "batch_label": batch_label,
        "labels": [int(label) for label in labels],
        "data": np.ascontiguousarray(data, dtype=np.uint8).reshape(len(data), -1),
        "filenames": [f"synthetic_{i:05d}.png" for i in range(len(labels))],
    }
    Path(path).write_bytes(pickle.dumps(entry, protocol=2))


def write_cifar10_folder(
    root: Path, train_batches: Sequence[tuple[np.ndarray, Labels]], test: tuple[np.ndarray, Labels]
) -> Path:
    """
    Write `root/cifar-10-batches-py/` and return it: five `train_batches` and the `test` batch, each
    `(images, labels)` with images uint8 `[n, 3072]` in CIFAR's plane order or `[n, 3, 32, 32]`.
    """
    if len(train_batches) != len(TRAIN_FILES):
        raise ValueError(f"CIFAR-10 has {len(TRAIN_FILES)} training batches, got {len(train_batches)}")
    folder = Path(root) / BATCHES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, (images, labels)) in enumerate(zip(TRAIN_FILES, train_batches, strict=True)):
        write_batch_file(folder / name, images, labels, f"training batch {i + 1} of 5")
    write_batch_file(folder / TEST_FILE, *test, "testing batch 1 of 1")
    meta = {"num_cases_per_batch": len(train_batches[0][0]), "label_names": [*CLASS_NAMES], "num_vis": 3072}
    (folder / META_FILE).write_bytes(pickle.dumps(meta, protocol=2))
    return folder


# Ten colours, as RGB hex codes, that differ by at least 100 in some channel: the `separable` classes.
_PALETTE_HEX = "dc1e1e 1edc1e 1e1edc dcdc1e dc1edc 1edcdc 808080 fafafa 0a0a0a 801e80"
_PALETTE = np.array([list(bytes.fromhex(colour)) for colour in _PALETTE_HEX.split()], dtype=np.int16)


def synthetic_batch(n: int, *, separable: bool, seed: int) -> tuple[np.ndarray, list[int]]:
    """
    `n` images, uint8 `[n, 3072]`, and labels that cycle through 0..9 before shuffling (every class
    appears once `n >= 10`): uniform random pixels, or with `separable` a flat colour per class plus a
    little noise, which a tiny network learns in a few steps and which survives crops and flips.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10)
    if separable:
        noise = rng.integers(-20, 21, size=(n, 3, 32 * 32), dtype=np.int16)
        images = np.clip(_PALETTE[labels][:, :, None] + noise, 0, 255).astype(np.uint8)
    else:
        images = rng.integers(0, 256, size=(n, 3, 32 * 32), dtype=np.uint8)
    return np.ascontiguousarray(images.reshape(n, 3072)), [int(label) for label in labels]


def synthetic_arrays(
    n_per_train_batch: int = 20, n_test: int = 20, *, separable: bool = False, seed: int = 0
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """What `write_synthetic_cifar10` writes, by file name, so tests can compare against it."""
    arrays = {
        name: synthetic_batch(n_per_train_batch, separable=separable, seed=seed * 100 + i)
        for i, name in enumerate(TRAIN_FILES)
    }
    arrays[TEST_FILE] = synthetic_batch(n_test, separable=separable, seed=seed * 100 + 99)
    return arrays


def write_synthetic_cifar10(
    root: Path, *, n_per_train_batch: int = 20, n_test: int = 20, separable: bool = False, seed: int = 0
) -> Path:
    """Write `root/cifar-10-batches-py/` of `synthetic_arrays(...)` and return it."""
    arrays = synthetic_arrays(n_per_train_batch, n_test, separable=separable, seed=seed)
    return write_cifar10_folder(root, [arrays[name] for name in TRAIN_FILES], arrays[TEST_FILE])
