r"""
# Synthetic CIFAR-10 for the tests

The real data set cannot be downloaded on the machines the tests run on, and 170 MB would make the
tests slow anyway. What the loading code has to get right is the *format*, and
[`experiments.synthetic`](../experiments/synthetic.py) writes exactly that: protocol-2 pickles in the
layout of the official `cifar-10-python.tar.gz`, filled with colour-class or random images. The
tests take the writer and its images from there (the names below are re-exported, so a test reads
`synthetic.write_batch_file`), and add what only tests need:

* [`write_synthetic_cifar10_archive`](#write_synthetic_cifar10_archive): the same files packed as
  the official archive is;
* [`publish_digests_of`](#publish_digests_of): make the loader expect the md5 sums of files a test
  wrote, so that a run with every check on (the road real users take) accepts them.

Everywhere else the training batches cannot match the official md5 sums, so tests pass
`verify_checksums=False`, as a user with a data set of their own would.
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
from pathlib import Path

import pytest

from experiments import data
from experiments.data import ARCHIVE_NAME, BATCHES_FOLDER, META_FILE, TEST_FILE, TRAIN_FILES
from experiments.synthetic import (
    CLASS_NAMES,
    synthetic_arrays,
    synthetic_batch,
    write_batch_file,
    write_cifar10_folder,
    write_synthetic_cifar10,
)

__all__ = [
    "ARCHIVE_NAME",
    "BATCHES_FOLDER",
    "CLASS_NAMES",
    "META_FILE",
    "TEST_FILE",
    "TRAIN_FILES",
    "publish_digests_of",
    "synthetic_arrays",
    "synthetic_batch",
    "write_batch_file",
    "write_cifar10_folder",
    "write_synthetic_cifar10",
    "write_synthetic_cifar10_archive",
]


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


def publish_digests_of(monkeypatch: pytest.MonkeyPatch, *paths: Path) -> dict[str, str]:
    """
    Make the loader expect the md5 sums of `paths` (files the test wrote) instead of the official ones,
    by file name, for as long as the test runs; returns every sum it now expects. Only the published
    numbers change: the loader reads, hashes and compares as it does for real files.
    """
    digests = data.official_md5()
    digests.update({Path(path).name: hashlib.md5(Path(path).read_bytes()).hexdigest() for path in paths})
    monkeypatch.setattr(data, "official_md5", lambda: dict(digests))
    return digests
