r"""
# CIFAR-10 on disk: finding it, checking it, reading it

This module turns what the user has on disk into `uint8` tensors (a quarter of `float32`, so the
[loader](loader.py) can keep the whole set on the GPU): `data_dir/cifar-10-batches-py/`, else the official
archive `data_dir/cifar-10-python.tar.gz` unpacked, else that archive downloaded when allowed.
torchvision supplies the md5 sums and the download; the rest is ours for the guarantees the README's
*Reliability* section lists: every file is checked before training starts, a fault is one `DataError`
line naming the file and the fix, each file is read once and its md5 is of the bytes then parsed (by
[`experiments.cifar_pickle`](cifar_pickle.py)) or unpacked, and downloads and unpacking happen in
private staging folders renamed into place only when complete.
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
from resnet.files import RefusedFile, read_regular_file

# The training set's per-channel statistics live in the installed package, so that code classifying
# with trained weights normalises exactly as training did.
from resnet.pretrained import CIFAR10_MEAN as CIFAR10_MEAN
from resnet.pretrained import CIFAR10_STD as CIFAR10_STD

# torchvision's `CIFAR10.url`, and how long one network read may stall: offline fails in seconds.
CIFAR10_URL: str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
DOWNLOAD_TIMEOUT_S: float = 10.0

# The file names are the format itself (a test holds them to torchvision's `CIFAR10`).
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_FOLDER = "cifar-10-batches-py"
TRAIN_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
NUM_CLASSES = 10
# The official set's sizes; the command line checks subsets and the validation split against them.
TRAIN_IMAGES = 50_000
TEST_IMAGES = 10_000
_IMAGE_VALUES = 3 * 32 * 32
# The most bytes one file may hold, checked before it is read, so that the wrong file under a right name
# (a disk image, a video) is refused in one line instead of filling memory (what parsing builds is
# bounded by the file's size, `cifar_pickle`). The official batches are 31 MB; Python 3 writes the same
# 10,000 images in up to 59 MB (pixels of 128 and more take two bytes of its text), so 256 MiB leaves
# room for sets of one's own of about 45,000 images a file. The official archive is 170 MB.
_MAX_FILE_BYTES = 256 * 2**20
_MAX_ARCHIVE_BYTES = 448 * 2**20


def official_md5() -> dict[str, str]:
    """The published md5 sum of the archive and of each file in it, by name, as torchvision lists them."""
    # Imported here, as wherever torchvision is needed: importing it costs about a second at every start.
    from torchvision.datasets import CIFAR10

    meta = {CIFAR10.meta["filename"]: CIFAR10.meta["md5"], CIFAR10.filename: CIFAR10.tgz_md5}
    return {**dict(CIFAR10.train_list + CIFAR10.test_list), **meta}


class DataError(ExperimentError):
    """Unusable data. `str(error)` is one line: the path, what is wrong, and the fix (exit status 1)."""

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        self.path = Path(path)
        super().__init__(" ".join(f"{path}: {problem}. Fix: {fix}".split()))


@dataclass(frozen=True)
class CifarArrays:
    """Images `uint8` `[n, 3, 32, 32]` (R, G, B), labels `int64` `[n]` in 0..9; `classes` by label."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...] = ()


def default_data_dir() -> Path:
    """labml's data folder for this project (`data/` next to `.labml.yaml` unless configured)."""
    from labml import lab

    return Path(lab.get_data_path())


def data_root(data_dir: str | Path) -> Path:
    """The folder holding `cifar-10-batches-py/`; naming that folder itself (a slip) means its parent."""
    where = Path(data_dir)
    if where.name == BATCHES_FOLDER and not (where / BATCHES_FOLDER).exists():
        return where.parent
    return where


def load_cifar10(data_dir: Path, *, download: bool = True, verify_checksums: bool = True) -> CifarArrays:
    """
    Read CIFAR-10 from `data_dir` (see `data_root`), unpacking or, with `download`, downloading the
    archive if needed. `verify_checksums=False` skips only the md5 sums, for data *meant* to differ from
    the official files (e.g. written by [`experiments.synthetic`](synthetic.py)). Raises `DataError`;
    nothing in `data_dir` changes except that `cifar-10-batches-py/` (and the archive) may be added.
    """
    data_dir = data_root(data_dir)
    folder, archive = data_dir / BATCHES_FOLDER, data_dir / ARCHIVE_NAME
    try:
        present = data_dir.exists()
    except PermissionError:
        raise _denied(data_dir, "checked") from None
    # Once `data_dir` is a folder this user may search, looking inside it cannot be denied.
    if present:
        _check_folder(data_dir)
    if not folder.exists():
        if not archive.exists():
            if not download:
                fix = f"put {ARCHIVE_NAME} from {CIFAR10_URL} (or the folder it unpacks to) into {data_dir}"
                problem = f"no CIFAR-10 here (neither {BATCHES_FOLDER}/ nor {ARCHIVE_NAME})"
                raise DataError(data_dir, problem, f"{fix}, or allow downloading")
            _download_archive(data_dir, verify=verify_checksums)
        _extract_archive(archive, data_dir, verify=verify_checksums)
    return _read_batches(folder, verify=verify_checksums)


def split_validation(
    images: torch.Tensor, labels: torch.Tensor, n_valid: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Hold out `n_valid` random images, as the paper's 45k/5k split does (§4.2): returns `(train_images,
    train_labels, valid_images, valid_labels)`, both parts in file order, the choice fixed by `seed`.
    Classes are not balanced: 5,000 draws from 50,000 give each about 500 anyway.
    """
    n = len(images)
    if not 0 <= n_valid < n:
        raise ValueError(f"n_valid must be in 0..{n - 1} for {n} images, got {n_valid}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    valid_index = order[:n_valid].sort().values
    train_index = order[n_valid:].sort().values
    return images[train_index], labels[train_index], images[valid_index], labels[valid_index]


def class_balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """
    Indices of `n` images, as close to `n / 10` per class as the classes allow, drawn by `seed`, in file
    order: on small subsets an unbalanced draw would shift an error curve for reasons other than the network.
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


def _denied(path: Path, action: str = "read") -> DataError:
    fix = f"give the user running training read access, e.g. `chmod -R u+rX {path}`"
    return DataError(path, f"cannot be {action} (permission denied)", fix)


def _check_folder(folder: Path) -> list[Path]:
    """What `folder` holds, once it is known to be a folder this user may read."""
    if not folder.is_dir():
        raise DataError(folder, "is not a folder", "point the data directory at a folder")
    try:
        if os.access(folder, os.R_OK | os.X_OK):
            return list(folder.iterdir())
    except PermissionError:
        pass
    raise _denied(folder)


_REFILL = (
    f"put the files from {ARCHIVE_NAME} there, or move the folder away and run again "
    "so it is unpacked or downloaded afresh"
)


def _read_batches(folder: Path, *, verify: bool) -> CifarArrays:
    if not _check_folder(folder):
        raise DataError(folder, "is empty", _REFILL)
    classes = _read_meta(folder / META_FILE, verify=verify)
    train = [_read_batch(folder / name, verify=verify) for name in TRAIN_FILES]
    test_images, test_labels = _read_batch(folder / TEST_FILE, verify=verify)
    return CifarArrays(
        train_images=torch.from_numpy(np.concatenate([images for images, _ in train]).reshape(-1, 3, 32, 32)),
        train_labels=torch.from_numpy(np.concatenate([labels for _, labels in train])),
        test_images=torch.from_numpy(test_images.reshape(-1, 3, 32, 32)),
        test_labels=torch.from_numpy(test_labels),
        classes=classes,
    )


def _read_meta(path: Path, *, verify: bool) -> tuple[str, ...]:
    names = _load_entry(path, verify=verify).get("label_names")
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
    images, labels = entry["data"], entry["labels"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2:
        is_array = isinstance(images, np.ndarray)
        found = f"{images.dtype} {list(images.shape)}" if is_array else type(images).__name__
        raise DataError(path, f"holds images as {found}, expected uint8 [n, {_IMAGE_VALUES}]", fix)
    if images.shape[1] != _IMAGE_VALUES or images.shape[0] == 0:
        problem = f"holds images of shape {list(images.shape)}, expected [n>0, {_IMAGE_VALUES}]"
        raise DataError(path, problem, fix)
    if isinstance(labels, np.ndarray):  # integer arrays only (the parser saw to it); nested lists are refused
        labels = labels.tolist()
    if not isinstance(labels, list) or not all(type(label) is int for label in labels):
        raise DataError(path, "has labels that are not a flat list of integers", fix)
    if len(labels) != len(images):
        raise DataError(path, f"has {len(images)} images but {len(labels)} labels", fix)
    if out_of_range := [label for label in labels if not 0 <= label < NUM_CLASSES]:
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
    raw = _read_bytes(path, verify=verify)
    try:
        entry = read_pickle(raw)
    except NotCifarPickle as error:
        own = "a set of your own must be written as experiments.synthetic.write_cifar10_folder writes it"
        raise DataError(path, f"is not a CIFAR-10 file: it {error}", f"{_replace_fix(path)}; {own}") from None
    except Exception as error:  # noqa: BLE001 - any other failure to parse means the bytes are damaged
        problem = f"is truncated or corrupt ({type(error).__name__} while unpickling)"
        raise DataError(path, problem, _replace_fix(path)) from None
    if not isinstance(entry, dict):
        raise DataError(path, f"holds a {type(entry).__name__}, not a CIFAR-10 dict", _replace_fix(path))
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _read_bytes(path: Path, *, verify: bool) -> bytes:
    """
    The whole of a regular file, read once by the library's
    [`read_regular_file`](../resnet/files.html#read_regular_file); when `verify`, only if those bytes
    have the published md5 sum. The caller parses or unpacks exactly the bytes returned.
    """
    official = f"replace it with the file from {ARCHIVE_NAME} ({CIFAR10_URL})"
    archive = path.name == ARCHIVE_NAME
    limit = _MAX_ARCHIVE_BYTES if archive else _MAX_FILE_BYTES
    what = "the CIFAR-10 archive" if archive else "a CIFAR-10 file"
    try:
        raw = read_regular_file(path, limit, what)
    except FileNotFoundError:
        raise DataError(path, "is missing", _REFILL) from None
    except PermissionError:
        raise _denied(path) from None
    except OSError as error:
        raise DataError(path, f"cannot be read ({error.strerror})", "check the disk and the file") from None
    except RefusedFile as refused:
        fixes = {
            # /dev/zero never ends and a pipe may never answer: refused, not a MemoryError or a hang.
            "kind": f"{official}; a symbolic link must point to a regular file",
            "size": official,
            "shrank": "let whatever is writing to the data folder finish, then run again",
        }
        raise DataError(path, str(refused), fixes[refused.reason]) from None
    if verify and (mismatch := _md5_mismatch(path, raw)):
        own = "for data in CIFAR-10's format that is meant to differ, pass verify_checksums=false"
        raise DataError(path, mismatch, f"the file is damaged or not the official one: {official}; {own}")
    return raw


def _md5_mismatch(path: Path, raw: bytes) -> str | None:
    """What differs when `raw` lacks the md5 sum published for `path`'s name."""
    expected = official_md5()[path.name]
    found = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    return None if found == expected else f"md5 {found} does not match the official {expected}"


# ## Unpacking the archive


def _extract_archive(archive: Path, data_dir: Path, *, verify: bool) -> None:
    """Unpack `archive` (md5 and unpacking use the same bytes): the folder appears whole or not at all."""
    raw = _read_bytes(archive, verify=verify)
    corrupt_fix = f"move {archive} away and run again to download it afresh, or put the official file there"
    try:
        staging = Path(tempfile.mkdtemp(prefix=".cifar-10-unpacking-", dir=data_dir))
    except OSError as error:
        fix = f"make the folder writable, or unpack it yourself: tar -xzf {archive} -C {data_dir}"
        raise DataError(data_dir, f"cannot unpack {ARCHIVE_NAME} here ({error.strerror})", fix) from None
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                if unsafe := _unsafe(member):
                    raise DataError(
                        archive, f"contains {unsafe}; refusing to unpack", "use the official archive"
                    )
            # Python before 3.11.4 lacks the "data" filter; the checks above refuse all it would.
            data_filter = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(staging, members=members, **data_filter)
        unpacked = staging / BATCHES_FOLDER
        if not unpacked.is_dir():
            raise DataError(archive, f"does not contain {BATCHES_FOLDER}/", corrupt_fix)
        # Runs (or torchrun's ranks) started together on an archive-only folder each unpack into their own
        # staging folder, and the first rename wins: the others' renames fail on its folder, which came
        # whole from that rename and is checked like any other, so they use it.
        try:
            os.rename(unpacked, data_dir / BATCHES_FOLDER)
        except OSError:
            if not (data_dir / BATCHES_FOLDER).is_dir():
                raise
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        problem = f"is truncated or corrupt ({type(error).__name__}: {error})"
        raise DataError(archive, problem, corrupt_fix) from None
    except OSError as error:
        problem = f"unpacking {ARCHIVE_NAME} failed ({error.strerror})"
        raise DataError(data_dir, problem, "free disk space or fix permissions") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unsafe(member: tarfile.TarInfo) -> str | None:
    """Why unpacking `member` could write outside the staging folder (the official archive has none)."""
    if member.name.startswith(("/", "\\")) or ".." in PurePosixPath(member.name).parts:
        return f"the unsafe path {member.name!r}"
    if not (member.isfile() or member.isdir()):
        return f"{member.name!r}, which is not a plain file or folder"
    if member.size > _MAX_FILE_BYTES:  # a compressed archive could otherwise unpack to fill the disk
        return f"{member.name!r} of {member.size:,} bytes, more than any CIFAR-10 file holds"
    return None


# ## Downloading


def _download_archive(data_dir: Path, *, verify: bool) -> None:
    """
    Fetch the archive with torchvision's `download_url` into a staging folder, kept only once complete
    and (when `verify`) of the official md5; on failure every folder this call created is removed.
    """
    from torchvision.datasets.utils import download_url

    offline_fix = (
        f"put {ARCHIVE_NAME} (from {CIFAR10_URL}, e.g. copied from a machine that is online) "
        f"or the unpacked {BATCHES_FOLDER}/ folder into {data_dir}"
    )
    # The folders this call creates, innermost first.
    created = [path for path in (data_dir.absolute(), *data_dir.absolute().parents) if not path.exists()]
    staging: Path | None = None
    try:
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            problem = f"cannot be created ({error.strerror})"
            fix = "choose a data directory you can write to"
            raise DataError(Path(error.filename or data_dir), problem, fix) from None
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
            problem = f"the archive downloaded from {CIFAR10_URL} is not the official one ({mismatch})"
            raise DataError(data_dir, problem, f"run again, or {offline_fix}")
        # Several runs (or the first rank of several nodes) started together on an empty folder each
        # download into their own staging folder. An archive that appeared meanwhile came from another's
        # rename, so it is complete, and unpacking checks its bytes like any other: use it, don't fail.
        archive = data_dir / ARCHIVE_NAME
        if not archive.exists():
            os.rename(downloaded, archive)
        created = []
    except (OSError, http.client.HTTPException, ValueError, RecursionError) as error:
        reason = getattr(error, "reason", None) or error
        problem = f"CIFAR-10 is not here and downloading {CIFAR10_URL} failed ({reason})"
        raise DataError(data_dir, problem, offline_fix) from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break  # not empty: something else lives there now


# ## The images a run uses


def subset(
    images: torch.Tensor, labels: torch.Tensor, n: int, key: str, seed: int, data_dir: Path, held_out: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The class-balanced subset of `n` images the setting `key` asks for (0: all), refused in one line."""
    if n == 0:
        return images, labels
    if n > len(labels):
        after = f" after holding out valid_split={held_out}" if held_out else ""
        problem = f"{key}={n}, but the set holds only {len(labels)} images{after}"
        raise DataError(data_dir, problem, f"ask for at most {len(labels)} (0 uses all)")
    index = class_balanced_subset(labels, n, seed)
    return images[index], labels[index]
