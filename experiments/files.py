"""
# Files a reader never sees half-written

Checkpoints, `results.json`, the degradation figure and its JSON are all written the same way: into a
temporary file beside the target, flushed to disk, then renamed over the target with `os.replace`.
Within one folder a rename is atomic on POSIX, so whoever reads the file (a resumed run, a plotting
script, a person) sees the old version or the new one, never a mixture; a crash mid-write, even
`kill -9`, leaves the old file and at worst a stray `.tmp-` file that nothing reads.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """
    Call `write(f)` on a temporary file next to `path`, then rename it over `path`. If anything stops
    the write (a full disk, a signal), the temporary file is removed and the error propagates.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # The clean-up must not replace the error being reported: on a read-only file system even
        # unlinking a file that was never created fails (EROFS), and that second error would hide
        # the first, which names what actually went wrong.
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    # The rename lives in the folder's own metadata; syncing the folder keeps a power cut from bringing
    # the old file back. Some file systems cannot sync a folder, which costs only that guarantee.
    try:
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write `value` as indented JSON, atomically; the folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (json.dumps(value, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))
