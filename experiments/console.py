"""
# What a run prints

The lines of the README's "What a run prints", each a plain function of numbers, so that tests compare
text without running anything or reading a clock; [`Console`](#Console) decides only where they go.
"""

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

WIDTH = 100


def duration(seconds: float) -> str:
    """`8 h 43 min`, `12 min 5 s`, `45 s`: as precise as an estimate deserves."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def start_line(
    run_dir: Path, *, model: str, recipe: str, epochs: int, batch_size: int, device: str,
    resumed_from: Path | None = None, epoch: int = 0, step: int = 0, gpu_sized_on_cpu: bool = False,
) -> str:  # fmt: skip
    """The line a run starts with: what trains, for how long, where, and where its files go."""
    where = f"resumed from {resumed_from} after epoch {epoch} (step {step}); " if resumed_from else ""
    hint = "; this recipe is sized for a GPU, --recipe cpu for a CPU" if gpu_sized_on_cpu else ""
    return (
        f"Training {model} ({recipe} recipe) for {epochs} epochs of batch {batch_size} on {device}; "
        f"{where}run folder {run_dir}{hint}"
    )


def estimate_line(
    seconds: float, steps: int, images_per_s: float, cpu_recipe_s: float | None = None, cpu_caveat: str = ""
) -> str:
    """The expected training time once the first steps are timed, with the CPU recipe's beside it."""
    line = f"estimated training time: {duration(seconds)} for {steps} steps at {images_per_s:.0f} images/s"
    if cpu_recipe_s is not None:
        line += f"; --recipe cpu would take about {duration(cpu_recipe_s)}{cpu_caveat}"
    return line


def status_line(
    step: int, steps: int, loss: float, accuracy: float, images_per_s: float, eta_s: float | None
) -> str:
    """The live line: each number once, within `WIDTH` columns."""
    eta = duration(eta_s) if eta_s is not None else "?"
    line = f"step {step}/{steps}  loss {loss:.4f}  accuracy {accuracy:.4f}  {images_per_s:.0f} images/s"
    return f"{line}  ETA {eta}"[:WIDTH]


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """One epoch's record (as in `metrics.jsonl`): the splits it evaluated, and the run's rate so far."""
    parts = [f"step {record['step']}", f"lr {record['lr']:.4g}"]
    for split in ("train", "valid", "test"):
        if f"{split}_loss" in record:
            parts.append(f"{split} loss {record[f'{split}_loss']:.4f} {_accuracy(record, split)}")
    parts += [f"{record['epoch_train_time_s']:.1f} s", f"{record['train_images_per_s']:.0f} images/s"]
    return f"epoch {record['epoch']}/{epochs}: " + ", ".join(parts)


def _accuracy(scores: dict[str, Any], split: str) -> str:
    """`accuracy A` for the single view, with the test-time views' figure beside it when there is one."""
    text = f"accuracy {scores[f'{split}_accuracy']:.4f}"
    if scores.get(f"{split}_accuracy_tta") is not None:
        text += f" (TTA {scores[f'{split}_accuracy_tta']:.4f})"
    return text


def end_line(results: dict[str, Any]) -> str:
    """The line a finished run ends with, from its `results.json`."""
    scores = [
        f"{split} loss {results[f'{split}_loss']:.4f} {_accuracy(results, split)}"
        for split in ("valid", "test")
        if results.get(f"{split}_loss") is not None
    ]
    return (
        f"Finished {results['epochs']} epochs ({results['steps']} steps) in {results['wall_time_s']:.1f} s, "
        f"{results['train_time_s']:.1f} s of it training; {', '.join(scores)}"
    )


def accuracy_line(results: dict[str, Any]) -> str:
    """
    The last line of a run or `--eval`: the paper's single view, then the test-time average if any; a
    validation run's are its validation images', as it never reads the test set.
    """
    split = "test" if results.get("test_accuracy") is not None else "valid"
    line = f"{split} accuracy: {results[f'{split}_accuracy']:.4f} (single view)"
    if results.get(f"{split}_accuracy_tta") is not None:
        line += (
            f"; {results[f'{split}_accuracy_tta']:.4f} averaged over {results['tta_views']} test-time views"
        )
    if split == "valid":
        line += " (a validation run leaves the test set unread; --eval RUN scores it)"
    return line


class Console:
    """
    Where the lines go. On a terminal the status line is redrawn in place; elsewhere (a file, `tail -f`)
    it is printed whole at most every `every_s` seconds. Tests replace the `clock`.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s, self.clock = every_s, clock
        self._last: float | None = None
        self._drawn = 0

    def line(self, text: str) -> None:
        """A line that stays (start, estimate, epoch, end); a drawn status line is cleared first."""
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self._drawn = 0
        print(text, file=self.stream, flush=True)

    def status(self, text: str) -> None:
        if self.live:
            self.stream.write("\r" + text.ljust(self._drawn))
            self.stream.flush()
            self._drawn = len(text)
            return
        now = self.clock()
        if self._last is None or now - self._last >= self.every_s:
            self._last = now
            print(text, file=self.stream, flush=True)
