"""
# A run folder that the same command continues

`torchrun --max-restarts`, a requeued SLURM job or a shell loop reruns the *same command*, which cannot
say `--resume RUN`. With `--run-dir DIR` that command continues DIR's last complete checkpoint exactly as
`--resume DIR` would, in the same folder, or starts the run there when DIR is new, empty, or holds no
checkpoint yet. The README's "Several machines, and restarts" lists what it refuses and how it is tested.
"""

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so no guard against a second command (README)
    fcntl = None  # type: ignore[assignment]

from experiments import checkpoint as ckpt
from experiments.cli import Request
from experiments.errors import UsageError
from experiments.options import config_default

# Settings that say where the data is and how it is checked, or how often the console reports: a
# restart may pass other values (another node's mount point) and still continue the same run.
PLACE_SETTINGS = ("data_dir", "download", "verify_checksums", "log_every", "progress_every_s")

# Held by the process that trains in the folder, and named after it; the kernel lets go when it dies.
LOCK = "run.lock"

# What an attempt killed before labml wrote `run.yaml` leaves (our lock, labml's pid and TensorBoard
# folders): still a run's folder.
EARLY_FILES = {LOCK, "pids", "tensorboard"}


def is_run_folder(folder: Path) -> bool:
    """
    Whether `folder` holds a run: labml's `run.yaml`, our last checkpoint, or only what an attempt killed
    early leaves. A name as common as `metrics.jsonl` or `checkpoints` alone does not make one.
    """
    names = {entry.name for entry in folder.iterdir()}
    last = folder / ckpt.CHECKPOINT_DIR / ckpt.LAST
    return (folder / "run.yaml").is_file() or last.is_file() or names <= EARLY_FILES


def links_inside(folder: Path) -> list[Path]:
    """
    The symbolic links to anything but a folder among `folder`'s entries and theirs: the run and labml
    write to those entries by name, and a link to a file (in a run folder from elsewhere, say) would send
    that write over whatever file it names. A link to a folder only says where the run's own files go
    (`checkpoints` on a cluster's scratch disk, commonly), and what that folder holds is checked too.
    """
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() and not entry.is_dir():
            found.append(entry)
        elif entry.is_dir():
            found += [inner for inner in sorted(entry.iterdir()) if inner.is_symlink() and not inner.is_dir()]
    return found


def check_request(request: Request) -> Path | None:
    """
    The absolute folder `--run-dir` names (`None` without it), if it is new, empty or a run's. (`cli.py`
    refuses the flags that cannot go with it.)
    """
    if request.run_dir is None:
        return None
    run_dir = Path(request.run_dir).expanduser().absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run-dir {run_dir} is a file; give a folder (new, empty, or a run's)")
    if run_dir.parent == run_dir:
        raise UsageError(f"--run-dir {run_dir} is the root of the file system; give a folder inside it")
    if run_dir.is_dir():
        if not is_run_folder(run_dir):
            first = min(entry.name for entry in run_dir.iterdir())
            raise UsageError(
                f"--run-dir {run_dir} holds other files and no run ({first}, ...); give a new or empty "
                f"folder, or a run folder, so that nothing of yours is mixed with the run's"
            )
        if links := links_inside(run_dir):
            raise UsageError(
                f"--run-dir {run_dir} holds a symbolic link ({links[0]}) that the run would write through; "
                f"remove the link, or give a new folder"
            )
    return run_dir


@contextlib.contextmanager
def held(run_dir: Path) -> Iterator[None]:
    """
    Rank 0 holds `run_dir` while it trains: the same command started twice (a job requeued while the
    first still runs) would otherwise train twice into one folder, each overwriting the other's files.
    The lock is the kernel's, so a killed process (the restart case) leaves none behind. A folder this
    call made goes again if the run never started in it.
    """
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    try:
        # Never through a link: the check above ran before, and the file could have changed since.
        with open(path, "a+", opener=_no_follow) as f:
            if fcntl is not None:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.seek(0)
                    holder = f.read().strip() or "another process"
                    raise UsageError(
                        f"--run-dir {run_dir} is in use by {holder}, still running; wait for it to end "
                        "(or stop it: it saves a checkpoint), then run this command again"
                    ) from None
                except OSError:
                    pass  # a file system without locks (some network mounts): nothing to hold
            f.truncate(0)
            f.write(f"pid {os.getpid()} on {socket.gethostname()}")
            f.flush()
            yield
    finally:
        if made and run_dir.is_dir() and {entry.name for entry in run_dir.iterdir()} <= {LOCK}:
            path.unlink(missing_ok=True)
            run_dir.rmdir()


def _no_follow(path: str, flags: int) -> int:
    """`open`'s opener that refuses a symbolic link at `path` (`O_NOFOLLOW` where the system has it)."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)


def checkpoint_to_continue(run_dir: Path) -> Path | None:
    """The checkpoint the run in `run_dir` continues from, or `None` when it starts (again) there."""
    checkpoint = run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST
    return checkpoint if checkpoint.is_file() else None


def check_same_run(
    path: Path, saved: dict[str, Any], typed: dict[str, Any], configs: type, nested: dict[str, type]
) -> None:
    """
    Refuse to continue the checkpoint at `path`, whose run has the (checked) settings `saved`, with a
    command that typed other ones. A setting the run never set had its declared default.
    """
    for key, value in compared_settings(typed).items():
        before = saved.get(key, config_default(configs, key, nested))
        if before != value:
            run_dir = path.parent.parent
            # `--resume` can change a setting in a new folder, except what the checkpoint fixes.
            change = f", or --resume {run_dir} {key}=... to change it in a new folder"
            change = "" if key in ckpt.FIXED_BY_CHECKPOINT else change
            raise UsageError(
                f"--run-dir {run_dir} holds a run with {key}={before!r}, but this command sets "
                f"{key}={value!r}; repeat the run's own command to continue it, give another --run-dir "
                f"for a new run{change}"
            )


def labml_place(run_dir: Path) -> dict[str, Any]:
    """
    What `labml.experiment.create` needs to put its run into `run_dir` (rank 0 calls it, just before).
    labml places a run at `<experiments path>/<name>/<uuid>`, and `pathlib` drops everything before an
    absolute part, so the absolute parent as name and the folder's own name as uuid give `run_dir`. An
    earlier, killed attempt leaves labml's `pids/0.pid`, which would refuse the start: it goes.
    """
    (run_dir / "pids" / "0.pid").unlink(missing_ok=True)
    return {"name": str(run_dir.parent), "uuid": run_dir.name, "tags": {"cifar10"}}


def compared_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings every rank must share: what a checkpoint keeps, less where each machine finds the data."""
    return {key: value for key, value in ckpt.run_config(settings).items() if key not in PLACE_SETTINGS}
