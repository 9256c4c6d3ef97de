r"""
# CIFAR-10's files, written the way the official ones were

The CIFAR-10 loader reads exactly one format, the folder `cifar-10-batches-py/` from the official
`cifar-10-python.tar.gz`, and this module writes that format for images that are not CIFAR-10. With
one writer for all of them, everything that is not CIFAR-10 reaches the loader by the road the real
files take.

Three kinds of data use it: the tests' few dozen images, the degradation experiment's stand-in
([`experiments/degradation.py`](degradation.py)) and the GPU benchmark's full-size synthetic set
(`benchmarks/gpu.py`). The loader is [`experiments.data`](data.py); it reads these files with
`verify_checksums=False`, the setting for data that is meant to differ from CIFAR-10.

The folder holds seven files:

* `data_batch_1` … `data_batch_5`, `test_batch`: each a pickled dict with `data` (uint8, `[n, 3072]`,
  one row per image holding the 1024 red, then 1024 green, then 1024 blue values, each plane
  row-major), `labels` (a list of ints), `batch_label` and `filenames`;
* `batches.meta`: the images per batch, the ten class names in label order, and the values per image.

## Why the pickles are assembled by hand

The official files were written in 2009 by Python 2's `cPickle` at protocol 2, with numpy 1. Python 3's
own `pickle.dump(..., protocol=2)` writes something that merely *reads back* the same: it has no Python 2
`str`, so every byte string becomes a call to `_codecs.encode`, and numpy 2 names its array rebuilder
`numpy._core.multiarray._reconstruct`. The loader's unpickler builds only what the official files ask
for, so it refuses those; and a loader tested on them would take a different road from the one every
real user's files take. So [`python2_pickle`](#python2_pickle) writes the opcodes `cPickle` wrote:

* every string is a Python 2 `str`: `SHORT_BINSTRING` below 256 bytes, `BINSTRING` above. Python 3
  reads them as `bytes` (`encoding="bytes"`) or as `str` (`encoding="latin1"`, what loaders use);
* an array is `numpy.core.multiarray._reconstruct` plus a `BUILD` whose raw pixel bytes are one such
  string. Read with `encoding="latin1"` that payload arrives as a `str`, and numpy's
  `ndarray.__setstate__` turns it back into bytes: the step real files depend on;
* a dtype is `numpy.dtype` with the arguments `(descr, 0, 1)` and a version-3 state, as numpy 1 wrote;
* lists and dicts are filled in batches of 1000 (`APPENDS`/`SETITEMS`, or `APPEND`/`SETITEM` for one);
* memo entries (`BINPUT`) are numbered from 1, as in `cPickle`. `cPickle` gives one only to objects
  something else also references, so never to the temporaries numpy builds inside `__reduce__` or to
  strings under two characters; for the dict, its lists and their strings, which the program that wrote
  the files held, we follow `batches.meta`, which memoizes them all. Loaders ignore memo entries.

The check that this is faithful: `batches.meta` written for 10,000 images per batch is byte-for-byte
the official file, whose md5 sum torchvision publishes (`tests/test_data.py` checks it).

## Colour classes

[`write_synthetic_cifar10`](#write_synthetic_cifar10) fills the format with images of two kinds:

* `separable=False`: uniform random pixels, labels cycling through all ten classes. Good for checking
  that bytes land in the right place.
* `separable=True`: every class has its own flat colour plus a little noise, so even a tiny network
  learns it in a few steps. Colour survives cropping and flipping, so augmentation does not hide it.
  Throughput measured on them is real; accuracy means nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.data import BATCHES_FOLDER, META_FILE, NUM_CLASSES, TEST_FILE, TRAIN_FILES

# The official class names, in label order: what `batches.meta` lists unless told otherwise.
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Labels as a list of ints or an integer array; the files hold a list either way.
Labels = Sequence[int] | np.ndarray

# ## A Python 2 `cPickle` at protocol 2


class _Python2Pickler:
    """
    The opcodes `cPickle.dump(obj, file, 2)` writes, for the types CIFAR-10's files hold: dicts, lists,
    tuples, strings (`bytes`, or `str` taken as latin-1 text), ints, booleans, `None` and numpy arrays.
    """

    # `cPickle` fills a list or dict this many items at a time.
    BATCH = 1000

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.memo_id = 1

    def memoize(self) -> None:
        if self.memo_id < 256:
            self.out += b"q" + bytes([self.memo_id])  # BINPUT
        else:
            self.out += b"r" + struct.pack("<I", self.memo_id)  # LONG_BINPUT
        self.memo_id += 1

    def string(self, value: bytes | str, *, held: bool = True) -> None:
        raw = value.encode("latin-1") if isinstance(value, str) else bytes(value)
        if len(raw) < 256:
            self.out += b"U" + bytes([len(raw)]) + raw  # SHORT_BINSTRING
        else:
            self.out += b"T" + struct.pack("<i", len(raw)) + raw  # BINSTRING
        # cPickle writes strings under two characters before it looks at the memo at all.
        if held and len(raw) >= 2:
            self.memoize()

    def integer(self, value: int) -> None:
        if 0 <= value < 1 << 8:
            self.out += b"K" + bytes([value])  # BININT1
        elif 0 <= value < 1 << 16:
            self.out += b"M" + struct.pack("<H", value)  # BININT2
        elif -(1 << 31) <= value < 1 << 31:
            self.out += b"J" + struct.pack("<i", value)  # BININT
        else:
            raise ValueError(f"{value} does not fit a Python 2 int on disk; CIFAR-10 files hold none")

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + f"{module}\n{name}\n".encode()  # GLOBAL
        self.memoize()

    def tuple_(self, items: Sequence[object]) -> None:
        if not items:
            self.out += b")"  # EMPTY_TUPLE
            return
        if len(items) > 3:
            self.out += b"("  # MARK
        for item in items:
            self.save(item, held=False)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(items), b"t")  # TUPLE1/2/3 or TUPLE

    def batched(self, items: Sequence[Any], save_one: Callable[[Any], None], one: bytes, many: bytes) -> None:
        for start in range(0, len(items), self.BATCH):
            chunk = items[start : start + self.BATCH]
            if len(chunk) == 1:
                save_one(chunk[0])
                self.out += one
            else:
                self.out += b"("  # MARK
                for item in chunk:
                    save_one(item)
                self.out += many

    def array(self, array: np.ndarray) -> None:
        """What numpy 1's `ndarray.__reduce__` hands to the pickler, written out."""
        array = np.ascontiguousarray(array)
        self.global_("numpy.core.multiarray", "_reconstruct")
        self.global_("numpy", "ndarray")
        self.tuple_([0])
        self.string("b", held=False)
        self.out += b"\x87R"  # TUPLE3 REDUCE
        self.memoize()
        self.out += b"("  # MARK: the state (version, shape, dtype, is_fortran, raw bytes)
        self.integer(1)
        self.tuple_(list(array.shape))
        self.dtype(array.dtype)
        self.out += b"\x89"  # NEWFALSE: C order
        self.string(array.tobytes(), held=False)
        self.out += b"tb"  # TUPLE BUILD

    def dtype(self, dtype: np.dtype) -> None:
        if dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject:
            raise ValueError(f"only plain numeric dtypes are written, not {dtype}")
        byte_order = {"=": "<" if np.little_endian else ">"}.get(dtype.byteorder, dtype.byteorder)
        self.global_("numpy", "dtype")
        self.string(dtype.str[1:], held=False)
        self.integer(0)
        self.integer(1)
        self.out += b"\x87R"  # TUPLE3 REDUCE
        self.memoize()
        # Version 3 of the state: byte order, no sub-array, names or fields, sizes and alignment implied.
        self.out += b"("
        self.integer(3)
        self.string(byte_order, held=False)
        self.out += b"NNN"
        self.integer(-1)
        self.integer(-1)
        self.integer(0)
        self.out += b"tb"  # TUPLE BUILD

    def save(self, value: object, *, held: bool = True) -> None:
        if isinstance(value, bool):
            self.out += b"\x88" if value else b"\x89"  # NEWTRUE / NEWFALSE
        elif value is None:
            self.out += b"N"
        elif isinstance(value, (int, np.integer)):
            self.integer(int(value))
        elif isinstance(value, (bytes, str)):
            self.string(value, held=held)
        elif isinstance(value, np.ndarray):
            self.array(value)
        elif isinstance(value, tuple):
            self.tuple_(value)
        elif isinstance(value, list):
            self.out += b"]"  # EMPTY_LIST
            self.memoize()
            self.batched(value, self.save, b"a", b"e")  # APPEND / APPENDS
        elif isinstance(value, dict):
            self.out += b"}"  # EMPTY_DICT
            self.memoize()

            def save_item(item: tuple[object, object]) -> None:
                self.save(item[0])
                self.save(item[1])

            self.batched(list(value.items()), save_item, b"s", b"u")  # SETITEM / SETITEMS
        else:
            raise TypeError(f"CIFAR-10 files hold no {type(value).__name__}")


def python2_pickle(value: object) -> bytes:
    """
    `value` pickled as Python 2.7's `cPickle` wrote it at protocol 2 with numpy 1 (see the top of this
    file). Dict items are written in the dict's order.
    """
    pickler = _Python2Pickler()
    pickler.save(value)
    return bytes(pickler.out + b".")  # STOP


# ## The files


def write_batch_file(
    path: Path, data: np.ndarray, labels: Labels, batch_label: str, name_prefix: str = "synthetic"
) -> None:
    """
    One batch file: `data` uint8 `[n, 3072]` (or `[n, 3, 32, 32]`), its labels, and file names made up
    from `name_prefix`. Keys in the official files' order.
    """
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(len(data), -1)
    entry = {
        "batch_label": batch_label,
        "labels": [int(label) for label in labels],
        "data": data,
        "filenames": [f"{name_prefix}_{i:05d}.png" for i in range(len(labels))],
    }
    Path(path).write_bytes(python2_pickle(entry))


def write_meta_file(path: Path, images_per_batch: int, class_names: Sequence[str] = CLASS_NAMES) -> None:
    """`batches.meta`: images per batch, the class names in label order, and values per image."""
    meta = {"num_cases_per_batch": images_per_batch, "label_names": list(class_names), "num_vis": 3072}
    Path(path).write_bytes(python2_pickle(meta))


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
