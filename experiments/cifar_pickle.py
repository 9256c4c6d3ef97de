r"""
# Reading CIFAR-10's pickles without unpickling them

The official batches are pickles, and `pickle.load` runs whatever a file asks for. Restricting which
names it may import is not enough: an earlier version allowed only numpy's array rebuilder, `ndarray` and
`dtype`, and a file could still hand numpy a dtype with a hidden object field, whose eight "pixel"
bytes numpy then took for a pointer (a segmentation fault, or worse). The state a pickle passes to
`__setstate__` is as dangerous as the names it imports.

So nothing here calls `pickle.load`, numpy's rebuilder or any `__setstate__`. The standard library's
`pickletools.genops` splits the file into opcodes, and [`read_pickle`](#read_pickle) evaluates the few
that CIFAR-10 files use: dicts, lists, tuples, ints, strings, and the array pattern that numpy's
`ndarray.__reduce__` writes, *recognised by its shape*. From that pattern we take only a shape, a dtype
code and raw bytes; after checking them we build the array ourselves with `np.frombuffer`. Any other
opcode, name or state is refused with `NotCifarPickle` before anything is built from it.

Two writers' output is accepted, and nothing else:

* the official files: Python 2's `cPickle` at protocol 2 with numpy 1, where byte strings are Python 2
  `str` (read as latin-1 text) and the rebuilder is `numpy.core.multiarray._reconstruct`;
* `pickle.dumps(..., protocol=2)` from Python 3, which spells every byte string as a call to
  `_codecs.encode(text, "latin1")` (we do that encoding ourselves) and names numpy 2's
  `numpy._core.multiarray._reconstruct`. This is what [`experiments.synthetic`](synthetic.py) writes.
"""

from __future__ import annotations

import io
import math
import pickletools
from typing import Any

import numpy as np


class NotCifarPickle(ValueError):
    """The pickle holds something no CIFAR-10 file holds; `str(error)` says what, in a few words."""


# The names a CIFAR-10 pickle may mention. They are only ever compared, never imported.
_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_NDARRAY = ("numpy", "ndarray")
_DTYPE = ("numpy", "dtype")
_ENCODE = ("_codecs", "encode")
_EMPTY_BYTES = ("__builtin__", "bytes")  # Python 3 writes `b""` as a call of `bytes()`
_NAMES = {*_RECONSTRUCT, _NDARRAY, _DTYPE, _ENCODE, _EMPTY_BYTES}

# Arrays of integers only: uint8 images, and labels if a writer stored them as an array.
_INTEGER_CODES = {"i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"}
# At most [n, 3, 32, 32]; the batch reader then insists on [n, 3072].
_MAX_DIMENSIONS = 4
# The tail of numpy's version-3 dtype state for a plain number: no sub-array, names or fields; sizes
# and alignment implied (-1, -1); no flags, so no objects.
_PLAIN_DTYPE = (None, None, None, -1, -1, 0)


class _Name:
    """A `module.name` the file mentions (GLOBAL): a label to compare, not an imported object."""

    def __init__(self, module: str, name: str) -> None:
        self.key = (module, name)


class _Promise:
    """
    An array or dtype the file has asked for (REDUCE) but not yet described (BUILD). Containers only
    take it once described, and then get our own `np.ndarray` / `np.dtype` in its place.
    """

    def __init__(self, kind: str, code: str = "") -> None:
        self.kind, self.code = kind, code
        self.value: np.ndarray | np.dtype | None = None


def _settled(value: Any) -> Any:
    if isinstance(value, _Promise):
        if value.value is None:
            raise NotCifarPickle(f"uses a numpy {value.kind} before describing it")
        return value.value
    return value


def _reduce(function: Any, args: Any) -> Any:
    """The calls the two writers make, each recognised by its arguments and done by us."""
    if not isinstance(function, _Name) or not isinstance(args, tuple):
        raise NotCifarPickle("calls something that is not one of numpy's array rebuilders")
    if function.key in _RECONSTRUCT and len(args) == 3:
        cls, shape, kind = args
        if isinstance(cls, _Name) and cls.key == _NDARRAY and shape == (0,) and kind in ("b", b"b"):
            return _Promise("array")
    if function.key == _DTYPE and args and isinstance(args[0], str) and args[0] not in _INTEGER_CODES:
        raise NotCifarPickle(
            f"asks for an array of dtype {args[0]!r}, expected uint8 images or integer labels"
        )
    if function.key == _DTYPE and len(args) == 3 and isinstance(args[0], str) and args[0] in _INTEGER_CODES:
        if args[1:] != (0, 1):  # numpy 1 writes (code, 0, 1) and numpy 2 (code, False, True): the same
            raise NotCifarPickle(f"asks for a dtype {args[0]!r} with unusual arguments")
        return _Promise("dtype", args[0])
    if function.key == _ENCODE and len(args) == 2 and isinstance(args[0], str) and args[1] == "latin1":
        return args[0].encode("latin1")  # raises for text beyond latin-1: then it is no byte string
    if function.key == _EMPTY_BYTES and args == ():
        return b""
    module, name = function.key
    raise NotCifarPickle(f"calls {module}.{name} with arguments no CIFAR-10 file uses")


def _build(promise: Any, state: Any) -> None:
    """Describe a promised dtype or array from the BUILD state, checking every part of it."""
    if not isinstance(promise, _Promise) or promise.value is not None or not isinstance(state, tuple):
        raise NotCifarPickle("sets the state of something other than a new numpy array or dtype")
    if promise.kind == "dtype":
        # Version 3 of numpy's dtype state and a byte order, then `_PLAIN_DTYPE`: structured, object
        # and sub-array dtypes all differ from it somewhere and are refused here.
        if len(state) != 8 or state[0] != 3 or state[1] not in ("<", ">", "|") or state[2:] != _PLAIN_DTYPE:
            raise NotCifarPickle(f"describes a dtype {promise.code!r} with fields, objects or odd sizes")
        promise.value = np.dtype(state[1] + promise.code if state[1] != "|" else promise.code)
        return
    if len(state) != 5:
        raise NotCifarPickle("describes an array in a form numpy never writes")
    version, shape, dtype, fortran_order, raw = state
    if type(version) is not int or version != 1 or not isinstance(dtype, np.dtype):
        raise NotCifarPickle("describes an array in a form numpy never writes")
    if type(fortran_order) not in (bool, int) or fortran_order != 0:
        raise NotCifarPickle("describes an array in Fortran order, which CIFAR-10 files never use")
    if not isinstance(shape, tuple) or not 1 <= len(shape) <= _MAX_DIMENSIONS:
        raise NotCifarPickle(
            f"describes an array with {len(shape) if isinstance(shape, tuple) else 'no'} axes"
        )
    if not all(type(size) is int and size >= 0 for size in shape):
        raise NotCifarPickle(f"describes an array of shape {shape!r}")
    if isinstance(raw, str):
        raw = raw.encode("latin1")  # Python 2's str, read as latin-1 text: back to the bytes written
    if not isinstance(raw, bytes):
        raise NotCifarPickle("describes an array whose contents are not raw bytes")
    # Python's integers cannot overflow, and `raw` already lies in memory: nothing is allocated for a
    # shape that claims more elements than the file has bytes.
    if math.prod(shape) * dtype.itemsize != len(raw):
        raise NotCifarPickle(f"claims shape {list(shape)} of {dtype} but holds {len(raw)} bytes")
    promise.value = np.frombuffer(raw, dtype).reshape(shape).copy()


def read_pickle(raw: bytes) -> Any:
    """
    The value a CIFAR-10 pickle holds, built by us from `raw`: dicts with `str`/`bytes` keys, lists,
    tuples, ints, `None`, booleans, `str`, `bytes`, and integer `np.ndarray`s.

    Raises `NotCifarPickle` for anything a CIFAR-10 file never holds, and `ValueError`, `IndexError`
    or `UnicodeError` for a damaged stream.
    """
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}

    def since_mark() -> list[Any]:
        start = marks.pop()
        items = [_settled(item) for item in stack[start:]]
        del stack[start:]
        return items

    def set_items(target: Any, items: list[Any]) -> None:
        if not isinstance(target, dict) or len(items) % 2:
            raise NotCifarPickle("fills something that is not a dict with dict items")
        for key, value in zip(items[::2], items[1::2], strict=True):
            if not isinstance(key, (str, bytes)):
                raise NotCifarPickle(f"has a dict key of type {type(key).__name__}")
            target[key] = value

    def extend(target: Any, items: list[Any]) -> None:
        if not isinstance(target, list):
            raise NotCifarPickle("appends to something that is not a list")
        target.extend(items)

    for opcode, arg, _ in pickletools.genops(io.BytesIO(raw)):
        name = opcode.name
        if name == "PROTO":
            if arg != 2:
                raise NotCifarPickle(f"is a protocol-{arg} pickle; CIFAR-10 files are protocol 2")
        elif name in ("BININT", "BININT1", "BININT2", "LONG1", "SHORT_BINSTRING", "BINSTRING", "BINUNICODE"):
            stack.append(arg)
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "MARK":
            marks.append(len(stack))
        elif name == "TUPLE":
            stack.append(tuple(since_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            size = int(name[-1])
            if len(stack) - (marks[-1] if marks else 0) < size:
                raise IndexError(f"{name} on a stack too short")
            items = tuple(_settled(item) for item in stack[-size:])
            del stack[-size:]
            stack.append(items)
        elif name == "APPEND":
            item = _settled(stack.pop())
            extend(stack[-1], [item])
        elif name == "APPENDS":
            items = since_mark()
            extend(stack[-1], items)
        elif name == "SETITEM":
            value = _settled(stack.pop())
            key = _settled(stack.pop())
            set_items(stack[-1], [key, value])
        elif name == "SETITEMS":
            items = since_mark()
            set_items(stack[-1], items)
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "GLOBAL":
            module, _, attribute = arg.partition(" ")
            if (module, attribute) not in _NAMES:
                raise NotCifarPickle(f"asks for {module}.{attribute}")
            stack.append(_Name(module, attribute))
        elif name == "REDUCE":
            args = stack.pop()
            stack.append(_reduce(stack.pop(), args))
        elif name == "BUILD":
            state = stack.pop()
            _build(stack[-1], state)
        elif name == "STOP":
            if len(stack) != 1 or marks:
                raise ValueError("the pickle ends with a stack that does not hold exactly one value")
            return _settled(stack.pop())
        else:
            raise NotCifarPickle(f"uses the pickle instruction {name}")
    raise ValueError("the pickle ends before its STOP")
