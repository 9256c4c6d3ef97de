"""
# What every benchmark shares

Timing on a shared machine is noisy: other processes come and go, CPU clocks change, caches warm up.
Every benchmark here therefore measures the things it compares in *alternating* repeats (A, B, B, A,
A, B, ...), so a slow spell hits both sides about equally, and reports the *median* of the repeats,
which one unlucky repeat cannot move. The spread printed beside it says how much to trust a ratio.
"""

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import torch


def parse_device(name: str) -> torch.device:
    """The `--device` flag: `cpu` or `cuda`, with a clear error when CUDA is asked for but absent."""
    if name not in ("cpu", "cuda"):
        raise SystemExit(f"--device must be 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "--device cuda was given, but torch.cuda.is_available() is False on this "
            "machine; run with --device cpu"
        )
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """CUDA kernels run asynchronously; a clock read without waiting for them measures only the launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(run: Callable[[], None], device: torch.device) -> float:
    """Seconds one call of `run` takes, all its device work included."""
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def alternate(runs: Sequence[Callable[[], None]], repeats: int, device: torch.device) -> list[list[float]]:
    """
    Time every callable `repeats` times, interleaved, reversing the order on every other repeat so
    neither side always runs first (right after the other has warmed or heated the machine).
    Returns the seconds of each repeat, one list per callable.
    """
    seconds: list[list[float]] = [[] for _ in runs]
    for repeat in range(repeats):
        order = list(range(len(runs)))
        if repeat % 2 == 1:
            order.reverse()
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
    The median over repeats of `numerator[i] / denominator[i]`. The two times of one repeat were
    measured back to back, under the same load, so their ratio cancels most of a slow spell that a
    ratio of two separate medians would keep.
    """
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def set_threads(threads: int | None) -> None:
    """`--threads`: leave torch's default (one per core) unless a number is given."""
    if threads is not None:
        if threads < 1:
            raise SystemExit(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def machine_description(device: torch.device) -> str:
    """One line naming what the numbers were measured on, for BENCHMARKS.md."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [
        f"CPU {cpu}",
        f"{os.cpu_count()} cores",
        f"{torch.get_num_threads()} torch threads",
        f"torch {torch.__version__}",
        datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    ]
    if device.type == "cuda":
        parts.insert(0, f"GPU {torch.cuda.get_device_name(device)}")
    return ", ".join(parts)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain-text table with columns as wide as their widest cell (markdown-compatible)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
