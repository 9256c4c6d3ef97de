"""
# What every benchmark shares

The flags, the `machine:` line and the paired alternating timing of BENCHMARKS.md ("How the numbers are
taken"), hand-written because the pairing is the point: a median over back-to-back pairs cancels most of
a shared machine's slow spells. Speed is printed, never asserted.
"""

import argparse
import datetime
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from experiments.precision import machine


def positive(text: str, least: int = 1) -> int:
    """An `argparse` type: a whole number of at least 1 (or `least`)."""
    if not text.strip().isdigit() or int(text) < least:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least {least}, got {text!r}")
    return int(text)


def names(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An `argparse` type: a non-empty comma-separated list of names from `allowed`."""

    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items or not set(items) <= set(allowed):
            raise argparse.ArgumentTypeError(f"got {text!r}; choose from {', '.join(allowed)}")
        return items

    return parse


def parser(
    doc: str | None, repeats: int, devices: Sequence[str] = ("cpu", "cuda")
) -> argparse.ArgumentParser:
    """The flags every benchmark takes, spelt as the trainer spells them; `doc` less its title is the help."""
    description = (doc or "").split("\n", 2)[-1]
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    device = "cuda" if "cuda" in devices and torch.cuda.is_available() else "cpu"
    p.add_argument("--device", choices=devices, default=device, help=f"where to measure (here: {device})")
    p.add_argument("--threads", type=positive, help="torch CPU threads (default: torch's, one per core)")
    p.add_argument("--repeats", type=positive, default=repeats, help=f"alternating timed repeats ({repeats})")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run at tiny sizes")
    return p


def start(p: argparse.ArgumentParser, args: argparse.Namespace, **quick: Any) -> torch.device:
    """
    Apply `--quick`'s sizes, check the device, set the threads and print the `machine:` line, kept as
    `args.machine`: the trainer's `precision.machine`, the cores, the load and the time.
    """
    vars(args).update(quick if args.quick else {})
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch.cuda.is_available() is False here; run with --device cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":  # cuDNN picks its fastest algorithm for fixed shapes, as the trainer lets it
        torch.backends.cudnn.benchmark = True
    m, now = machine(device), datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.machine = (f"{m['device']}, CPU {m['cpu']} ({os.cpu_count()} cores), torch {m['torch']}, "
                    f"Python {m['python']}, {load_average()}, {now}")  # fmt: skip
    print(f"machine: {args.machine}", flush=True)
    return device


def load_average(label: str = "load average") -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was while it was measured."""
    return " ".join([label, *(f"{load:.2f}" for load in getattr(os, "getloadavg", lambda: ())())])


def time_call(run: Callable[[], object], device: torch.device) -> float:
    """
    Seconds one call of `run` takes, its device work included (CUDA kernels run asynchronously), or the
    seconds it returns if it times itself.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda _: None
    sync(device)
    started = time.perf_counter()
    own = run()
    sync(device)
    return own if isinstance(own, float) else time.perf_counter() - started


def alternate(runs: Sequence[Callable[[], object]], repeats: int, device: torch.device,
              warmup: int = 1) -> list[list[float]]:  # fmt: skip
    """
    Seconds of every repeat of each callable, in order A B, B A, ...: one list per callable. `warmup`
    untimed calls of each come first (compilation, kernel choice, first allocations, worker start-up).
    """
    for run in [*runs] * warmup:
        run()
    seconds: list[list[float]] = [[] for _ in runs]
    for repeat in range(repeats):
        for i in range(len(runs)) if repeat % 2 == 0 else reversed(range(len(runs))):
            seconds[i].append(time_call(runs[i], device))
    return seconds


def rate_summary(images: int, seconds: Sequence[float]) -> tuple[float, float]:
    """Median images per second over the repeats, and the spread (max − min) as a share of it."""
    rates = [images / s for s in seconds]
    median = statistics.median(rates)
    return median, (max(rates) - min(rates)) / median


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median over repeats of `numerator[i] / denominator[i]`, two times taken back to back."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with columns as wide as their widest cell (markdown-compatible)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in (headers, *rows)]  # fmt: skip
    return "\n".join([lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]])


def first_reaching(history: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first epoch (`metrics.jsonl`) whose test accuracy reaches `target` (watched, never chosen on)."""
    accuracy = "test_accuracy"
    return next((r for r in history if r.get(accuracy) is not None and r[accuracy] >= target), None)
