"""
# Synthetic CIFAR-10, byte-for-byte in the real on-disk layout

The real data set cannot be downloaded on the machines the tests run on, and 170 MB would make the
tests slow anyway. What the loading code has to get right is the *format*, so these helpers write a
few dozen images in exactly the layout of the official `cifar-10-python.tar.gz`:

* a folder `cifar-10-batches-py/` with `data_batch_1` … `data_batch_5`, `test_batch` and `batches.meta`;
* each batch is a pickle of a dict with `b'data'` (uint8, `[n, 3072]`, one row per image holding the
  1024 red, then 1024 green, then 1024 blue values, each plane row-major), `b'labels'` (a list of ints),
  `b'batch_label'` and `b'filenames'`;
* keys and strings are `bytes`, which is how the original Python 2 pickles read back under Python 3.

Pickle protocol 2 is used, the protocol of the original files, so the numpy array goes through the same
`_reconstruct` path the real files use.

Two flavours of content:

* `separable=False`: uniform random pixels, labels cycling through all ten classes. Good for checking
  that bytes land in the right place.
* `separable=True`: every class has its own flat colour plus a little noise, so even a tiny network
  learns it in a few steps. Colour survives cropping and flipping, so augmentation does not hide it.

Real files also come with known md5 sums, which synthetic files cannot match; tests turn off
`experiments.data.VERIFY_CHECKSUMS` for them.
"""

from __future__ import annotations

import pickle
import tarfile
import tempfile
from pathlib import Path

import numpy as np

BATCHES_FOLDER = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Ten colours far apart in RGB space: the `separable` classes differ by at least 100 in some channel.
_PALETTE = np.array(
    [
        [220, 30, 30], [30, 220, 30], [30, 30, 220], [220, 220, 30], [220, 30, 220],
        [30, 220, 220], [128, 128, 128], [250, 250, 250], [10, 10, 10], [128, 30, 128],
    ],
    dtype=np.int16,
)


def synthetic_batch(n: int, *, separable: bool, seed: int) -> tuple[np.ndarray, list[int]]:
    """
    One batch worth of images: `data` uint8 `[n, 3072]` in CIFAR's plane order, and `labels`.

    Labels cycle through 0..9 before shuffling, so every class appears once `n >= 10`.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10)
    if separable:
        noise = rng.integers(-20, 21, size=(n, 3, 32 * 32), dtype=np.int16)
        images = np.clip(_PALETTE[labels][:, :, None] + noise, 0, 255).astype(np.uint8)
    else:
        images = rng.integers(0, 256, size=(n, 3, 32 * 32), dtype=np.uint8)
    return np.ascontiguousarray(images.reshape(n, 3072)), [int(label) for label in labels]


def write_batch_file(path: Path, data: np.ndarray, labels: list[int], batch_label: str) -> None:
    """Pickle one batch in the official layout (bytes keys, protocol 2)."""
    entry = {
        b"batch_label": batch_label.encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"synthetic_{i:05d}.png".encode() for i in range(len(labels))],
    }
    with open(path, "wb") as file:
        pickle.dump(entry, file, protocol=2)


def write_meta_file(path: Path, images_per_batch: int) -> None:
    """`batches.meta`: the class names, in label order."""
    meta = {
        b"num_cases_per_batch": images_per_batch,
        b"label_names": [name.encode() for name in CLASS_NAMES],
        b"num_vis": 3072,
    }
    with open(path, "wb") as file:
        pickle.dump(meta, file, protocol=2)


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
    folder = Path(root) / BATCHES_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    arrays = synthetic_arrays(n_per_train_batch, n_test, separable=separable, seed=seed)
    for i, name in enumerate(TRAIN_FILES):
        write_batch_file(folder / name, *arrays[name], batch_label=f"training batch {i + 1} of 5")
    write_batch_file(folder / TEST_FILE, *arrays[TEST_FILE], batch_label="testing batch 1 of 1")
    write_meta_file(folder / META_FILE, n_per_train_batch)
    return folder


def write_synthetic_cifar10_archive(
    root: Path, *, n_per_train_batch: int = 20, n_test: int = 20, separable: bool = False, seed: int = 0
) -> Path:
    """
    Write only `root/cifar-10-python.tar.gz` (no extracted folder) and return its path.

    The archive holds `cifar-10-batches-py/...` exactly as the official one does; the arguments are
    those of `write_synthetic_cifar10`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / ARCHIVE_NAME
    with tempfile.TemporaryDirectory() as staging:
        folder = write_synthetic_cifar10(
            Path(staging), n_per_train_batch=n_per_train_batch, n_test=n_test, separable=separable, seed=seed
        )
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(folder, arcname=BATCHES_FOLDER)
    return archive
