r"""
# CIFAR-10's file layout, written for images that are not CIFAR-10

The CIFAR-10 loader reads exactly one layout, the folder `cifar-10-batches-py/` from the official
`cifar-10-python.tar.gz`, and this module writes that layout for images that are not CIFAR-10. With
one writer for all of them, everything that is not CIFAR-10 goes through the loader, checks and all,
that the real files go through.

Three kinds of data use it: the tests' few dozen images, the degradation experiment's stand-in
([`experiments/degradation.py`](degradation.py)) and the GPU benchmark's full-size synthetic set
(`benchmarks/gpu.py`). The loader is [`experiments.data`](data.py); it reads these files with
`verify_checksums=False`, the setting for data that is meant to differ from CIFAR-10.

The folder holds seven files:

* `data_batch_1` … `data_batch_5`, `test_batch`: each a pickled dict with `data` (uint8, `[n, 3072]`,
  one row per image holding the 1024 red, then 1024 green, then 1024 blue values, each plane
  row-major), `labels` (a list of ints), `batch_label` and `filenames`;
* `batches.meta`: the images per batch, the ten class names in label order, and the values per image.

## Python 3's own pickles

The official files were written by Python 2's `cPickle` at protocol 2; we write the same dicts with
Python 3's `pickle.dumps(..., protocol=2)`. The loader never unpickles either:
[`experiments.cifar_pickle`](cifar_pickle.py) reads both spellings, and `tests/test_data.py` checks
the official one on the real `batches.meta` and on `tests/fixtures/python2_data_batch`.

## Colour classes

[`write_synthetic_cifar10`](#write_synthetic_cifar10) fills the format with images of two kinds:

* `separable=False`: uniform random pixels, labels cycling through all ten classes. Good for checking
  that bytes land in the right place.
* `separable=True`: every class has its own flat colour plus a little noise, so even a tiny network
  learns it in a few steps. Colour survives cropping and flipping, so augmentation does not hide it.
  Throughput measured on them is real; accuracy means nothing.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.data import BATCHES_FOLDER, META_FILE, NUM_CLASSES, TEST_FILE, TRAIN_FILES

# The official class names, in label order: what `batches.meta` lists unless told otherwise.
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Labels as a list of ints or an integer array; the files hold a list either way.
Labels = Sequence[int] | np.ndarray

# ## The files


def write_batch_file(
    path: Path, data: np.ndarray, labels: Labels, batch_label: str, name_prefix: str = "synthetic"
) -> None:
    """One batch file: uint8 `data` `[n, 3072]` (or `[n, 3, 32, 32]`), labels, made-up file names."""
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(len(data), -1)
    entry = {
        "batch_label": batch_label,
        "labels": [int(label) for label in labels],
        "data": data,
        "filenames": [f"{name_prefix}_{i:05d}.png" for i in range(len(labels))],
    }
    Path(path).write_bytes(pickle.dumps(entry, protocol=2))


def write_meta_file(path: Path, images_per_batch: int, class_names: Sequence[str] = CLASS_NAMES) -> None:
    """`batches.meta`: images per batch, the class names in label order, and values per image."""
    meta = {"num_cases_per_batch": images_per_batch, "label_names": list(class_names), "num_vis": 3072}
    Path(path).write_bytes(pickle.dumps(meta, protocol=2))


def write_cifar10_folder(
    root: Path,
    train_batches: Sequence[tuple[np.ndarray, Labels]],
    test: tuple[np.ndarray, Labels],
    *,
    class_names: Sequence[str] = CLASS_NAMES,
    description: str = "",
    name_prefix: str = "synthetic",
) -> Path:
    """
    Write `root/cifar-10-batches-py/` with all seven files and return that folder, which
    `experiments.data.load_cifar10(root, verify_checksums=False)` then reads.

    * `train_batches`: five `(images, labels)` pairs, one per `data_batch_*`; images uint8
      `[n, 3072]` in CIFAR's plane order or `[n, 3, 32, 32]`.
    * `test`: the same for `test_batch`.
    * `class_names`: ten names for `batches.meta`.
    * `description`: put in front of each `batch_label`, to say where the images came from.
    * `name_prefix`: the start of every made-up file name in `filenames`.
    """
    if len(train_batches) != len(TRAIN_FILES):
        raise ValueError(f"CIFAR-10 has {len(TRAIN_FILES)} training batches, got {len(train_batches)}")
    if len(class_names) != NUM_CLASSES:
        raise ValueError(f"CIFAR-10 has {NUM_CLASSES} classes, got {len(class_names)} names")
    folder = Path(root) / BATCHES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    prefix = f"{description}: " if description else ""
    for i, (name, (images, labels)) in enumerate(zip(TRAIN_FILES, train_batches, strict=True)):
        write_batch_file(folder / name, images, labels, f"{prefix}training batch {i + 1} of 5", name_prefix)
    write_batch_file(folder / TEST_FILE, *test, f"{prefix}testing batch 1 of 1", name_prefix)
    write_meta_file(folder / META_FILE, len(train_batches[0][0]), class_names)
    return folder


# ## Colour classes

# Ten colours far apart in RGB space: the `separable` classes differ by at least 100 in some channel.
_PALETTE = np.array(
    [
        [220, 30, 30],
        [30, 220, 30],
        [30, 30, 220],
        [220, 220, 30],
        [220, 30, 220],
        [30, 220, 220],
        [128, 128, 128],
        [250, 250, 250],
        [10, 10, 10],
        [128, 30, 128],
    ],
    dtype=np.int16,
)


def synthetic_batch(n: int, *, separable: bool, seed: int) -> tuple[np.ndarray, list[int]]:
    """
    One batch worth of images: `data` uint8 `[n, 3072]` in CIFAR's plane order, and `labels`, which
    cycle through 0..9 before shuffling, so every class appears once `n >= 10`.
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
    """
    Write `root/cifar-10-batches-py/` with all seven files and return that folder.

    * `root`: the data directory a user would hand to `load_cifar10`; created if missing.
    * `n_per_train_batch`: images in each of the five training batches (the real files hold 10,000).
    * `n_test`: images in `test_batch`.
    * `separable`: give each class its own colour, so a model can learn it quickly.
    * `seed`: makes the pixels and labels reproducible.
    """
    arrays = synthetic_arrays(n_per_train_batch, n_test, separable=separable, seed=seed)
    return write_cifar10_folder(root, [arrays[name] for name in TRAIN_FILES], arrays[TEST_FILE])
