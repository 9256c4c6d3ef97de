r"""
# CIFAR-10 on disk: finding it, checking it, reading it

The paper's CIFAR-10 experiments (§4.2) train on the 50,000 training images and report error on the
10,000 test images; for choosing hyper-parameters it holds out 5,000 of the training images as a
validation set. This module turns whatever the user has on disk into four tensors and does nothing else:
augmentation and batching live in `experiments.loader`.

## Where the data comes from, in order of preference

1. `data_dir/cifar-10-batches-py/`, the folder the official archive unpacks to.
2. `data_dir/cifar-10-python.tar.gz`, the official archive, which we unpack next to itself.
3. A download of that archive, when `download=True` and the machine is online.

## What comes from torchvision, and what we add

The md5 sums are those torchvision's `CIFAR10` lists; the download is its `download_url`. What we keep on
top is what a training run needs and torchvision's `CIFAR10` class lacks: nothing the user has is
overwritten or deleted (downloading and unpacking happen in private staging folders inside `data_dir`,
renamed into place only when complete, so an interrupted run leaves no half archive or half-filled
`cifar-10-batches-py/` that later runs would trust, and a failed download removes the folders it
created); offline fails within seconds; every fault is a one-line `DataError` naming the file and the
fix; `verify_checksums=False` for data in CIFAR-10's format that is meant to differ; pickles read without
unpickling; `uint8` tensors.

## Why every file is checked before use

A training run that dies an hour in with `_pickle.UnpicklingError` from deep inside numpy tells the user
nothing. So every file is examined up front: present, readable, the official md5 sum (unless
`verify_checksums` is off), a pickle we can read, images of shape $[n, 3072]$ in `uint8`, and labels in
$0 \dots 9$. Any problem becomes a `DataError` whose message is one line naming the file and the fix.

Each file (and the archive) is read once: the md5 sum is of the bytes then parsed or unpacked, so a
file swapped on disk after its check changes nothing. The batches are pickles, but never unpickled:
[`experiments.cifar_pickle`](cifar_pickle.py) builds the arrays itself, so a hostile file is refused.

## Why `uint8`

The whole training set is $50000 \times 3 \times 32 \times 32$ bytes, about 150 MB as `uint8` and four
times that as `float32`. Keeping bytes lets the loader park the entire set on the GPU once and normalise
each batch as it is drawn, which costs far less than shipping floats from the host every step.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import shutil
import socket
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from experiments.cifar_pickle import NotCifarPickle, read_pickle
from experiments.errors import ExperimentError

# The per-channel mean and standard deviation of the 50,000 training images (0..1 scale) live in the
# installed package, so code that classifies with trained weights normalises exactly as training did.
# The paper only subtracts the per-pixel mean; dividing by the deviation as well is the common modern
# choice and keeps the three channels on the same scale.
from resnet.pretrained import CIFAR10_MEAN as CIFAR10_MEAN
from resnet.pretrained import CIFAR10_STD as CIFAR10_STD

# Where the official archive lives (torchvision's `CIFAR10.url`, which a test holds this to), and how
# long one network read may stall before we give up: short, so an offline machine fails in seconds.
CIFAR10_URL: str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DOWNLOAD_TIMEOUT_S: float = 10.0

# The file names are the format itself, needed without importing torchvision (the same names as its
# `CIFAR10` lists, which a test checks).
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
NUM_CLASSES = 10
# The official set's sizes; the command line checks subsets and the validation split against them.
TRAIN_IMAGES = 50_000
TEST_IMAGES = 10_000


def official_md5() -> dict[str, str]:
    """The published md5 sum of the archive and of each file in it, by name, as torchvision lists them."""
    # Imported here, as in every function that needs torchvision: it loads `torch.compile`'s machinery,
    # about a second at each start of a run whose checks are off.
    from torchvision.datasets import CIFAR10

    meta = {CIFAR10.meta["filename"]: CIFAR10.meta["md5"], CIFAR10.filename: CIFAR10.tgz_md5}
    return {**dict(CIFAR10.train_list + CIFAR10.test_list), **meta}


_IMAGE_VALUES = 3 * 32 * 32


class DataError(ExperimentError):
    """
    The data on disk cannot be used. `str(error)` is a single line: the path, what is wrong, and the fix,
    so the trainer can print it and exit (status 1, a bad file) without a traceback.
    """

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        self.path = Path(path)
        message = f"{path}: {problem}. Fix: {fix}"
        super().__init__(" ".join(message.split()))


@dataclass(frozen=True)
class CifarArrays:
    """
    The whole of CIFAR-10 as tensors.

    * `train_images`: `uint8` `[50000, 3, 32, 32]`, channels in R, G, B order.
    * `train_labels`: `int64` `[50000]`, values in 0..9.
    * `test_images`, `test_labels`: the same for the 10,000 test images.
    * `classes`: the ten class names from `batches.meta`, indexed by label.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...] = ()


def default_data_dir() -> Path:
    """labml's data folder for this project (`data/` next to `.labml.yaml` unless configured)."""
    from labml import lab

    return Path(lab.get_data_path())


def load_cifar10(data_dir: Path, *, download: bool = True, verify_checksums: bool = True) -> CifarArrays:
    """
    Read CIFAR-10 from `data_dir`, unpacking or downloading the official archive first if needed.

    * `data_dir`: the folder holding `cifar-10-batches-py/` or `cifar-10-python.tar.gz`.
    * `download`: fetch the archive when neither is there. Offline, this fails within seconds.
    * `verify_checksums`: check the archive (found or downloaded) and each extracted file against the
      official md5 sums. Turn it off only for data that is *meant* to differ from the official files
      while keeping their format (a synthetic stand-in, a set you made yourself with
      [`experiments.synthetic`](synthetic.py)); every other check (shapes, labels, safe unpickling)
      still applies.

    Raises `DataError` for anything wrong with the files; nothing in `data_dir` is modified except that a
    missing `cifar-10-batches-py/` (and, when downloading, the archive) may be added.
    """
    data_dir = Path(data_dir)
    folder = data_dir / BATCHES_FOLDER
    archive = data_dir / ARCHIVE_NAME
    if _exists(data_dir):
        _check_folder(data_dir)
    if not _exists(folder):
        if _exists(archive):
            _extract_archive(archive, data_dir, verify=verify_checksums)
        elif download:
            _download_archive(data_dir, verify=verify_checksums)
            _extract_archive(archive, data_dir, verify=verify_checksums)
        else:
            raise DataError(
                data_dir,
                f"no CIFAR-10 here (neither {BATCHES_FOLDER}/ nor {ARCHIVE_NAME})",
                f"put {ARCHIVE_NAME} from {CIFAR10_URL} (or the folder it unpacks to) into {data_dir}, "
                "or allow downloading",
            )
    return _read_batches(folder, verify_checksums=verify_checksums)


def split_validation(
    images: torch.Tensor, labels: torch.Tensor, n_valid: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Hold out `n_valid` random images, as the paper's 45k/5k split does (§4.2).

    Returns `(train_images, train_labels, valid_images, valid_labels)`. Which images are held out
    depends only on `seed`; both parts keep the original file order, and the loader shuffles later.
    Classes are not balanced: with 5,000 draws from 50,000 each class gets about 500 anyway.
    """
    n = len(images)
    if len(labels) != n:
        raise ValueError(f"split_validation got {n} images but {len(labels)} labels; pass matching tensors")
    if not 0 <= n_valid < n:
        raise ValueError(f"n_valid must be in 0..{n - 1} for {n} images, got {n_valid}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    valid_index = order[:n_valid].sort().values
    train_index = order[n_valid:].sort().values
    return images[train_index], labels[train_index], images[valid_index], labels[valid_index]


def class_balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """
    Indices of `n` images, as close to `n / 10` per class as the classes allow, chosen at random by
    `seed` and returned in file order. Balance matters on small subsets: a class with a third fewer
    images would shift an error curve for reasons that have nothing to do with the network.

    Raises `ValueError` when `n` is not in `1..len(labels)`.
    """
    if not 1 <= n <= len(labels):
        raise ValueError(f"asked for {n} images but the set holds only {len(labels)}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    # Each image's rank within its class in the shuffled order; sorting by (rank, class) deals the
    # images out round-robin over the classes, so the first `n` are as balanced as possible.
    rank = torch.zeros_like(shuffled)
    for c in shuffled.unique():
        members = shuffled == c
        rank[members] = torch.arange(int(members.sum()))
    take = torch.argsort(rank * NUM_CLASSES + shuffled, stable=True)[:n]
    return order[take].sort().values


# ## Checking and reading the extracted files


def _exists(path: Path) -> bool:
    """`Path.exists` that turns a permission problem on the way into a `DataError`."""
    try:
        return path.exists()
    except PermissionError:
        raise DataError(path, "cannot be checked (permission denied)", _permission_fix(path)) from None


def _permission_fix(path: Path) -> str:
    return f"give the user running training read access, e.g. `chmod -R u+rX {path}`"


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise DataError(folder, "is not a folder", "point the data directory at a folder")
    if not os.access(folder, os.R_OK | os.X_OK):
        raise DataError(folder, "cannot be read (permission denied)", _permission_fix(folder))
    try:
        next(iter(folder.iterdir()), None)
    except PermissionError:
        raise DataError(folder, "cannot be read (permission denied)", _permission_fix(folder)) from None


def _read_batches(folder: Path, *, verify_checksums: bool) -> CifarArrays:
    _check_folder(folder)
    names = [*TRAIN_FILES, TEST_FILE, META_FILE]
    refill = (
        f"put the files from {ARCHIVE_NAME} there, or move the folder away and run again "
        "so it is unpacked or downloaded afresh"
    )
    if not any(folder.iterdir()):
        raise DataError(folder, "is empty", refill)
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise DataError(folder / missing[0], f"is missing (missing: {', '.join(missing)})", refill)

    classes = _read_meta(folder / META_FILE, verify=verify_checksums)
    train = [_read_batch(folder / name, verify=verify_checksums) for name in TRAIN_FILES]
    test = _read_batch(folder / TEST_FILE, verify=verify_checksums)
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    return CifarArrays(
        train_images=torch.from_numpy(train_images.reshape(-1, 3, 32, 32)),
        train_labels=torch.from_numpy(train_labels),
        test_images=torch.from_numpy(test[0].reshape(-1, 3, 32, 32)),
        test_labels=torch.from_numpy(test[1]),
        classes=classes,
    )


def _read_meta(path: Path, *, verify: bool) -> tuple[str, ...]:
    entry = _load_entry(path, verify=verify)
    names = entry.get("label_names")
    if not isinstance(names, list) or len(names) != NUM_CLASSES:
        problem = f"does not list {NUM_CLASSES} class names under 'label_names'"
        raise DataError(path, problem, _replace_fix(path))
    if not all(isinstance(name, (str, bytes)) for name in names):
        raise DataError(path, "has class names that are not text", _replace_fix(path))
    return tuple(name.decode("latin1") if isinstance(name, bytes) else name for name in names)


def _read_batch(path: Path, *, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """One batch file as (`uint8` `[n, 3072]`, `int64` `[n]`), after checking shapes and labels."""
    entry = _load_entry(path, verify=verify)
    fix = _replace_fix(path)
    if "data" not in entry or "labels" not in entry:
        raise DataError(path, "has no 'data' and 'labels' entries, so it is not a CIFAR-10 batch", fix)
    images = entry["data"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        is_array = isinstance(images, np.ndarray)
        found = f"{images.dtype} {list(images.shape)}" if is_array else type(images).__name__
        raise DataError(path, f"holds images as {found}, expected uint8 [n, {_IMAGE_VALUES}]", fix)
    if images.shape[1] != _IMAGE_VALUES or images.shape[0] == 0:
        problem = f"holds images of shape {list(images.shape)}, expected [n>0, {_IMAGE_VALUES}]"
        raise DataError(path, problem, fix)
    labels = entry["labels"]
    if isinstance(labels, np.ndarray) and labels.ndim == 1:  # integer arrays only: the parser saw to it
        labels = labels.tolist()
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        raise DataError(path, "has labels that are not a flat list of integers", fix)
    if len(labels) != len(images):
        raise DataError(path, f"has {len(images)} images but {len(labels)} labels", fix)
    out_of_range = [label for label in labels if not 0 <= label < NUM_CLASSES]
    if out_of_range:
        raise DataError(path, f"has labels outside 0..{NUM_CLASSES - 1} (e.g. {out_of_range[0]})", fix)
    # The parser built `images` itself, writable and C-contiguous, so torch can share its memory.
    return images, np.array(labels, dtype=np.int64)


def _replace_fix(path: Path) -> str:
    return (
        f"{path.name} is damaged or not from the official archive; move {path.parent} away and run "
        f"again to unpack {ARCHIVE_NAME} or download afresh"
    )


def _load_entry(path: Path, *, verify: bool) -> dict[str, Any]:
    """Read one file once, check the md5 of those bytes (when `verify`), parse them; keys as `str`."""
    raw = _read_bytes(path)
    if verify:
        _verify_md5(path, raw)
    try:
        entry = read_pickle(raw)
    except NotCifarPickle as error:
        own = "a set of your own must be written as experiments.synthetic.write_cifar10_folder writes it"
        raise DataError(path, f"is not a CIFAR-10 file: it {error}", f"{_replace_fix(path)}; {own}") from None
    except Exception as error:  # noqa: BLE001 - any other failure to parse means the bytes are damaged
        raise DataError(
            path, f"is truncated or corrupt ({type(error).__name__} while unpickling)", _replace_fix(path)
        ) from None
    if not isinstance(entry, dict):
        raise DataError(path, f"holds a {type(entry).__name__}, not a CIFAR-10 dict", _replace_fix(path))
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except PermissionError:
        raise DataError(path, "cannot be read (permission denied)", _permission_fix(path)) from None
    except OSError as error:
        raise DataError(path, f"cannot be read ({error.strerror})", "check the disk and the file") from None


def _md5_mismatch(path: Path, raw: bytes) -> str | None:
    """What differs when `raw` (read from `path`, and used next) lacks the md5 published for its name."""
    expected = official_md5()[path.name]
    found = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    return None if found == expected else f"md5 {found} does not match the official {expected}"


def _verify_md5(path: Path, raw: bytes) -> None:
    if mismatch := _md5_mismatch(path, raw):
        raise DataError(
            path,
            mismatch,
            f"the file is damaged or not the official one; move it away and run "
            f"again, or replace it with the file from {ARCHIVE_NAME} ({CIFAR10_URL}); for data "
            f"in CIFAR-10's format that is meant to differ, pass verify_checksums=false",
        )


# ## Unpacking the archive


def _extract_archive(archive: Path, data_dir: Path, *, verify: bool) -> None:
    """
    Unpack `archive` so that `data_dir/cifar-10-batches-py/` appears complete, or not at all.

    Members with absolute paths, `..`, links or device files are refused: the official archive has none,
    and unpacking them could write outside `data_dir`. The archive is read into memory once; its md5 and
    the unpacking both use those bytes.
    """
    raw = _read_bytes(archive)
    if verify:
        _verify_md5(archive, raw)
    corrupt_fix = f"move {archive} away and run again to download it afresh, or put the official file there"
    try:
        staging = Path(tempfile.mkdtemp(prefix=".cifar-10-unpacking-", dir=data_dir))
    except OSError as error:
        raise DataError(
            data_dir,
            f"cannot unpack {ARCHIVE_NAME} here ({error.strerror})",
            f"make the folder writable, or unpack it yourself: tar -xzf {archive} -C {data_dir}",
        ) from None
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, members=members, filter="data")
            else:  # Python before 3.11.4: the checks above already refuse everything the filter would
                tar.extractall(staging, members=members)
        unpacked = staging / BATCHES_FOLDER
        if not unpacked.is_dir():
            raise DataError(archive, f"does not contain {BATCHES_FOLDER}/", corrupt_fix)
        # Several runs (or torchrun's ranks) started together on an archive-only folder each unpack into
        # their own staging folder; the first rename wins. A folder that appears meanwhile came from
        # such a winner's single rename, so it is complete, and it is read and checked like any other:
        # use it rather than fail or overwrite it.
        target = data_dir / BATCHES_FOLDER
        if target.exists():
            return
        try:
            os.rename(unpacked, target)
        except OSError:
            if not target.is_dir():
                raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        problem = f"is truncated or corrupt ({type(error).__name__}: {error})"
        raise DataError(archive, problem, corrupt_fix) from None
    except OSError as error:
        raise DataError(
            data_dir,
            f"unpacking {ARCHIVE_NAME} failed ({error.strerror})",
            "free disk space or fix permissions",
        ) from None
    finally:
        # Only our own staging folder is removed; the archive and everything else stay as they were.
        shutil.rmtree(staging, ignore_errors=True)


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    parts = PurePosixPath(member.name).parts
    if member.name.startswith(("/", "\\")) or ".." in parts:
        raise DataError(
            archive,
            f"contains the unsafe path {member.name!r}; refusing to unpack",
            "use the official archive",
        )
    if not (member.isfile() or member.isdir()):
        raise DataError(
            archive,
            f"contains {member.name!r}, which is not a plain file or folder; refusing to unpack",
            "use the official archive",
        )


# ## Downloading


def _download_archive(data_dir: Path, *, verify: bool) -> Path:
    """
    Fetch the official archive into `data_dir` with torchvision's `download_url`, into a private staging
    folder first: it becomes `cifar-10-python.tar.gz` only once complete and, when `verify`, found to
    have the official md5 sum, so no run ever mistakes half a download for the archive. On failure the
    staging folder and any folders this call created are removed, leaving `data_dir` as it was.
    """
    from torchvision.datasets.utils import download_url

    archive = data_dir / ARCHIVE_NAME
    offline_fix = (
        f"put {ARCHIVE_NAME} (from {CIFAR10_URL}, e.g. copied from a machine that is online) "
        f"or the unpacked {BATCHES_FOLDER}/ folder into {data_dir}"
    )
    created = _make_folders(data_dir)
    staging: Path | None = None
    succeeded = False
    try:
        staging = Path(tempfile.mkdtemp(prefix=".cifar-10-download-", dir=data_dir))
        # torchvision opens its connections without a timeout, so they take the process's default.
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            download_url(CIFAR10_URL, str(staging), ARCHIVE_NAME)
        finally:
            socket.setdefaulttimeout(previous_timeout)
        downloaded = staging / ARCHIVE_NAME
        # Unpacking checks the bytes it unpacks again; this keeps a wrong download from being kept.
        if verify and (mismatch := _md5_mismatch(downloaded, downloaded.read_bytes())):
            raise DataError(
                data_dir,
                f"the archive downloaded from {CIFAR10_URL} is not the official one ({mismatch})",
                f"run again, or {offline_fix}",
            )
        # Several runs (or the first rank of several nodes) started together on an empty folder each
        # download into their own staging folder; the first rename wins. An archive that appeared
        # meanwhile came from such a rename, so it is complete, and unpacking checks its bytes like any
        # other: use it rather than fail. (Should two renames still cross, the second replaces one
        # complete download with another, and a reader that already opened the first keeps reading it.)
        if not archive.exists():
            os.rename(downloaded, archive)
        succeeded = True
    except (OSError, http.client.HTTPException, ValueError, RecursionError) as error:
        reason = getattr(error, "reason", None) or error
        raise DataError(
            data_dir, f"CIFAR-10 is not here and downloading {CIFAR10_URL} failed ({reason})", offline_fix
        ) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if not succeeded:
            _remove_created(created)
    return archive


def _make_folders(data_dir: Path) -> list[Path]:
    """Create `data_dir` and any missing parents; return the ones created, innermost first."""
    missing = [
        folder for folder in (data_dir.absolute(), *data_dir.absolute().parents) if not folder.exists()
    ]
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _remove_created(missing)
        raise DataError(
            Path(error.filename or data_dir),
            f"cannot be created ({error.strerror})",
            "choose a data directory you can write to",
        ) from None
    return missing


def _remove_created(created: list[Path]) -> None:
    """Remove folders `_make_folders` created, innermost first, stopping at one that is not empty."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


# ## The images a run uses


def _subset(
    images: torch.Tensor, labels: torch.Tensor, n: int, key: str, seed: int, data_dir: Path, held_out: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The class-balanced subset of `n` images that `key` (`train_subset`/`test_subset`) asks for; 0: all."""
    if n == 0:
        return images, labels
    if n > len(labels):
        after = f" after holding out valid_split={held_out}" if held_out else ""
        raise DataError(
            data_dir,
            f"{key}={n}, but the set holds only {len(labels)} images{after}",
            f"ask for at most {len(labels)} (0 uses all)",
        )
    index = class_balanced_subset(labels, n, seed)
    return images[index], labels[index]


def training_images(
    d: CifarArrays, *, valid_split: int, train_subset: int, seed: int, data_dir: Path
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """
    The images to train on and, with `valid_split`, the held-out validation images. The held-out images
    do not depend on `train_subset`, so runs on subsets of different sizes validate on the same images.
    """
    if valid_split == 0:
        return _subset(d.train_images, d.train_labels, train_subset, "train_subset", seed, data_dir), None
    if valid_split >= len(d.train_images):
        raise DataError(
            data_dir,
            f"valid_split={valid_split} leaves no training images (the set has {len(d.train_images)})",
            f"hold out fewer, e.g. --valid-split {len(d.train_images) // 10}",
        )
    train_x, train_y, valid_x, valid_y = split_validation(d.train_images, d.train_labels, valid_split, seed)
    train = _subset(train_x, train_y, train_subset, "train_subset", seed, data_dir, held_out=valid_split)
    return train, (valid_x, valid_y)


def test_images(
    d: CifarArrays, *, test_subset: int, seed: int, data_dir: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images to measure on; a subset is drawn with another seed than the training subset's."""
    return _subset(d.test_images, d.test_labels, test_subset, "test_subset", seed + 1, data_dir)
