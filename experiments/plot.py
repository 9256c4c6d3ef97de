"""
# Training curves from run folders

```
python -m experiments.plot logs/cifar10/<uuid> [logs/cifar10/<uuid> ...] --out curves.png
```

Every run folder holds `metrics.jsonl`, one line per epoch. This draws, per epoch and one line per run,
the training error, the evaluation error (validation when the run held out a split, otherwise the
test set, which a run only watches) and the learning rate at the end of the epoch. Errors rather than
accuracies, as in the paper's figures: a curve that falls towards 0 reads as "better", and the last
points of two good runs are not squashed together against 100%.

Each run is labelled by its recipe, network and seed when its `results.json` is there, else by its
folder name; `--labels` overrides them.
"""

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class PlotError(Exception):
    """A run folder that cannot be drawn, with what to do about it."""


@dataclass
class Curve:
    """One run's per-epoch numbers."""

    label: str
    epochs: list[int]
    train_error: list[float]
    eval_name: str
    eval_error: list[float | None]
    lr: list[float]


def read_run(path: Path, label: str | None = None) -> Curve:
    """A run folder (or its `metrics.jsonl`) as a `Curve`."""
    folder = path.parent if path.name == "metrics.jsonl" else path
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        raise PlotError(f"{folder} has no metrics.jsonl; pass a run folder such as logs/cifar10/<uuid>")
    try:
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise PlotError(f"{metrics} is not one JSON object per line ({e.msg} at line {e.lineno})") from None
    if not records:
        raise PlotError(f"{metrics} is empty: the run has not finished an epoch yet")
    eval_name = "valid" if any("valid_accuracy" in r for r in records) else "test"
    return Curve(
        label=label or _label(folder),
        epochs=[int(r["epoch"]) for r in records],
        train_error=[1.0 - float(r["train_accuracy"]) for r in records],
        eval_name=eval_name,
        eval_error=[
            1.0 - float(r[f"{eval_name}_accuracy"]) if f"{eval_name}_accuracy" in r else None for r in records
        ],
        lr=[float(r["lr"]) for r in records],
    )


def _label(folder: Path) -> str:
    results = folder / "results.json"
    if results.is_file():
        try:
            r: dict[str, Any] = json.loads(results.read_text())
            return f"{r.get('recipe', '?')} recipe, {r.get('model', '?')}, seed {r.get('seed', '?')}"
        except (json.JSONDecodeError, AttributeError):
            pass
    return folder.name


def draw(curves: list[Curve], out: Path, title: str | None = None) -> None:
    """Three panels side by side: training error, evaluation error, learning rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    eval_names = sorted({c.eval_name for c in curves})
    panels = [
        ("training error (%)", axes[0]),
        (f"{'/'.join(eval_names)} error (%)", axes[1]),
        ("learning rate", axes[2]),
    ]
    for curve in curves:
        (line,) = axes[0].plot(curve.epochs, [100 * e for e in curve.train_error], label=curve.label)
        points = [(x, 100 * e) for x, e in zip(curve.epochs, curve.eval_error, strict=True) if e is not None]
        if points:
            axes[1].plot(*zip(*points, strict=True), color=line.get_color(), marker=".")
        axes[2].plot(curve.epochs, curve.lr, color=line.get_color())
    for name, ax in panels:
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(bottom=0)
    # A log scale shows step drops best, but cannot draw a schedule that ends at 0.
    if all(lr > 0 for curve in curves for lr in curve.lr):
        axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.plot",
        description="Draw training error, evaluation error and learning rate "
        "per epoch from run folders (their metrics.jsonl), one "
        "line per run.",
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN", help="run folders, or their metrics.jsonl"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("curves.png"), help="PNG to write (default curves.png)"
    )
    parser.add_argument("--labels", nargs="+", metavar="LABEL", help="one legend label per run")
    parser.add_argument("--title", help="a title over the panels")
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.runs):
        parser.error(f"--labels gives {len(args.labels)} labels for {len(args.runs)} runs; give one per run")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error('drawing needs matplotlib: pip install -e ".[plot]"')
    labels = args.labels or [None] * len(args.runs)
    try:
        curves = [read_run(run, label) for run, label in zip(args.runs, labels, strict=True)]
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    draw(curves, args.out, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
