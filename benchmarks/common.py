"""
# What every benchmark shares

Timing on a shared machine is noisy: other processes come and go, CPU clocks change, caches warm up.
Every benchmark here therefore measures the things it compares in *alternating* repeats (A B, B A, A B,
...), so a slow spell hits both sides about equally, and reports the *median* of the repeats, which one
unlucky repeat cannot move. The spread printed beside it, and the machine's load average printed at the
start, say how much to trust a ratio. Speed is always printed, never asserted.
"""

import argparse
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def positive(text: str) -> int:
    """An `argparse` type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parser(doc: str | None, repeats: int) -> argparse.ArgumentParser:
    """The flags every benchmark takes, spelt as the trainer's command line spells them."""
    # A docstring's example block shows without its Markdown fences.
    description = (doc or "").strip().strip("`").strip()
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if cuda else "cpu",
                   help="where to measure (default: cuda when available)")  # fmt: skip
    p.add_argument("--threads", type=positive, help="torch CPU threads (default: torch's, one per core)")
    p.add_argument("--repeats", type=positive, default=repeats, help=f"alternating timed repeats ({repeats})")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run at tiny sizes")
    return p


def start(p: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """Check the device, set the threads and print the machine line every benchmark's output opens with."""
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False here; run with --device cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        # cuDNN picks the fastest algorithm for the fixed shapes, as the trainer lets it; both sides get it.
        torch.backends.cudnn.benchmark = True
    print(f"machine: {describe_machine(device)}", flush=True)
    return device


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was while it was measured."""
    if not hasattr(os, "getloadavg"):
        return "load average unknown"
    return "load average " + " ".join(f"{load:.2f}" for load in os.getloadavg())


def describe_machine(device: torch.device) -> str:
    """One line naming what the numbers were measured on, and how busy it was, for BENCHMARKS.md."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    parts = [f"CPU {cpu}", f"{os.cpu_count()} cores", f"{torch.get_num_threads()} torch threads",
             f"torch {torch.__version__}", load_average(),
             datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")]  # fmt: skip
    if device.type == "cuda":
        parts.insert(0, f"GPU {torch.cuda.get_device_name(device)}")
    return ", ".join(parts)


def time_call(run: Callable[[], None], device: torch.device) -> float:
    """Seconds one call of `run` takes, its device work included (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def alternate(runs: Sequence[Callable[[], None]], repeats: int, device: torch.device) -> list[list[float]]:
    """
    Time every callable `repeats` times, interleaved, reversing the order on every other repeat so that
    neither side always runs right after the other has warmed or heated the machine. Returns the
    seconds of each repeat, one list per callable.
    """
    seconds: list[list[float]] = [[] for _ in runs]
    for repeat in range(repeats):
        order = range(len(runs)) if repeat % 2 == 0 else reversed(range(len(runs)))
        for i in order:
            seconds[i].append(time_call(runs[i], device))
    return seconds


def rate_summary(images: int, seconds: Sequence[float]) -> tuple[float, float]:
    """Median images per second over the repeats, and the spread (max − min) as a share of it."""
    rates = [images / s for s in seconds]
    median = statistics.median(rates)
    return median, (max(rates) - min(rates)) / median


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """
    The median over repeats of `numerator[i] / denominator[i]`. The two times of one repeat were taken
    back to back under the same load, so their ratio cancels most of a slow spell that a ratio of two
    separate medians would keep.
    """
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with columns as wide as their widest cell (markdown-compatible)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def first_reaching(history: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """
    The first epoch record of a trainer's history (`metrics.jsonl`) whose test accuracy reaches `target`,
    or None. The test curve is only watched: the verdict of a run is always its final epoch.
    """
    return next(
        (r for r in history if r.get("test_accuracy") is not None and r["test_accuracy"] >= target), None
    )
