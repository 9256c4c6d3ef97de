"""
# What a run prints: labml's live console on a terminal, plain lines everywhere else

On a terminal labml redraws one status line in place while it trains: a carriage return takes the
cursor back to the start of the line, and ANSI escape codes colour the numbers. That is pleasant to
watch and unreadable anywhere else. Sent to a file (a cluster job's log, `nohup`, CI) the same bytes
become one very long line per epoch, thousands of refreshes joined by `\\r` and full of escape codes,
which neither `less` nor `grep` can make sense of.

So the choice is made once per run, from where standard output goes:

* **a terminal** (or a notebook, where labml has a display of its own): labml's console, unchanged;
* **anything else**: labml's progress display is switched off, the messages it still has to give (the
  run header, its warnings) are written as whole lines without colour, and the trainer writes one
  line when training starts, one per epoch and one at the end. Every line is complete when it is
  written, so `tail -f` shows progress and `grep '^epoch'` gives the curve.

[`use_live_console`](#use_live_console) decides and sets labml up; [`print_plain`](#print_plain) writes
the start, epoch and end lines, and does nothing on a terminal, where labml shows the same numbers.
"""

import sys
from pathlib import Path
from typing import Any

from labml.internal.logger import logger_singleton
from labml.internal.logger.destinations import Destination
from labml.internal.logger.destinations.factory import create_destination
from labml.internal.monitor import monitor_singleton
from labml.internal.util import is_ipynb


def is_live() -> bool:
    """Whether standard output can show labml's live console: a terminal, or a notebook."""
    stream = sys.stdout
    return bool(stream is not None and stream.isatty()) or is_ipynb()


class PlainDestination(Destination):
    """
    A labml log destination for files and pipes: whole lines only, without colour.

    labml hands every destination a list of text parts, each with an optional style, and says whether
    the line is finished. An unfinished line is a refresh that the next one overwrites on a terminal;
    in a file it would only pile up, so it is dropped. Blank lines, which labml uses to space out its
    screen, are dropped too.
    """

    def log(self, parts: list[str | tuple[str, Any]], *, is_new_line: bool, is_reset: bool) -> None:
        if not is_new_line:
            return
        text = "".join(part if isinstance(part, str) else part[0] for part in parts)
        if text.strip():
            print(text, flush=True)


def use_live_console() -> bool:
    """
    Set labml's console output for where standard output goes now; `True` for the live console.

    Both settings are made every time, so a process that trains several times (the degradation
    experiment, a notebook, the tests) gets what its current output calls for, whatever a run before
    it chose. `monitor_singleton().silent()` is labml's own switch for its progress display, the one
    it uses for the quiet processes of a multi-GPU run. labml has no public setter for where its
    logger writes, so we replace the contents of the logger's list of destinations; on a terminal
    they are rebuilt with labml's own factory, which is what labml starts with.
    """
    live = is_live()
    monitor_singleton().silent(not live)
    destinations: list[Destination] = logger_singleton()._Logger__destinations
    destinations[:] = create_destination() if live else [PlainDestination()]
    return live


# ## The plain lines


def start_line(
    run_dir: Path,
    *,
    model: str,
    recipe: str,
    epochs: int,
    batch_size: int,
    device: str,
    resumed_from: Path | None = None,
    epoch: int = 0,
    step: int = 0,
) -> str:
    """The line a run starts with: what trains, for how long, where, and where its files go."""
    where = f"resumed from {resumed_from} after epoch {epoch} (step {step}); " if resumed_from else ""
    return (
        f"Training {model} ({recipe} recipe) for {epochs} epochs of batch {batch_size} on {device}; "
        f"{where}run folder {run_dir}"
    )


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """
    One epoch's numbers, from the record that also goes to `metrics.jsonl`.

    Validation and test numbers appear only for the epochs that were evaluated (all of them, unless
    `eval_every_epoch=False`). The rate is the run's average so far, as in the record.
    """
    parts = [f"step {record['step']}", f"lr {record['lr']:.4g}"]
    for split in ("train", "valid", "test"):
        if f"{split}_loss" in record:
            parts.append(f"{split} loss {record[f'{split}_loss']:.4f} {_accuracy(record, split)}")
    parts.append(f"{record['epoch_train_time_s']:.1f} s")
    parts.append(f"{record['train_images_per_s']:.0f} images/s")
    return f"epoch {record['epoch']}/{epochs}: " + ", ".join(parts)


def _accuracy(scores: dict[str, Any], split: str) -> str:
    """`accuracy A` for the single view, with the test-time views' figure beside it when there is one."""
    text = f"accuracy {scores[f'{split}_accuracy']:.4f}"
    if scores.get(f"{split}_accuracy_tta") is not None:
        text += f" (TTA {scores[f'{split}_accuracy_tta']:.4f})"
    return text


def end_line(results: dict[str, Any]) -> str:
    """The line a finished run ends with, from its `results.json`."""
    valid = (
        f"valid loss {results['valid_loss']:.4f} {_accuracy(results, 'valid')}, "
        if results.get("valid_loss") is not None
        else ""
    )
    return (
        f"Finished {results['epochs']} epochs ({results['steps']} steps) in "
        f"{results['wall_time_s']:.1f} s, {results['train_time_s']:.1f} s of it training; {valid}"
        f"test loss {results['test_loss']:.4f} {_accuracy(results, 'test')}"
    )


def accuracy_line(results: dict[str, Any]) -> str:
    """
    The last line of a run or an evaluation: the paper's protocol (one view of each test image) first,
    and the test-time average beside it, labelled with its number of views, when the recipe uses one.
    """
    line = f"test accuracy: {results['test_accuracy']:.4f} (single view)"
    if results.get("test_accuracy_tta") is not None:
        line += f"; {results['test_accuracy_tta']:.4f} averaged over {results['tta_views']} test-time views"
    return line


def print_plain(line: str) -> None:
    """Print one of the lines above when the output is not a terminal; on a terminal labml shows it all."""
    if not is_live():
        print(line, flush=True)
