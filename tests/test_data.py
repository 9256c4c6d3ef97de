"""
What `experiments.data` promises about the files on disk: it reads the official layout, unpacks the
archive safely, turns every fault into a one-line `DataError` that names the file and the fix, fails fast
when offline, and never deletes or changes anything the user already had.

All data here is synthetic (`experiments.synthetic`, through `tests/cifar_synthetic.py`), pickled by
Python 3 at protocol 2; the official files' Python 2 spelling is checked on the official `batches.meta`
and on a small checked-in batch in that spelling (`tests/fixtures/python2_data_batch`). Tests pass
`verify_checksums=False`, as a user with files of their own would, unless they are about checksums;
those replace the published digests with the digests of the files they wrote, so the path that
accepts a good file runs too. Hostile files are loaded in a subprocess, so that a crash inside the
loader fails its test instead of ending the test session.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import pickle
import pickletools
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
import tracemalloc
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import cifar_synthetic as synthetic
import numpy as np
import pytest
import torch

from experiments import cifar_pickle, data
from experiments.cifar_pickle import NotCifarPickle, read_pickle
from experiments.data import DataError, load_cifar10, split_validation

REPO_ROOT = Path(__file__).resolve().parent.parent

# The md5 sums published with CIFAR-10, written out here rather than read from the code under test.
PUBLISHED_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


@pytest.fixture
def unreachable_url(monkeypatch: pytest.MonkeyPatch) -> str:
    """Point downloads at a local port nobody listens on: a real, instant connection failure."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    monkeypatch.setattr(data, "CIFAR10_URL", url)
    return url


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and modification time: any change shows up here."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
    }


def load_expecting_error(data_dir: Path, **kwargs) -> DataError:
    """Load, expect a `DataError`, and check it is one clean line with no chained traceback."""
    with pytest.raises(DataError) as caught:
        load_cifar10(data_dir, **kwargs)
    error = caught.value
    message = str(error)
    assert "\n" not in message
    assert "Fix:" in message
    # Raised `from None` where it replaces a lower-level error, so no raw pickle/numpy traceback is chained.
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    return error


# ## Reading what is there


def test_reads_the_official_layout(tmp_path: Path) -> None:
    synthetic.write_synthetic_cifar10(tmp_path, n_per_train_batch=12, n_test=10)
    expected = synthetic.synthetic_arrays(12, 10)
    with warnings.catch_warnings():
        # The files name numpy's internals (`numpy.core` is deprecated in numpy 2): they are only names
        # to the loader, which never imports them.
        warnings.simplefilter("error")
        arrays = load_cifar10(tmp_path, download=False, verify_checksums=False)

    assert arrays.train_images.dtype == torch.uint8 and arrays.train_images.shape == (60, 3, 32, 32)
    assert arrays.train_labels.dtype == torch.int64 and arrays.train_labels.shape == (60,)
    assert arrays.test_images.shape == (10, 3, 32, 32) and arrays.test_labels.shape == (10,)
    train_rows = np.concatenate([expected[name][0] for name in synthetic.TRAIN_FILES])
    assert np.array_equal(arrays.train_images.reshape(60, 3072).numpy(), train_rows)
    assert arrays.train_labels.tolist() == sum((expected[name][1] for name in synthetic.TRAIN_FILES), [])
    assert np.array_equal(arrays.test_images.reshape(10, 3072).numpy(), expected[synthetic.TEST_FILE][0])
    assert arrays.classes == tuple(synthetic.CLASS_NAMES)


def test_planes_are_red_green_blue_in_row_major_order(tmp_path: Path) -> None:
    synthetic.write_synthetic_cifar10(tmp_path)
    rows, labels = synthetic.synthetic_batch(20, separable=False, seed=0)
    rows[0] = 0
    # Off the diagonal, so reading the plane as column-major (or swapping the axes) moves the value.
    rows[0, 1024 + 1 * 32 + 2] = 7  # green plane, row 1, column 2
    rows[0, 2 * 1024 + 5 * 32 + 0] = 9  # blue plane, row 5, column 0
    synthetic.write_batch_file(tmp_path / synthetic.BATCHES_FOLDER / "data_batch_1", rows, labels, "b")
    image = load_cifar10(tmp_path, download=False, verify_checksums=False).train_images[0]
    assert image[1, 1, 2] == 7 and image[2, 5, 0] == 9 and image.sum() == 16


def test_existing_folder_is_used_and_the_archive_left_alone(tmp_path: Path) -> None:
    synthetic.write_synthetic_cifar10(tmp_path)
    (tmp_path / synthetic.ARCHIVE_NAME).write_bytes(b"not even gzip")  # would fail if it were opened
    before = snapshot(tmp_path)
    load_cifar10(tmp_path, verify_checksums=False)
    assert snapshot(tmp_path) == before


# ## The official files' spelling
#
# The official files were written by Python 2's cPickle at protocol 2 with numpy 1; the synthetic ones
# by Python 3. The loader reads both without unpickling; these tests pin the Python 2 road on the real
# `batches.meta` and on a small batch written in that spelling (by the Python 2 emulator this project
# used before, whose output matched the official `batches.meta` byte for byte).

# The official `batches.meta`, 158 bytes: ten class names and two numbers, no images.
OFFICIAL_META = (
    b"\x80\x02}q\x01(U\x13num_cases_per_batchq\x02M\x10'U\x0blabel_namesq\x03]q\x04(U\x08airplaneq\x05"
    b"U\nautomobileq\x06U\x04birdq\x07U\x03catq\x08U\x04deerq\tU\x03dogq\nU\x04frogq\x0bU\x05horseq\x0c"
    b"U\x04shipq\rU\x05truckq\x0eeU\x07num_visq\x0fM\x00\x0cu."
)
PYTHON2_BATCH = Path(__file__).resolve().parent / "fixtures" / "python2_data_batch"


def opcodes(blob: bytes) -> list[tuple[str, object]]:
    return [(op.name, arg) for op, arg, _ in pickletools.genops(blob)]


def test_the_official_batches_meta_loads_with_its_published_md5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hashlib.md5(OFFICIAL_META).hexdigest() == PUBLISHED_MD5["batches.meta"]
    folder = synthetic.write_synthetic_cifar10(tmp_path, n_per_train_batch=4, n_test=6)
    (folder / "batches.meta").write_bytes(OFFICIAL_META)
    # Only the synthetic batches get digests of their own; batches.meta is checked against the real one.
    synthetic.publish_digests_of(
        monkeypatch, *(folder / name for name in [*data.TRAIN_FILES, data.TEST_FILE])
    )
    assert load_cifar10(tmp_path, download=False).classes == tuple(synthetic.CLASS_NAMES)
    assert read_pickle(OFFICIAL_META) == pickle.loads(OFFICIAL_META, encoding="latin1")


def test_a_batch_in_python_2_spelling_loads_as_the_standard_unpickler_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blob = PYTHON2_BATCH.read_bytes()
    ops = opcodes(blob)
    # What makes it the official spelling: Python 2 strings (the pixels one BINSTRING), numpy 1's names.
    assert {name for name, _ in ops if "STRING" in name or "BYTES" in name or "UNICODE" in name} == {
        "SHORT_BINSTRING",
        "BINSTRING",
    }
    assert {arg for name, arg in ops if name == "GLOBAL"} == {
        "numpy.core.multiarray _reconstruct",
        "numpy ndarray",
        "numpy dtype",
    }
    # The fixture is trusted (it is ours), so the standard unpickler may give the reference reading.
    reference = pickle.loads(blob, encoding="latin1")
    assert reference["data"].shape == (3, 3072) and reference["labels"] == [3, 1, 9]
    folder = synthetic.write_synthetic_cifar10(tmp_path, n_per_train_batch=4, n_test=6)
    shutil.copy(PYTHON2_BATCH, folder / "data_batch_1")
    synthetic.publish_digests_of(monkeypatch, *folder.iterdir())
    arrays = load_cifar10(tmp_path, download=False)
    assert arrays.train_images.shape == (3 + 4 * 4, 3, 32, 32)
    assert np.array_equal(arrays.train_images[:3].reshape(3, 3072).numpy(), reference["data"])
    assert arrays.train_labels[:3].tolist() == reference["labels"]
    assert arrays.classes == tuple(synthetic.CLASS_NAMES)


@pytest.mark.parametrize("numpy_module", ["numpy._core.multiarray", "numpy.core.multiarray"])
def test_python_3_pickles_load_whichever_numpy_wrote_them(tmp_path: Path, numpy_module: str) -> None:
    # Python 3 at protocol 2 spells bytes as `_codecs.encode` calls; numpy 2 names `numpy._core`, numpy 1
    # `numpy.core`. Both spellings describe the same arrays; labels may be an array too.
    folder = synthetic.write_synthetic_cifar10(tmp_path)
    rows, labels = synthetic.synthetic_batch(20, separable=False, seed=5)
    entry = {"batch_label": "b", "labels": np.array(labels, np.int64), "data": rows}
    blob = pickle.dumps(entry, protocol=2)
    assert b"_codecs\nencode" in blob
    (folder / "test_batch").write_bytes(re.sub(rb"numpy\._?core\.multiarray", numpy_module.encode(), blob))
    arrays = load_cifar10(tmp_path, download=False, verify_checksums=False)
    assert np.array_equal(arrays.test_images.reshape(20, 3072).numpy(), rows)
    assert arrays.test_labels.tolist() == labels


def test_the_parser_reads_what_python_3_writes_as_the_unpickler_does() -> None:
    value = {
        "ints": [0, 1, 255, 256, 65535, 65536, -1, 2**31, 2**70, -(2**70)],
        "text": ["", "a", "é", "x" * 300],
        "bytes": [b"", b"\xff\x00", bytes(range(256)) * 2],
        "nested": [(1, (2, [3, {"k": None}])), True, False],
        # Python fills lists and dicts a thousand items at a time, and a single item on its own.
        "long": [list(range(2500)), {str(i): i for i in range(1001)}, [7], {"k": 1}],
        **{code: np.arange(12, dtype=code).reshape(3, 4) for code in ["u1", "i1", "<i2", ">i4", "<u8", "i8"]},
    }
    blob = pickle.dumps(value, protocol=2)
    parsed, reference = read_pickle(blob), pickle.loads(blob)
    for key in ["ints", "text", "bytes", "nested", "long"]:
        assert parsed[key] == reference[key]
    for code in ["u1", "i1", "<i2", ">i4", "<u8", "i8"]:
        # numpy's own loading may swap a big-endian array to native order; the numbers are what count.
        assert parsed[code].dtype.kind == reference[code].dtype.kind
        assert parsed[code].dtype.itemsize == reference[code].dtype.itemsize
        assert parsed[code].tolist() == reference[code].tolist()
        assert parsed[code].flags.writeable and parsed[code].flags.c_contiguous


def test_the_parser_builds_what_python_3_writes_at_its_most_compact() -> None:
    # The parser builds at most twice a file's size. Python 3 comes closest: bytes below 0x80 take one
    # byte of UTF-8 text each, which becomes a byte string and then the array. CPython also shares one
    # object for `b""` and for each one-byte string, so a legitimate file may use the same bytes twice.
    value = {
        "data": np.zeros((20, 3072), np.uint8),
        "shared": [np.array([7], np.uint8), np.array([7], np.uint8), np.zeros(0, np.uint8)] * 2,
    }
    blob = pickle.dumps(value, protocol=2)
    built = 2 * value["data"].nbytes  # the text's bytes, then the array
    assert built > 0.99 * (2 * len(blob)), "within 1% of the allowance: as compact as Python 3 writes"
    parsed = read_pickle(blob)
    assert np.array_equal(parsed["data"], value["data"])
    assert [array.tolist() for array in parsed["shared"]] == [[7], [7], []] * 2


# ## Checksums on: the path every real user takes


def flip_a_pixel(path: Path) -> None:
    """Change one byte of the image payload: the file still unpickles, only its md5 sum tells."""
    blob = bytearray(path.read_bytes())
    # An ASCII byte, whose lowest bit may flip without breaking the UTF-8 that Python 3 writes text in.
    at = next(i for i in range(len(blob) // 2, len(blob)) if blob[i] < 0x80)
    blob[at] ^= 0x01
    path.write_bytes(bytes(blob))


def test_the_sums_checked_are_the_published_ones_and_the_names_torchvisions() -> None:
    from torchvision.datasets import CIFAR10

    assert data.official_md5() == PUBLISHED_MD5
    assert data.TRAIN_FILES == tuple(name for name, _ in CIFAR10.train_list)
    assert (data.TEST_FILE,) == tuple(name for name, _ in CIFAR10.test_list)
    assert data.META_FILE == CIFAR10.meta["filename"] and data.BATCHES_FOLDER == CIFAR10.base_folder
    assert data.ARCHIVE_NAME == CIFAR10.filename and data.CIFAR10_URL == CIFAR10.url


def test_files_with_the_expected_digests_load_with_checksums_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = synthetic.write_synthetic_cifar10(tmp_path, n_per_train_batch=4, n_test=6)
    synthetic.publish_digests_of(monkeypatch, *folder.iterdir())
    arrays = load_cifar10(tmp_path, download=False)
    assert arrays.train_images.shape == (20, 3, 32, 32) and arrays.test_images.shape == (6, 3, 32, 32)
    assert arrays.classes == tuple(synthetic.CLASS_NAMES)


@pytest.mark.parametrize("name", ["data_batch_4", "test_batch", "batches.meta"])
def test_one_byte_off_fails_the_check_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    folder = synthetic.write_synthetic_cifar10(tmp_path, n_per_train_batch=4, n_test=6)
    digests = synthetic.publish_digests_of(monkeypatch, *folder.iterdir())
    if name == "batches.meta":
        # A class name one letter off, same length: as readable as the original.
        (folder / name).write_bytes((folder / name).read_bytes().replace(b"horse", b"horsf"))
    else:
        flip_a_pixel(folder / name)
    assert load_cifar10(tmp_path, download=False, verify_checksums=False), "only the md5 sum can tell"
    before = snapshot(tmp_path)
    error = load_expecting_error(tmp_path, download=False)
    assert str(error).startswith(f"{folder / name}: md5 ") and digests[name] in str(error)
    assert snapshot(tmp_path) == before


def gzip_with_another_timestamp(archive: Path) -> None:
    """One byte of the gzip header's timestamp changed: the archive still unpacks, to the same files."""
    blob = bytearray(archive.read_bytes())
    blob[4] ^= 0x01
    archive.write_bytes(bytes(blob))


def test_an_archive_with_the_expected_digest_unpacks_and_loads_with_checksums_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tarfile.open(
        synthetic.write_synthetic_cifar10_archive(tmp_path / "made", n_per_train_batch=4, n_test=4)
    ) as tar:
        tar.extractall(tmp_path / "made", filter="data")
    members = sorted((tmp_path / "made" / synthetic.BATCHES_FOLDER).iterdir())
    archive = shutil.copy(tmp_path / "made" / synthetic.ARCHIVE_NAME, tmp_path / synthetic.ARCHIVE_NAME)
    synthetic.publish_digests_of(monkeypatch, Path(archive), *members)
    arrays = load_cifar10(tmp_path, download=False)
    assert arrays.train_images.shape == (20, 3, 32, 32)
    assert (tmp_path / synthetic.BATCHES_FOLDER).is_dir() and Path(archive).is_file()


def test_an_archive_one_byte_off_is_refused_and_nothing_unpacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = synthetic.write_synthetic_cifar10_archive(tmp_path, n_per_train_batch=4, n_test=4)
    digests = synthetic.publish_digests_of(monkeypatch, archive)
    gzip_with_another_timestamp(archive)
    with tarfile.open(archive) as tar:
        assert len(tar.getmembers()) == 8, "still a sound archive"
    before = snapshot(tmp_path)
    error = load_expecting_error(tmp_path)
    assert str(error).startswith(f"{archive}: md5 ") and digests[archive.name] in str(error)
    assert snapshot(tmp_path) == before


# ## The archive


def test_only_the_archive_present_is_unpacked_next_to_it(tmp_path: Path) -> None:
    archive = synthetic.write_synthetic_cifar10_archive(tmp_path, n_per_train_batch=4, n_test=6)
    archive_before = snapshot(tmp_path)
    arrays = load_cifar10(tmp_path, download=False, verify_checksums=False)
    assert arrays.train_images.shape == (20, 3, 32, 32)
    assert sorted(path.name for path in tmp_path.iterdir()) == [synthetic.BATCHES_FOLDER, archive.name]
    assert {archive.name: snapshot(tmp_path)[archive.name]} == archive_before
    # A second load reads the folder it unpacked.
    assert torch.equal(
        load_cifar10(tmp_path, download=False, verify_checksums=False).train_images, arrays.train_images
    )


def write_archive(path: Path, members: list[tarfile.TarInfo]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)


def file_member(name: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.size = 1
    return member


def link_member(name: str, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = tarfile.SYMTYPE
    member.linkname = target
    return member


@pytest.mark.parametrize(
    "member",
    [
        file_member("cifar-10-batches-py/../../escaped"),
        file_member("/tmp/cifar-absolute-escape"),
        link_member("cifar-10-batches-py/data_batch_1", "/etc/passwd"),
    ],
    ids=["dot-dot", "absolute", "symlink"],
)
def test_archive_members_that_could_escape_are_refused(tmp_path: Path, member: tarfile.TarInfo) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    harmless = file_member("cifar-10-batches-py/batches.meta")
    write_archive(data_dir / synthetic.ARCHIVE_NAME, [harmless, member])
    before = snapshot(data_dir)
    error = load_expecting_error(data_dir, verify_checksums=False)
    assert synthetic.ARCHIVE_NAME in str(error) and "refusing" in str(error)
    assert snapshot(data_dir) == before
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/cifar-absolute-escape").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_archive_is_reported_and_kept(tmp_path: Path, damage: str) -> None:
    archive = synthetic.write_synthetic_cifar10_archive(tmp_path, n_per_train_batch=4, n_test=4)
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else b"\x00" * 512)
    before = snapshot(tmp_path)
    error = load_expecting_error(tmp_path, verify_checksums=False)
    assert str(archive) in str(error) and "truncated or corrupt" in str(error)
    assert snapshot(tmp_path) == before, "the archive stays, and no half-unpacked folder is left behind"


def test_archive_md5_mismatch_when_verifying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = synthetic.write_synthetic_cifar10_archive(tmp_path, n_per_train_batch=4, n_test=4)
    before = snapshot(tmp_path)
    error = load_expecting_error(tmp_path)
    assert str(archive) in str(error) and "md5" in str(error) and PUBLISHED_MD5[archive.name] in str(error)
    assert snapshot(tmp_path) == before


def test_an_archive_of_your_own_unpacks_with_verify_checksums_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # verify_checksums=False (the trainer's setting for sets made in CIFAR-10's format) skips the md5
    # of the archive as well as of the files in it; every other check still runs.
    archive = synthetic.write_synthetic_cifar10_archive(tmp_path, n_per_train_batch=4, n_test=4)
    arrays = load_cifar10(tmp_path, download=False, verify_checksums=False)
    assert arrays.train_images.shape == (20, 3, 32, 32) and arrays.test_images.shape == (4, 3, 32, 32)
    assert archive.is_file() and (tmp_path / data.BATCHES_FOLDER).is_dir()


# ## Faults in the unpacked files


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-200])


def overwrite_with_garbage(path: Path) -> None:
    # Seeded, so the garbage cannot happen to open like a pickle of another protocol.
    path.write_bytes(random.Random(0).randbytes(1000))


def replace_with(path: Path, content: object) -> None:
    path.write_bytes(pickle.dumps(content, protocol=2))


def rewrite(path: Path, changes: dict[str, object]) -> None:
    entry = pickle.loads(path.read_bytes())  # our own synthetic file, so the standard unpickler may read it
    entry.update(changes)
    path.write_bytes(pickle.dumps(entry, protocol=2))


class RunsShellCommand:
    """A pickle that would run a shell command when loaded by a plain `pickle.load`."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


FAULTS: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "missing": ("data_batch_3", lambda path: path.unlink(), "is missing"),
    "missing meta": ("batches.meta", lambda path: path.unlink(), "is missing"),
    "truncated": ("data_batch_2", truncate, "truncated or corrupt"),
    "corrupt": ("test_batch", overwrite_with_garbage, "truncated or corrupt"),
    "wrong image width": (
        "data_batch_4",
        lambda path: rewrite(path, {"data": np.zeros((20, 3000), np.uint8)}),
        "expected [n>0, 3072]",
    ),
    "float images": (
        "data_batch_1",
        lambda path: rewrite(path, {"data": np.zeros((20, 3072), np.float32)}),
        "expected uint8",
    ),
    "int16 images": (
        "data_batch_1",
        lambda path: rewrite(path, {"data": np.zeros((20, 3072), np.int16)}),
        "expected uint8",
    ),
    "labels not ints": ("data_batch_2", lambda path: rewrite(path, {"labels": ["0"] * 20}), "flat list of"),
    "protocol 4": ("data_batch_3", lambda path: path.write_bytes(pickle.dumps({}, protocol=4)), "protocol 2"),
    "labels count": ("data_batch_5", lambda path: rewrite(path, {"labels": [0] * 19}), "but 19 labels"),
    "label 10": ("test_batch", lambda path: rewrite(path, {"labels": [10] * 20}), "outside 0..9"),
    "label -1": ("data_batch_1", lambda path: rewrite(path, {"labels": [-1] + [0] * 19}), "outside 0..9"),
    "no labels": ("data_batch_1", lambda path: replace_with(path, {"data": 1}), "'labels'"),
    "not a dict": ("data_batch_1", lambda path: replace_with(path, [1, 2]), "not a CIFAR-10"),
    "meta without names": ("batches.meta", lambda path: rewrite(path, {"label_names": []}), "class names"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_file_faults_give_one_line_naming_the_file_and_touch_nothing(tmp_path: Path, fault: str) -> None:
    name, damage, problem = FAULTS[fault]
    folder = synthetic.write_synthetic_cifar10(tmp_path)
    damage(folder / name)
    before = snapshot(tmp_path)
    error = load_expecting_error(tmp_path, verify_checksums=False)
    assert str(folder / name) in str(error)
    assert problem in str(error)
    assert snapshot(tmp_path) == before


def test_a_pickle_that_would_run_code_is_refused_not_run(tmp_path: Path) -> None:
    folder = synthetic.write_synthetic_cifar10(tmp_path)
    sentinel = tmp_path / "ran"
    (folder / "data_batch_1").write_bytes(pickle.dumps(RunsShellCommand(f"touch {sentinel}"), protocol=2))
    error = load_expecting_error(tmp_path, verify_checksums=False)
    assert "data_batch_1" in str(error) and "system" in str(error)
    assert not sentinel.exists()


# ## Hostile files
#
# Files crafted to make the loader build something other than arrays of numbers, assembled here opcode
# by opcode in the official files' Python 2 spelling. The first is the reported attack: a dtype whose
# state names an object field while claiming to hold no objects, which numpy's own `__setstate__` would
# accept, taking eight bytes of the file for a pointer (a segmentation fault when a class name is read).
# All cases are loaded in one subprocess, so that a crash fails these tests instead of ending the test
# session; each is loaded with checksums off, and on with the hostile file's own md5 published (as if
# the digest list had been forged), and must end in the one-line refusal naming the file.


def p_int(value: int) -> bytes:
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def p_str(raw: bytes) -> bytes:
    return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<i", len(raw))) + raw


def p_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def p_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def p_list(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"


def p_dict(**items: bytes) -> bytes:
    return b"}(" + b"".join(p_str(key.encode()) + value for key, value in items.items()) + b"u"


def p_dtype(
    code: str, subarray: bytes = b"N", names: bytes = b"N", fields: bytes = b"N", *sizes: int
) -> bytes:
    """numpy.dtype(code, 0, 1) with a version-3 state; `sizes` are (itemsize, alignment, flags)."""
    itemsize, alignment, flags = sizes or (-1, -1, 0)
    state = p_tuple(
        p_int(3), p_str(b"|"), subarray, names, fields, p_int(itemsize), p_int(alignment), p_int(flags)
    )
    return (
        p_global("numpy", "dtype") + p_tuple(p_str(code.encode()), p_int(0), p_int(1)) + b"R" + state + b"b"
    )


UINT8 = p_dtype("u1")
NEW_ARRAY = p_global("numpy.core.multiarray", "_reconstruct")
NEW_ARRAY += p_tuple(p_global("numpy", "ndarray"), p_tuple(p_int(0)), p_str(b"b")) + b"R"


def p_array(shape: tuple[int, ...], dtype: bytes, raw: bytes, fortran: bytes = b"\x89") -> bytes:
    return NEW_ARRAY + p_tuple(p_int(1), p_tuple(*map(p_int, shape)), dtype, fortran, p_str(raw)) + b"b"


def p_file(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def hostile_batch(
    data: bytes, labels: bytes = p_list(*[p_int(0)] * 20), filenames: bytes = p_list()
) -> bytes:
    return p_file(p_dict(batch_label=p_str(b"b"), labels=labels, data=data, filenames=filenames))


def hostile_meta(names: list[bytes]) -> bytes:
    return p_file(p_dict(num_cases_per_batch=p_int(20), label_names=p_list(*names), num_vis=p_int(3072)))


PIXELS = bytes(20 * 3072)
REUSES = 1000  # how often the cases below ask for the same bytes again: 61 MB from a file of 0.3 MB


def p_reused_as_arrays(raw: bytes, times: int) -> bytes:
    """A list of `times` arrays, all from the one string `raw`: stored in the memo once, then fetched."""
    state = p_int(1), p_tuple(p_int(len(raw))), UINT8, b"\x89"
    first = NEW_ARRAY + p_tuple(*state, p_str(raw) + b"q\x01") + b"b"  # BINPUT 1
    again = NEW_ARRAY + p_tuple(*state, b"h\x01") + b"b"  # BINGET 1
    return p_list(first, *[again] * (times - 1))


def p_reused_as_bytes(raw: bytes, times: int) -> bytes:
    """A list of `times` byte strings, Python 3's `_codecs.encode` calls on the one text `raw`."""
    encode, latin1 = p_global("_codecs", "encode"), p_str(b"latin1")
    first = encode + p_tuple(p_str(raw) + b"q\x01", latin1) + b"R"
    again = encode + p_tuple(b"h\x01", latin1) + b"R"
    return p_list(first, *[again] * (times - 1))


OBJECT = p_dtype("O8", b"N", b"N", b"N", -1, -1, 63)
# An object field at offset 0 of an 8-byte void dtype whose flags (0) claim it holds no objects.
OBJECT_FIELD = p_dtype("V8", b"N", p_tuple(p_str(b"a")), p_dict(a=p_tuple(OBJECT, p_int(0))), 8, 1, 0)
HOSTILE: dict[str, tuple[str, bytes]] = {
    "object field in a dtype claiming none": (
        "batches.meta",
        hostile_meta([p_array((1,), OBJECT_FIELD, b"A" * 8)] * 10),
    ),
    "object dtype": ("data_batch_1", hostile_batch(p_array((20, 3072), OBJECT, b"A" * 8 * 20 * 3072))),
    "structured dtype": (
        "data_batch_2",
        hostile_batch(
            p_array(
                (20, 3072),
                p_dtype("V1", b"N", p_tuple(p_str(b"r")), p_dict(r=p_tuple(UINT8, p_int(0))), 1, 1, 0),
                PIXELS,
            )
        ),
    ),
    "sub-array dtype": (
        "data_batch_3",
        hostile_batch(
            p_array(
                (20,), p_dtype("V3072", p_tuple(UINT8, p_tuple(p_int(3072))), b"N", b"N", 3072, 1, 0), PIXELS
            )
        ),
    ),
    "fields under a uint8 code": (
        "batches.meta",
        hostile_meta(
            [
                p_array(
                    (1,), p_dtype("u1", b"N", p_tuple(p_str(b"a")), p_dict(a=p_tuple(UINT8, p_int(0)))), b"A"
                )
            ]
            * 10
        ),
    ),
    "sub-array under a uint8 code": (
        "data_batch_1",
        hostile_batch(p_array((20,), p_dtype("u1", p_tuple(UINT8, p_tuple(p_int(3072)))), PIXELS)),
    ),
    "dtype flags claiming objects": (
        "data_batch_4",
        hostile_batch(p_array((20, 3072), p_dtype("u1", b"N", b"N", b"N", -1, -1, 63), PIXELS)),
    ),
    "huge shape": ("data_batch_5", hostile_batch(p_array((10**6, 10**6), UINT8, PIXELS))),
    "huge shape, matching bytes overflow": (
        "data_batch_5",
        hostile_batch(p_array((2**32, 2**32, 2**32), UINT8, PIXELS)),
    ),
    "negative shape": ("test_batch", hostile_batch(p_array((-20, 3072), UINT8, PIXELS))),
    "fortran order": ("data_batch_1", hostile_batch(p_array((20, 3072), UINT8, PIXELS, fortran=b"\x88"))),
    "byte length mismatch": ("data_batch_2", hostile_batch(p_array((20, 3072), UINT8, PIXELS[:100]))),
    "class names that are numbers": ("batches.meta", hostile_meta([p_int(i) for i in range(10)])),
    "class names that are arrays": ("batches.meta", hostile_meta([p_array((1,), UINT8, b"a")] * 10)),
    "array used before it is described": (
        "data_batch_3",
        hostile_batch(p_array((20, 3072), UINT8, PIXELS), p_list(NEW_ARRAY)),
    ),
    "labels a list that holds itself": (
        "data_batch_2",
        hostile_batch(p_array((20, 3072), UINT8, PIXELS), b"]q\x01(h\x01e"),
    ),
    "labels nested 100,000 deep": (
        "data_batch_3",
        hostile_batch(p_array((20, 3072), UINT8, PIXELS), b"](" * 100_000 + b"e" * 100_000),
    ),
    "ndarray constructed directly": (
        "data_batch_4",
        hostile_batch(
            p_global("numpy", "ndarray") + p_tuple(p_tuple(p_int(10**6), p_int(10**6)), p_str(b"u1")) + b"R"
        ),
    ),
    "array rebuilder with a shape of its own": (
        "data_batch_5",
        hostile_batch(
            p_global("numpy.core.multiarray", "_reconstruct")
            + p_tuple(p_global("numpy", "ndarray"), p_tuple(p_int(10**12)), p_str(b"b"))
            + b"R"
        ),
    ),
    "state set on a dict": ("test_batch", hostile_batch(p_dict() + p_dict(__class__=p_str(b"x")) + b"b")),
    "bytes decoded by another codec": (
        "test_batch",
        hostile_batch(p_global("_codecs", "encode") + p_tuple(p_str(b"78"), p_str(b"hex")) + b"R"),
    ),
    "os.system": (
        "data_batch_1",
        hostile_batch(p_global("os", "system") + p_tuple(p_str(b"touch SENTINEL")) + b"R"),
    ),
    "builtins.eval": (
        "batches.meta",
        p_file(p_global("builtins", "eval") + p_tuple(p_str(b"open('SENTINEL', 'w')")) + b"R"),
    ),
    # A batch otherwise fine: the loader never looks at `filenames`, so only the parser can refuse these.
    "the pixels reused as many arrays": (
        "data_batch_2",
        hostile_batch(p_array((20, 3072), UINT8, PIXELS), filenames=p_reused_as_arrays(PIXELS, REUSES)),
    ),
    "one text reused as many byte strings": (
        "test_batch",
        hostile_batch(p_array((20, 3072), UINT8, PIXELS), filenames=p_reused_as_bytes(PIXELS, REUSES)),
    ),
}

LOAD_HOSTILE_SCRIPT = """
import hashlib, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from experiments import data
for folder in sys.argv[2:]:
    files = Path(folder, data.BATCHES_FOLDER)
    forged = {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in files.iterdir()}
    for verify in (False, True):
        data.official_md5 = lambda: forged
        try:
            data.load_cifar10(folder, download=False, verify_checksums=verify)
            outcome = "loaded"
        except data.DataError as error:
            outcome = str(error)
        print(json.dumps([Path(folder).name, verify, outcome]), flush=True)
"""


@pytest.fixture(scope="module")
def hostile_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], str]:
    """What loading each hostile case said, by (case, checksums on): the error, "loaded", or a crash."""
    root = tmp_path_factory.mktemp("hostile")
    folders = []
    for i, (name, content) in enumerate(HOSTILE.values()):
        folder = root / f"case{i}"
        synthetic.write_synthetic_cifar10(folder)
        (folder / data.BATCHES_FOLDER / name).write_bytes(
            content.replace(b"SENTINEL", str(root / "ran").encode())
        )
        folders.append(str(folder))
    outcomes: dict[tuple[str, bool], str] = {}
    while folders:
        command = [sys.executable, "-c", LOAD_HOSTILE_SCRIPT, str(REPO_ROOT), *folders]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=root)
        for case, verify, message in map(json.loads, result.stdout.splitlines()):
            outcomes[case, verify] = message
        if result.returncode == 0:
            break
        # The loader died (a crash): blame the first unfinished case and go on with the ones after it.
        died = next(i for i, folder in enumerate(folders) if (Path(folder).name, True) not in outcomes)
        for verify in (False, True):
            crash = f"the loader died with exit status {result.returncode}: {result.stderr[-500:]}"
            outcomes.setdefault((Path(folders[died]).name, verify), crash)
        folders = folders[died + 1 :]
    assert not (root / "ran").exists(), "a hostile file ran code"
    return outcomes


@pytest.mark.parametrize("verify", [False, True], ids=["checksums off", "checksums on"])
@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_file_is_refused_in_one_line(
    hostile_outcomes: dict[tuple[str, bool], str], case: str, verify: bool
) -> None:
    message = hostile_outcomes[f"case{list(HOSTILE).index(case)}", verify]
    name = HOSTILE[case][0]
    assert f"{data.BATCHES_FOLDER}/{name}: " in message, message
    assert "\n" not in message and "Fix:" in message
    refusals = ("is not a CIFAR-10 file", "class names that are not text", "not a flat list of integers")
    assert any(refusal in message for refusal in refusals), message


@pytest.mark.parametrize("reuse", [p_reused_as_arrays, p_reused_as_bytes], ids=["arrays", "byte strings"])
def test_bytes_reused_from_the_memo_are_refused_before_they_fill_memory(
    reuse: Callable[[bytes, int], bytes],
) -> None:
    blob = p_file(reuse(PIXELS, REUSES))
    tracemalloc.start()  # numpy reports its arrays' memory to tracemalloc too
    try:
        with pytest.raises(NotCifarPickle, match=r"^asks for more than [\d,]+ bytes .* reusing its data"):
            read_pickle(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # What was built stays within the allowance: nowhere near the 61 MB the file asks for.
    assert peak < 5 * len(blob) < len(PIXELS) * REUSES / 50, f"peak {peak:,} bytes for {len(blob):,}"


def test_a_file_of_countless_tiny_values_is_refused_before_they_fill_memory() -> None:
    # One byte of file per empty list, ~60 bytes each once built: only the count of values bounds it.
    count = cifar_pickle.MAX_OPCODES + 1
    blob = b"\x80\x02(" + b"]" * count + b"l."  # PROTO 2, MARK, EMPTY_LIST..., LIST, STOP
    tracemalloc.start()
    try:
        with pytest.raises(
            NotCifarPickle, match=r"^holds more than [\d,]+ values, which no CIFAR-10 file needs"
        ):
            read_pickle(blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"peak {peak:,} bytes"


def test_an_archive_member_larger_than_any_cifar10_file_is_not_unpacked() -> None:
    # With checksums off, a compressed archive of one's own is unpacked unverified: a member claiming
    # gigabytes (a gzip bomb) is refused before it reaches the disk.
    member = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    member.size = data._MAX_FILE_BYTES + 1
    assert "more than any CIFAR-10 file holds" in (data._unsafe(member) or "")
    member.size = data._MAX_FILE_BYTES
    assert data._unsafe(member) is None


CIFAR10_SCRIPT = REPO_ROOT / "experiments" / "cifar10.py"
REPRODUCTION = HOSTILE["object field in a dtype claiming none"][1]


def run_cifar10(*argv: str) -> subprocess.CompletedProcess:
    """The trainer's command line in a subprocess, on one thread, with a tiny network."""
    from synthetic_main import TINY_MODEL  # imports the trainer: only for the tests that run it

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(CIFAR10_SCRIPT), *argv, "--device", "cpu", "--epochs", "1", *TINY_MODEL]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def assert_refused_in_one_line(result: subprocess.CompletedProcess, path: Path) -> str:
    """Exit status 1, nothing on stdout, and one line on stderr that names `path`."""
    assert result.returncode == 1, f"exit status {result.returncode}: {result.stderr[-2000:]}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), result.stderr[-2000:]
    assert result.stdout.strip() == ""
    return lines[0]


def write_reproduction(root: Path) -> Path:
    """The reported attack: a CIFAR-10 folder whose class names point numpy at address 0x4141414141414141."""
    folder = synthetic.write_synthetic_cifar10(root, separable=True)
    (folder / data.META_FILE).write_bytes(REPRODUCTION)
    return folder


def test_the_reported_attack_is_refused_by_the_trainer_with_checksums_off_and_on(tmp_path: Path) -> None:
    folder = write_reproduction(tmp_path / "data")
    args = ["--data-dir", str(tmp_path / "data"), "--logs-dir", str(tmp_path / "logs")]
    line = assert_refused_in_one_line(run_cifar10(*args, "verify_checksums=false"), folder / data.META_FILE)
    assert "is not a CIFAR-10 file" in line
    line = assert_refused_in_one_line(run_cifar10(*args), folder / data.META_FILE)
    assert "md5" in line
    assert not (tmp_path / "logs").exists(), "nothing is written for a run that never starts"


def test_the_reported_attack_packed_as_the_archive_is_refused(tmp_path: Path) -> None:
    made = write_reproduction(tmp_path / "made")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / data.ARCHIVE_NAME, "w:gz") as tar:
        tar.add(made, arcname=data.BATCHES_FOLDER)
    args = ["--data-dir", str(data_dir), "--logs-dir", str(tmp_path / "logs"), "verify_checksums=false"]
    line = assert_refused_in_one_line(run_cifar10(*args), data_dir / data.BATCHES_FOLDER / data.META_FILE)
    assert "is not a CIFAR-10 file" in line


def test_the_reported_attack_is_refused_by_eval(tmp_path: Path) -> None:
    from synthetic_main import run_trainer, tiny_args, write_data

    good = write_data(tmp_path / "good")
    assert run_trainer(tiny_args(good, tmp_path / "logs")) == 0
    (run_dir,) = (tmp_path / "logs" / "cifar10").iterdir()
    checkpoint = run_dir / "checkpoints" / "last.pt"
    folder = write_reproduction(tmp_path / "hostile")
    args = ["--eval", str(checkpoint), "--data-dir", str(tmp_path / "hostile"), "verify_checksums=false"]
    line = assert_refused_in_one_line(run_cifar10(*args), folder / data.META_FILE)
    assert "is not a CIFAR-10 file" in line


# ## One read per file: the bytes checked are the bytes used
#
# Someone who can write to the data folder swaps a file between the moment it is checked and the moment
# it is used (the attack needs no race luck if the loader opens the file twice). These tests replace the
# file on disk, by a rename as an attacker would, right after anything first opens it.


def swap_after_first_open(monkeypatch: pytest.MonkeyPatch, path: Path, replacement: bytes) -> list[str]:
    """Put `replacement` in place of `path` once anything opens it; returns the modes it was opened in."""
    real_open = os.open
    opened: list[str] = []

    def watching_open(file: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        descriptor = real_open(file, flags, *args, **kwargs)
        if Path(file).absolute() == path.absolute():
            opened.append("rb" if flags & (os.O_WRONLY | os.O_RDWR) == 0 else "w")
            if len(opened) == 1:
                staged = path.with_name(path.name + ".swapped-in")
                staged.write_bytes(replacement)
                os.replace(staged, path)
        return descriptor

    monkeypatch.setattr(os, "open", watching_open)
    return opened


def test_a_batch_swapped_after_it_is_read_cannot_change_what_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = synthetic.write_synthetic_cifar10(tmp_path, n_per_train_batch=4, n_test=6)
    synthetic.publish_digests_of(monkeypatch, *folder.iterdir())
    verified = load_cifar10(tmp_path, download=False)
    other = tmp_path / "other"
    synthetic.write_batch_file(other, *synthetic.synthetic_batch(4, separable=True, seed=7), "swapped in")
    opened = swap_after_first_open(monkeypatch, folder / "data_batch_1", other.read_bytes())
    arrays = load_cifar10(tmp_path, download=False)
    assert opened == ["rb"], "one read, hashed and parsed"
    assert torch.equal(arrays.train_images, verified.train_images)
    assert torch.equal(arrays.train_labels, verified.train_labels)


def test_a_damaged_batch_swapped_for_the_good_one_after_it_is_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The order of the reported attack: the loader parses one file while the md5 is taken of another.
    folder = synthetic.write_synthetic_cifar10(tmp_path, n_per_train_batch=4, n_test=6)
    digests = synthetic.publish_digests_of(monkeypatch, *folder.iterdir())
    good = (folder / "test_batch").read_bytes()
    flip_a_pixel(folder / "test_batch")
    swap_after_first_open(monkeypatch, folder / "test_batch", good)
    error = load_expecting_error(tmp_path, download=False)
    assert str(error).startswith(f"{folder / 'test_batch'}: md5 ") and digests["test_batch"] in str(error)


def test_an_archive_swapped_after_it_is_read_cannot_change_what_is_unpacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = synthetic.write_synthetic_cifar10_archive(tmp_path / "made", n_per_train_batch=4, n_test=4)
    with tarfile.open(made) as tar:
        tar.extractall(tmp_path / "made", filter="data")
    members = sorted((tmp_path / "made" / data.BATCHES_FOLDER).iterdir())
    archive = Path(shutil.copy(made, tmp_path / data.ARCHIVE_NAME))
    synthetic.publish_digests_of(monkeypatch, archive, *members)
    other = synthetic.write_synthetic_cifar10_archive(
        tmp_path / "other", n_per_train_batch=4, n_test=4, seed=3
    )
    opened = swap_after_first_open(monkeypatch, archive, other.read_bytes())
    arrays = load_cifar10(tmp_path, download=False)
    assert opened == ["rb"], "one read, hashed and unpacked"
    for member in members:
        assert (tmp_path / data.BATCHES_FOLDER / member.name).read_bytes() == member.read_bytes()
    assert arrays.train_images.shape == (20, 3, 32, 32)


def change_after_fstat(monkeypatch: pytest.MonkeyPatch, path: Path, change: Callable[[Path], None]) -> None:
    """Apply `change` to `path` on disk once the loader has taken the status of its open file."""
    real_fstat = os.fstat
    inode = path.stat().st_ino
    changed: list[bool] = []

    def fstat_then_change(descriptor: int) -> os.stat_result:
        status = real_fstat(descriptor)
        if status.st_ino == inode and not changed:
            changed.append(True)
            change(path)
        return status

    monkeypatch.setattr(data.os, "fstat", fstat_then_change)


def test_a_batch_that_grows_while_it_is_read_loads_as_it_was_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = synthetic.write_synthetic_cifar10(tmp_path, n_per_train_batch=4, n_test=6)
    synthetic.publish_digests_of(monkeypatch, *folder.iterdir())
    verified = load_cifar10(tmp_path, download=False)
    with_more = lambda path: path.write_bytes(path.read_bytes() + b"more")  # noqa: E731
    change_after_fstat(monkeypatch, folder / "data_batch_3", with_more)
    arrays = load_cifar10(tmp_path, download=False)  # checksums on: the md5 is of the bytes parsed
    assert torch.equal(arrays.train_images, verified.train_images)


def test_a_batch_that_shrinks_while_it_is_read_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = synthetic.write_synthetic_cifar10(tmp_path, n_per_train_batch=4, n_test=6)
    change_after_fstat(monkeypatch, folder / "test_batch", truncate)
    error = load_expecting_error(tmp_path, download=False, verify_checksums=False)
    assert str(error).startswith(f"{folder / 'test_batch'}: shrank from ")


# ## Only regular files, and only as large as CIFAR-10's
#
# Reading a file whole is safe only when it has an end, and one that fits in memory. A link to a device
# such as /dev/zero never ends, and opening a named pipe waits for a writer that may never come; a file
# far larger than any in CIFAR-10 is the wrong file. Each is refused in one line before it is read.


def test_a_link_to_a_device_is_refused_in_one_line(tmp_path: Path) -> None:
    # The report linked /dev/zero. /dev/null is refused by the same check (both are character devices),
    # but should the check ever go, reading it ends at once instead of filling the test machine's memory.
    folder = synthetic.write_synthetic_cifar10(tmp_path)
    (folder / "batches.meta").unlink()
    (folder / "batches.meta").symlink_to("/dev/null")
    error = load_expecting_error(tmp_path, verify_checksums=False)
    assert str(error).startswith(
        f"{folder / 'batches.meta'}: is a device, not a regular file, so it is not a CIFAR-10 file. Fix: "
    )
    assert "a symbolic link must point to a regular file" in str(error)


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    folder = synthetic.write_synthetic_cifar10(tmp_path)
    pipe = folder / "data_batch_4"
    pipe.unlink()
    os.mkfifo(pipe)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            outcome.append(load_expecting_error(tmp_path, verify_checksums=False))
        except BaseException as failure:  # noqa: BLE001 - a failed check, handed to the test's thread
            outcome.append(failure)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    loader.join(timeout=20)
    if loader.is_alive():
        os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))  # a writer that leaves at once frees the reader
        loader.join()
        pytest.fail("the loader waited for something to write to a named pipe")
    (error,) = outcome
    if not isinstance(error, DataError):
        raise error
    assert str(error).startswith(
        f"{pipe}: is a named pipe, not a regular file, so it is not a CIFAR-10 file. Fix: "
    )


@pytest.mark.parametrize("name", ["data_batch_1", data.ARCHIVE_NAME])
def test_a_file_larger_than_cifar_10_needs_is_refused_before_it_is_read(tmp_path: Path, name: str) -> None:
    if name == data.ARCHIVE_NAME:
        path, limit = tmp_path / name, data._MAX_ARCHIVE_BYTES
    else:
        path, limit = synthetic.write_synthetic_cifar10(tmp_path) / name, data._MAX_FILE_BYTES
    # Sparse: the file claims its size without the test writing it, and is read only if not refused.
    with open(path, "wb") as file:
        file.truncate(limit + 1)
    error = load_expecting_error(tmp_path, download=False, verify_checksums=False)
    what = "the CIFAR-10 archive" if name == data.ARCHIVE_NAME else "a CIFAR-10 file"
    assert str(error).startswith(
        f"{path}: holds {limit + 1:,} bytes, over the {limit:,} allowed for {what}. Fix: "
    )


def test_md5_mismatch_when_verifying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = synthetic.write_synthetic_cifar10(tmp_path)
    before = snapshot(tmp_path)
    error = load_expecting_error(tmp_path)
    assert "md5" in str(error) and str(folder) in str(error)
    assert snapshot(tmp_path) == before


def test_empty_data_directory_without_download(tmp_path: Path) -> None:
    error = load_expecting_error(tmp_path, download=False, verify_checksums=False)
    assert str(tmp_path) in str(error) and synthetic.ARCHIVE_NAME in str(error)
    assert list(tmp_path.iterdir()) == []


def test_empty_batches_folder(tmp_path: Path) -> None:
    (tmp_path / synthetic.BATCHES_FOLDER).mkdir()
    error = load_expecting_error(tmp_path, download=False, verify_checksums=False)
    assert "is empty" in str(error) and synthetic.BATCHES_FOLDER in str(error)


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("user's notes")
    error = load_expecting_error(path, verify_checksums=False)
    assert "not a folder" in str(error)
    assert path.read_text() == "user's notes"


# ## Permissions
#
# The tests run as root in CI, and root reads any file whatever its mode. So the real check, when run as
# root, starts a subprocess through `setpriv` without the two capabilities that let root ignore file
# modes; two more tests make the operating system answer "permission denied" to reach the same code paths
# from inside this process.

UNREADABLE_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from experiments import data
try:
    data.load_cifar10(sys.argv[2], download=False, verify_checksums=False)
except data.DataError as error:
    print(error)
    sys.exit(3)
"""
WITHOUT_ROOT_FILE_ACCESS = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def message_when_unreadable(data_dir: Path) -> str:
    if os.geteuid() != 0:
        return str(load_expecting_error(data_dir, verify_checksums=False))
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, which ignores file modes, and setpriv is not installed to drop that")
    probe = subprocess.run([*WITHOUT_ROOT_FILE_ACCESS, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"running as root, which ignores file modes, and setpriv failed: {probe.stderr}")
    result = subprocess.run(
        [*WITHOUT_ROOT_FILE_ACCESS, sys.executable, "-c", UNREADABLE_SCRIPT, str(REPO_ROOT), str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 3, result.stderr
    return result.stdout.strip()


def test_unreadable_folder_really_denied(tmp_path: Path) -> None:
    folder = synthetic.write_synthetic_cifar10(tmp_path)
    folder.chmod(0o000)
    try:
        before = {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
        message = message_when_unreadable(tmp_path)
        assert "permission denied" in message and str(folder) in message
        assert "\n" not in message
        assert {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == before
    finally:
        folder.chmod(0o755)
    assert len(list(folder.iterdir())) == 7, "the files are all still there"


def test_folder_the_os_says_is_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = synthetic.write_synthetic_cifar10(tmp_path)
    real_access = os.access
    denied = lambda path, mode: Path(path) != folder and real_access(path, mode)  # noqa: E731
    monkeypatch.setattr(data.os, "access", denied)
    before = snapshot(tmp_path)
    error = load_expecting_error(tmp_path, verify_checksums=False)
    assert "permission denied" in str(error) and str(folder) in str(error)
    assert snapshot(tmp_path) == before


def test_file_whose_open_is_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = synthetic.write_synthetic_cifar10(tmp_path)

    real_open = os.open

    def denying_open(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: int) -> int:
        if Path(path).name == "data_batch_2":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denying_open)
    error = load_expecting_error(tmp_path, verify_checksums=False)
    assert "permission denied" in str(error) and str(folder / "data_batch_2") in str(error)


# ## Downloading


def test_offline_download_fails_fast_and_leaves_no_folders(tmp_path: Path, unreachable_url: str) -> None:
    data_dir = tmp_path / "new" / "cifar"
    started = time.monotonic()
    error = load_expecting_error(data_dir, download=True, verify_checksums=False)
    # A bound on a hang, not a benchmark: offline must not wait on the network for long.
    assert time.monotonic() - started < 30
    assert str(data_dir) in str(error) and synthetic.ARCHIVE_NAME in str(error)
    assert list(tmp_path.iterdir()) == [], "the folders created for the download are removed again"


def test_official_url_on_an_offline_machine_fails_fast(tmp_path: Path) -> None:
    # The real address, unchanged. Only where its name does not resolve: online this would fetch 170 MB.
    host = urllib.parse.urlsplit(data.CIFAR10_URL).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        pass
    else:
        pytest.skip(f"{host} resolves, so this machine may be online and would really download CIFAR-10")
    data_dir = tmp_path / "cifar"
    started = time.monotonic()
    error = load_expecting_error(data_dir, download=True, verify_checksums=False)
    assert time.monotonic() - started < 30, "a bound on a hang, not a benchmark"
    assert data.CIFAR10_URL in str(error) and str(data_dir) in str(error)
    assert list(tmp_path.iterdir()) == []


def test_offline_download_leaves_an_existing_directory_alone(tmp_path: Path, unreachable_url: str) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    load_expecting_error(tmp_path, download=True, verify_checksums=False)
    assert snapshot(tmp_path) == before


@pytest.fixture
def silent_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A server that accepts connections and never answers: the hang an unreliable network causes."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setattr(data, "CIFAR10_URL", f"http://127.0.0.1:{server.getsockname()[1]}/x.tar.gz")
        monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", 0.5)
        yield


def test_a_server_that_never_answers_times_out(tmp_path: Path, silent_server: None) -> None:
    started = time.monotonic()
    error = load_expecting_error(tmp_path, download=True, verify_checksums=False)
    assert time.monotonic() - started < 30
    assert "timed out" in str(error)
    assert list(tmp_path.iterdir()) == [], "no partial download is left behind"


@pytest.fixture
def archive_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Serve a synthetic archive over local HTTP, as the real site serves the real one."""
    served = tmp_path / "served"
    archive = synthetic.write_synthetic_cifar10_archive(served, n_per_train_batch=4, n_test=4)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    monkeypatch.setattr(data, "CIFAR10_URL", f"http://127.0.0.1:{server.server_port}/{archive.name}")
    yield archive
    server.shutdown()
    server.server_close()


def test_download_saves_the_archive_and_unpacks_it(tmp_path: Path, archive_server: Path) -> None:
    data_dir = tmp_path / "fresh"
    arrays = load_cifar10(data_dir, download=True, verify_checksums=False)
    assert arrays.train_images.shape == (20, 3, 32, 32)
    expected_names = sorted([synthetic.ARCHIVE_NAME, synthetic.BATCHES_FOLDER])
    assert sorted(path.name for path in data_dir.iterdir()) == expected_names
    assert (data_dir / synthetic.ARCHIVE_NAME).read_bytes() == archive_server.read_bytes()


def test_a_download_with_the_expected_digests_is_kept_and_loads_with_checksums_on(
    tmp_path: Path, archive_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with tarfile.open(archive_server) as tar:
        tar.extractall(tmp_path / "expected", filter="data")
    expected = (tmp_path / "expected" / data.BATCHES_FOLDER).iterdir()
    synthetic.publish_digests_of(monkeypatch, archive_server, *expected)
    data_dir = tmp_path / "fresh"
    assert load_cifar10(data_dir, download=True).train_images.shape == (20, 3, 32, 32)
    assert (data_dir / synthetic.ARCHIVE_NAME).read_bytes() == archive_server.read_bytes()
    assert sorted(p.name for p in data_dir.iterdir()) == sorted([synthetic.ARCHIVE_NAME, data.BATCHES_FOLDER])


def test_download_with_wrong_md5_keeps_nothing(
    tmp_path: Path, archive_server: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "fresh"
    error = load_expecting_error(data_dir, download=True)
    assert "md5" in str(error)
    assert not data_dir.exists()


def test_never_downloads_over_the_users_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synthetic.write_synthetic_cifar10_archive(tmp_path, n_per_train_batch=4, n_test=4)

    def no_network(*args, **kwargs) -> None:
        raise AssertionError("must not download when the archive is already there")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert load_cifar10(tmp_path, download=True, verify_checksums=False).train_images.shape == (20, 3, 32, 32)


# ## The rest of the API


def test_data_error_is_one_line_naming_path_and_fix() -> None:
    error = DataError(Path("/data/x"), "is odd\nvery odd", "do\nthis")
    assert str(error) == "/data/x: is odd very odd. Fix: do this"
    assert error.path == Path("/data/x")


def test_statistics_are_three_channels_on_a_unit_scale() -> None:
    for statistic in (data.CIFAR10_MEAN, data.CIFAR10_STD):
        assert len(statistic) == 3 and all(0 < value < 1 for value in statistic)


def test_default_data_dir_is_labml_data_path() -> None:
    from labml import lab

    assert data.default_data_dir() == Path(lab.get_data_path())


def test_split_validation_holds_out_a_seeded_disjoint_part() -> None:
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1).expand(100, 3, 32, 32)
    labels = torch.arange(100)
    train_images, train_labels, valid_images, valid_labels = split_validation(images, labels, 10, seed=4)
    assert len(train_labels) == 90 and len(valid_labels) == 10
    assert sorted(train_labels.tolist() + valid_labels.tolist()) == list(range(100))
    assert torch.equal(train_images[:, 0, 0, 0].long(), train_labels), "images stay with their labels"
    assert torch.equal(valid_images[:, 0, 0, 0].long(), valid_labels)
    assert torch.equal(split_validation(images, labels, 10, seed=4)[3], valid_labels)
    assert not torch.equal(split_validation(images, labels, 10, seed=5)[3], valid_labels)


@pytest.mark.parametrize("n_valid", [-1, 100])
def test_split_validation_refuses_impossible_sizes(n_valid: int) -> None:
    with pytest.raises(ValueError, match="n_valid"):
        split_validation(torch.zeros(100, 3, 32, 32, dtype=torch.uint8), torch.zeros(100), n_valid, seed=0)


def test_separable_synthetic_classes_are_told_apart_by_colour(tmp_path: Path) -> None:
    # The trainer's tests rely on this variant being learnable; the mean colour alone must give the label.
    synthetic.write_synthetic_cifar10(tmp_path, separable=True)
    arrays = load_cifar10(tmp_path, download=False, verify_checksums=False)
    colours = arrays.train_images.float().mean(dim=(2, 3))
    centres = torch.stack([colours[arrays.train_labels == label].mean(0) for label in range(10)])
    nearest = torch.cdist(colours, centres).argmin(1)
    assert torch.equal(nearest, arrays.train_labels)
