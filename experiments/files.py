"""
# Files a reader never sees half-written

Checkpoints, `results.json` and the degradation figure are written with the library's
[`atomic_write`](../resnet/files.html#atomic_write): a temporary file beside the target, synced, then
renamed over it, so a reader sees the old file or the new one, and a crash mid-write, even `kill -9`,
leaves the old file.
"""

import json
from pathlib import Path
from typing import Any

from resnet.files import atomic_write


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write `value` as indented JSON, atomically; the folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (json.dumps(value, indent=2) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))
