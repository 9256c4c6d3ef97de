"""
# A run folder that the same command continues

Without `--run-dir`, every start is a new run: labml names a new folder under `--logs-dir`, and carrying
on after a stop takes `--resume RUN`, a different command. A launcher that restarts failed workers
cannot type that. `torchrun --max-restarts=N`, a SLURM job requeued after preemption, a shell loop
around a flaky machine: each runs the *same command* again. `--run-dir DIR` makes that command resume:

* on a folder that does not exist yet, or is empty, the run starts there;
* on a folder whose run left a checkpoint, it continues from it exactly as `--resume DIR` would (the
  same restored state, so the same weights as a run that never stopped), in the same folder;
* on a folder whose run stopped before its first checkpoint, it starts again there (nothing was kept).

A checkpoint is written only whole (into a temporary file, then renamed: [`files.py`](files.html)), so
the file a restart finds is the last *complete* one, whatever instant a worker was killed at; one that
is damaged on disk fails its digest and is refused in one line, never trained on.

What it refuses, each in one line with exit status 2 before anything is written: a path that is a
file, a folder that holds things other than a run, a folder whose run was started with other settings
than the ones typed now (a typo must not quietly continue someone else's run, or start it anew), and
`--resume`, `--eval` or `--logs-dir` beside it. The settings typed are compared with the run's; those
not typed are the run's own, as with `--resume`. Only where the data lies and how often the console
reports may differ, since they can change from one machine or attempt to the next without changing
what is trained.
"""

from pathlib import Path
from typing import Any

from experiments import checkpoint as ckpt
from experiments.cli import Request
from experiments.errors import UsageError
from experiments.options import config_default

# Settings that say where the data is and how it is checked, or how often the console reports: a
# restart may pass other values (another node's mount point) and still continue the same run.
PLACE_SETTINGS = ("data_dir", "download", "verify_checksums", "log_every", "progress_every_s")

# What labml, or a run of ours, leaves in a run folder: a folder with anything else is not one.
RUN_FILES = ("run.yaml", ckpt.CHECKPOINT_DIR, "metrics.jsonl")


def check_request(request: Request) -> Path | None:
    """
    The run folder `--run-dir` names, made absolute, or `None` without the flag. Refuses a path that
    is not a new folder, an empty one or a run's. (The flags that cannot go with it are refused with
    the command line's other combinations, in `cli.py`.)
    """
    if request.run_dir is None:
        return None
    run_dir = Path(request.run_dir).expanduser().absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--run-dir {run_dir} is a file; give a folder (new, empty, or a run's)")
    if run_dir.parent == run_dir:
        raise UsageError(f"--run-dir {run_dir} is the root of the file system; give a folder inside it")
    if run_dir.is_dir():
        names = {entry.name for entry in run_dir.iterdir()}
        if names and not names & set(RUN_FILES):
            raise UsageError(
                f"--run-dir {run_dir} holds other files and no run ({sorted(names)[0]}, ...); give a new "
                f"or empty folder, or a run folder, so that nothing of yours is mixed with the run's"
            )
    return run_dir


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
    for key, value in ckpt.run_config(typed).items():
        if key in PLACE_SETTINGS:
            continue
        head, dot, name = key.partition(".")
        before = (
            saved[key]
            if key in saved
            else config_default(nested[head], name)
            if dot
            else config_default(configs, key)
        )
        if before != value:
            run_dir = path.parent.parent
            raise UsageError(
                f"--run-dir {run_dir} holds a run with {key}={before!r}, but this command sets "
                f"{key}={value!r}; repeat the run's own command to continue it, give another --run-dir "
                f"for a new run, or --resume {run_dir} {key}=... to change it in a new folder"
            )


def labml_place(run_dir: Path) -> dict[str, Any]:
    """
    What `labml.experiment.create` needs to put its run into `run_dir` itself (rank 0 calls it, just
    before). labml places a run at `<experiments path>/<name>/<uuid>`, and `pathlib` drops everything
    before an absolute part, so an absolute name (the parent folder) and the folder's own name as the
    uuid give exactly `run_dir`. The tags, which labml would derive from the name, stay the experiment's.

    labml records the process that started a run in `pids/0.pid` and refuses to start a run whose
    file exists. A killed attempt never removes its own, so the one left by an earlier attempt is
    cleared here: the folder is continued on purpose, and that process is gone (or on another node).
    """
    (run_dir / "pids" / "0.pid").unlink(missing_ok=True)
    return {"name": str(run_dir.parent), "uuid": run_dir.name, "tags": {"cifar10"}}


def compared_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings every rank must share: what a checkpoint keeps, less where each machine finds the data."""
    return {key: value for key, value in ckpt.run_config(settings).items() if key not in PLACE_SETTINGS}
