"""
# Reading files from outside, writing files whole

Two small jobs that every loader and writer in the project shares, kept in one place so that each
guard is written once.

**Reading.** A path that names a file from outside (weights, a checkpoint, a CIFAR-10 batch) may name
something that is not a file of bytes: a link to `/dev/zero` would be read until memory runs out, and
opening a named pipe waits for a writer forever. [`read_regular_file`](#read_regular_file) opens
without waiting, checks what it opened (not the path, which can be swapped after a check), and reads
exactly the size it saw, once; the caller then parses those very bytes.

**Writing.** Checkpoints, `results.json`, figures and saved networks go to a temporary file beside the
target, synced, then renamed over it ([`atomic_write`](#atomic_write); `os.replace` is atomic within a
folder on POSIX): a reader sees the old file or the new one, and a crash mid-write, even `kill -9`,
leaves the old file.
"""

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import IO, Literal


class RefusedFile(ValueError):
    """
    A file refused by [`read_regular_file`](#read_regular_file). `str(error)` is the problem in words
    that follow the file's name; `reason` says which check refused it, for a caller whose advice differs:
    `"kind"` (not a regular file), `"size"` (over the limit) or `"shrank"` (changed while read).
    """

    def __init__(self, problem: str, reason: Literal["kind", "size", "shrank"]) -> None:
        super().__init__(problem)
        self.reason = reason


# What a path that is not a regular file names, in the words of the refusal.
_KINDS = {
    stat.S_IFDIR: "folder", stat.S_IFCHR: "device", stat.S_IFBLK: "device", stat.S_IFIFO: "named pipe",
    stat.S_IFSOCK: "socket",
}  # fmt: skip


def read_regular_file(path: str | Path, max_bytes: int, what: str) -> bytes:
    """
    The bytes of the regular file at `path`, read once and never more than `max_bytes`, which `what`
    (`"a config.json"`) names in the refusal. Unless the open file is regular and its size at most
    `max_bytes`, nothing is read, and a `RefusedFile` (a `ValueError`) says why; a failure to open or
    read raises the `OSError`, for the caller to word.
    """
    # `O_NONBLOCK` only changes how a FIFO or device opens; a regular file reads as usual. (Windows has
    # no `O_NONBLOCK`, nor named pipes among its files, and needs `O_BINARY` to read bytes as they are.)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags)
    with open(descriptor, "rb") as f:
        # The open file's own status: the path may be replaced by another file after it was opened.
        status = os.fstat(f.fileno())
        if not stat.S_ISREG(status.st_mode):
            kind = _KINDS.get(stat.S_IFMT(status.st_mode), "special file")
            raise RefusedFile(f"is a {kind}, not a regular file, so it is not {what}", "kind")
        if status.st_size > max_bytes:
            problem = f"holds {status.st_size:,} bytes, over the {max_bytes:,} allowed for {what}"
            raise RefusedFile(problem, "size")
        # Exactly the size seen: a file still growing cannot make us read more than was checked.
        raw = f.read(status.st_size)
    if len(raw) != status.st_size:
        raise RefusedFile(f"shrank from {status.st_size:,} to {len(raw):,} bytes while being read", "shrank")
    return raw


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Call `write(f)` on a temporary file next to `path`, then rename it over `path`; on error, clean up."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        # A fresh file, never one found there: a link planted under this name would otherwise take the
        # write to wherever it points (removing a link removes only the link). Where removing fails (a
        # read-only file system), creating fails too, with the error that says why.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A failing clean-up must not hide the error that names what went wrong: on a read-only file
        # system even unlinking a file that was never created fails.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    # Syncing the folder keeps a power cut from undoing the rename; a file system that cannot sync a
    # folder costs only that guarantee.
    with contextlib.suppress(OSError):
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
