"""
# Files a reader never sees half-written

Checkpoints, `results.json` and the degradation figure are written to a temporary file beside the
target, synced, then renamed over it (`os.replace`, atomic within a folder on POSIX): a reader sees the
old file or the new one, and a crash mid-write, even `kill -9`, leaves the old file.
"""

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
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


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write `value` as indented JSON, atomically; the folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (json.dumps(value, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))
