r"""
# Reading CIFAR-10's pickles without unpickling them

`pickle.load` builds whatever a file asks for, and restricting the names it may import is not enough:
with only numpy's array rebuilder, `ndarray` and `dtype` allowed, a file could still hand numpy's
`__setstate__` a dtype with a hidden object field, and numpy took eight "pixel" bytes for a pointer.

So nothing here unpickles: [`read_pickle`](#read_pickle) evaluates the opcodes `pickletools.genops`
reads that CIFAR-10 files use (dicts, lists, tuples, ints, strings) and recognises numpy's pattern for
an array by its shape, taking a shape, an integer dtype code and raw bytes that it checks and turns
into an array with `np.frombuffer`. Anything else raises `NotCifarPickle` before it is built, and so
does a file that would build more arrays and byte strings than its own size can account for (see
[`_Allowance`](#_Allowance)). Both spellings of protocol 2 are read: the official files' (Python 2's
`cPickle`, numpy 1) and Python 3's, which [`experiments.synthetic`](synthetic.py) writes (bytes as
`_codecs.encode(text, "latin1")` calls).
"""

from __future__ import annotations

import io
import math
import pickletools
from dataclasses import dataclass
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
# The tail of numpy's version-3 dtype state for a plain number: no sub-array, names or fields; sizes
# and alignment implied (-1, -1); no flags, so no objects.
_PLAIN_DTYPE = (None, None, None, -1, -1, 0)


@dataclass(frozen=True)
class _Name:
    """A `module.name` the file mentions (GLOBAL): a label to compare, never imported."""

    key: tuple[str, str]


@dataclass
class _Promise:
    """An array or dtype asked for (REDUCE), not yet described (BUILD); containers take its `value`."""

    kind: str
    code: str = ""
    value: np.ndarray | np.dtype | None = None


class _Allowance:
    """
    How many more bytes of arrays and byte strings one file may have us build.

    A pickle may fetch a value it has already put down (BINGET) for two bytes, so without a bound a
    file holding one megabyte string could ask for that string as thousands of one-megabyte arrays.
    Refusing a string's second use would also refuse legitimate sharing (CPython keeps one object for
    `b""` and every one-byte string), so we count bytes instead. Each byte of a CIFAR-10 file becomes at
    most two bytes that we build: Python 2 writes an array's contents as a string that becomes the
    array; Python 3 writes them as UTF-8 text, at least as long as the bytes it encodes, that becomes
    bytes and then the array. Twice the file's size is therefore enough for anything either writer
    makes, and a file that needs more can only be reusing its own data.
    """

    def __init__(self, file_size: int) -> None:
        self.limit = 2 * file_size
        self.left = self.limit

    def spend(self, size: int) -> None:
        """Charge `size` bytes before they are allocated; refuse the file if it has run out."""
        if size > self.left:
            raise NotCifarPickle(
                f"asks for more than {self.limit:,} bytes of arrays and byte strings (twice its own size) "
                "by reusing its data, which no CIFAR-10 file does"
            )
        self.left -= size


def _settled(value: Any) -> Any:
    if isinstance(value, _Promise):
        if value.value is None:
            raise NotCifarPickle(f"uses a numpy {value.kind} before describing it")
        return value.value
    return value


def _reduce(function: Any, args: Any, allowance: _Allowance) -> Any:
    """The calls the two writers make, each recognised by its arguments and done by us."""
    if not isinstance(function, _Name) or not isinstance(args, tuple):
        raise NotCifarPickle("calls something other than one of numpy's rebuilders")
    key = function.key
    if key in _RECONSTRUCT and len(args) == 3:
        cls, shape, kind = args
        if isinstance(cls, _Name) and cls.key == _NDARRAY and shape == (0,) and kind in ("b", b"b"):
            return _Promise("array")
    if key == _DTYPE and len(args) == 3 and isinstance(args[0], str):
        # numpy 1 writes (code, 0, 1), numpy 2 (code, False, True): equal tuples.
        if args[0] not in _INTEGER_CODES or args[1:] != (0, 1):
            raise NotCifarPickle(f"asks for a dtype {args[0]!r}, expected uint8 images or integer labels")
        return _Promise("dtype", args[0])
    if key == _ENCODE and len(args) == 2 and isinstance(args[0], str) and args[1] == "latin1":
        allowance.spend(len(args[0]))  # latin-1 text encodes to one byte a character
        return args[0].encode("latin1")  # raises for text beyond latin-1: then it is no byte string
    if key == _EMPTY_BYTES and args == ():
        return b""
    raise NotCifarPickle(f"calls {'.'.join(key)} as no CIFAR-10 file does")


def _build(promise: Any, state: Any, allowance: _Allowance) -> None:
    """Describe a promised dtype or array from the BUILD state, checking every part of it."""
    if not isinstance(promise, _Promise) or promise.value is not None or not isinstance(state, tuple):
        raise NotCifarPickle("sets the state of something other than a new numpy array or dtype")
    if promise.kind == "dtype":
        # Version 3 of numpy's dtype state and a byte order, then `_PLAIN_DTYPE`: structured, object
        # and sub-array dtypes all differ from it somewhere and are refused here.
        if len(state) != 8 or state[0] != 3 or state[1] not in ("<", ">", "|") or state[2:] != _PLAIN_DTYPE:
            raise NotCifarPickle(f"describes a dtype {promise.code!r} with fields, objects or odd sizes")
        promise.value = np.dtype(promise.code if state[1] == "|" else state[1] + promise.code)
        return
    version, shape, dtype, fortran_order, raw = state
    if version != 1 or not isinstance(dtype, np.dtype) or not isinstance(raw, (str, bytes)):
        raise NotCifarPickle("describes an array in a form numpy never writes")
    if fortran_order is not False and fortran_order != 0:
        raise NotCifarPickle("describes an array in Fortran order, which CIFAR-10 files never use")
    sizes_ok = isinstance(shape, tuple) and all(type(size) is int and size >= 0 for size in shape)
    if not sizes_ok or not 1 <= len(shape) <= 4:  # at most [n, 3, 32, 32]; batches must be [n, 3072]
        raise NotCifarPickle(f"describes an array of shape {shape!r}")
    # Python's integers do not overflow and `raw` is already in memory, so a shape claiming more
    # elements than the file has bytes allocates nothing. Python 2's str is latin-1 text: one byte a
    # character, so its length is the array's size in bytes too.
    if math.prod(shape) * dtype.itemsize != len(raw):
        raise NotCifarPickle(f"claims shape {list(shape)} of {dtype} but holds {len(raw)} bytes")
    allowance.spend(len(raw))
    raw = raw.encode("latin1") if isinstance(raw, str) else raw
    promise.value = np.frombuffer(raw, dtype).reshape(shape).copy()


# Opcodes that push a new value of their own.
_NEW = {"NONE": lambda: None, "NEWTRUE": lambda: True, "NEWFALSE": lambda: False}
_NEW.update(EMPTY_DICT=dict, EMPTY_LIST=list, EMPTY_TUPLE=tuple)
# Opcodes whose argument is the value: ints and strings.
_LITERALS = {"BININT", "BININT1", "BININT2", "LONG1", "SHORT_BINSTRING", "BINSTRING", "BINUNICODE"}

# Small values cost memory by their numbers too: an empty list is one byte of the file and about sixty
# bytes built. A batch of 10,000 images is about 30,000 opcodes (a name, a label and a memo entry each),
# so this bound leaves room for sets of one's own fifty times larger and caps what a file of tiny values
# can have us build at a few hundred megabytes.
MAX_OPCODES = 1_500_000


def read_pickle(raw: bytes) -> Any:
    """
    The value a CIFAR-10 pickle holds, built by us from `raw`: dicts with `str`/`bytes` keys, lists,
    tuples, ints, `None`, booleans, `str`, `bytes` and integer `np.ndarray`s. Raises `NotCifarPickle`
    for anything else, and another exception (`ValueError`, `IndexError`, ...) for a damaged stream.
    """
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    allowance = _Allowance(len(raw))

    def pop(count: int) -> list[Any]:
        if count > len(stack):
            raise IndexError("the pickle takes more values than it has put down")
        items = [_settled(item) for item in stack[len(stack) - count :]]
        del stack[len(stack) - count :]
        return items

    for count, (opcode, arg, position) in enumerate(pickletools.genops(io.BytesIO(raw))):
        if count >= MAX_OPCODES:
            raise NotCifarPickle(f"holds more than {MAX_OPCODES:,} values, which no CIFAR-10 file needs")
        name = opcode.name
        if position == 0 and name != "PROTO":  # every protocol-2 pickle opens so: this is no pickle
            raise ValueError("the bytes do not start as a pickle does")
        # The one-item forms fill a container like the many-item forms after a MARK.
        if name in ("APPEND", "SETITEM"):
            marks.append(len(stack) - (1 if name == "APPEND" else 2))
            name += "S"
        if name == "PROTO" and arg != 2:
            if arg not in (3, 4, 5):  # no protocol at all: damaged bytes
                raise ValueError(f"a pickle of protocol {arg}, which does not exist")
            raise NotCifarPickle(f"is a protocol-{arg} pickle; CIFAR-10 files are protocol 2")
        elif name in _LITERALS:
            stack.append(arg)
        elif name in _NEW:
            stack.append(_NEW[name]())
        elif name == "MARK":
            marks.append(len(stack))
        elif name.startswith("TUPLE"):
            stack.append(tuple(pop(len(stack) - marks.pop() if name == "TUPLE" else int(name[-1]))))
        elif name == "APPENDS":
            items = pop(len(stack) - marks.pop())
            if not isinstance(stack[-1], list):
                raise NotCifarPickle("appends to something that is not a list")
            stack[-1].extend(items)
        elif name == "SETITEMS":
            items = pop(len(stack) - marks.pop())
            if not isinstance(stack[-1], dict) or not all(
                isinstance(key, (str, bytes)) for key in items[::2]
            ):
                raise NotCifarPickle("fills something other than a dict with string keys")
            stack[-1].update(zip(items[::2], items[1::2], strict=True))
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "GLOBAL":
            module, _, attribute = arg.partition(" ")
            if (module, attribute) not in _NAMES:
                raise NotCifarPickle(f"asks for {module}.{attribute}")
            stack.append(_Name((module, attribute)))
        elif name == "REDUCE":
            function, args = stack[-2:] if len(stack) >= 2 else (None, None)
            del stack[-2:]
            stack.append(_reduce(function, args, allowance))
        elif name == "BUILD":
            state = stack.pop()
            _build(stack[-1], state, allowance)
        elif name == "STOP":
            if len(stack) != 1 or marks:
                raise ValueError("the pickle ends with a stack that does not hold exactly one value")
            return _settled(stack.pop())
        elif name != "PROTO":
            raise NotCifarPickle(f"uses the pickle instruction {name}")
    raise ValueError("the pickle ends before its STOP")
