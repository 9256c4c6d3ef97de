"""
# Training curves from run folders

```
python -m experiments.plot logs/cifar10/<uuid> [logs/cifar10/<uuid> ...] --out curves.png
```

[`draw`](#draw) plots each run's `metrics.jsonl` per epoch (training error, validation or else test
error, learning rate), a line per run; [`figure6`](#figure6) draws the paper's Figure 6 from the same
curves for [`degradation.py`](degradation.html). Errors, as in the paper, so that two good runs are not
squashed together against 100%.

Beside the PNG goes its JSON (`curves.json`), the numbers drawn: a run folder lives on one machine's disk,
which can be gone by the next session, but JSON committed beside the figure keeps the curve. One run's JSON
is read back in place of its folder, here and in `degradation.py --runs`.
"""

import argparse
import importlib
import importlib.util
import json
import math
import sys
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from experiments.errors import ExperimentError
from experiments.files import write_json
from resnet.files import atomic_write


@dataclass
class Curve:
    """One run's per-epoch numbers (errors as fractions), and its `results.json` once it has finished."""

    label: str
    epochs: list[int]
    steps: list[int]
    train_error: list[float]
    eval_name: str
    # None for an epoch that was not evaluated (`eval_every_epoch=False`).
    eval_error: list[float | None]
    lr: list[float]
    summary: dict[str, Any] | None = None


def read_run(path: Path, label: str | None = None) -> Curve:
    """A run folder (or its `metrics.jsonl`, or the JSON `main` wrote for one run) as a `Curve`."""
    if path.suffix == ".json":
        return read_curve(path, label)
    folder = path.parent if path.name == "metrics.jsonl" else path
    metrics, results = folder / "metrics.jsonl", folder / "results.json"
    if not metrics.is_file():
        raise ExperimentError(f"{folder} has no metrics.jsonl; pass a run folder such as logs/cifar10/<uuid>")
    try:
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        summary = json.loads(results.read_text()) if results.is_file() else None
    except json.JSONDecodeError as e:
        raise ExperimentError(f"{folder}: a file there is not JSON ({e.msg} at line {e.lineno})") from None
    if not records:
        raise ExperimentError(f"{metrics} is empty: the run has not finished an epoch yet")
    name = "valid" if any("valid_accuracy" in r for r in records) else "test"
    s = summary or {}
    label = label or (
        f"{s.get('recipe')} recipe, {s.get('model')}, seed {s.get('seed')}" if s else folder.name
    )
    return Curve(
        label, [int(r["epoch"]) for r in records], [int(r["step"]) for r in records],
        [1.0 - float(r["train_accuracy"]) for r in records], name,
        [1.0 - float(r[f"{name}_accuracy"]) if f"{name}_accuracy" in r else None for r in records],
        [float(r["lr"]) for r in records], summary,
    )  # fmt: skip


def read_curve(path: Path, label: str | None = None) -> Curve:
    """The one curve in a JSON that `main` wrote: a figure of several runs has no single answer."""
    try:
        curves = json.loads(path.read_text())["curves"]
        (c,) = curves
        # Every field checked for its exact type, so that a hand-edited file fails here, not in matplotlib.
        curve = Curve(c["label"], _numbers(c["epochs"], int), _numbers(c["steps"], int),
                      _numbers(c["train_error"], float), c["eval_name"],
                      [None if x is None else _number(x, float) for x in c["eval_error"]],
                      _numbers(c["lr"], float), c["summary"])  # fmt: skip
        lengths = {len(v) for v in (curve.epochs, curve.steps, curve.train_error, curve.eval_error, curve.lr)}
        if not curve.epochs or len(lengths) != 1 or not isinstance(curve.label, str) or not isinstance(
                curve.eval_name, str) or not isinstance(curve.summary, dict | None):  # fmt: skip
            raise ValueError("not one run's curve")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ExperimentError(f"{path} is not the JSON of one run written by `python -m experiments.plot RUN "
                              f"--out NAME.png`; draw that run alone to get one") from None  # fmt: skip
    curve.label = label or curve.label
    return curve


def _number(x: Any, kind: type) -> Any:
    """`x` if it is a finite number of `kind` (an int counts as a float; a bool is never a number)."""
    if isinstance(x, bool) or not isinstance(x, int if kind is int else int | float) or not math.isfinite(x):
        raise ValueError(f"{x!r} is not a finite {kind.__name__}")
    return kind(x)


def _numbers(xs: Any, kind: type) -> list[Any]:
    if not isinstance(xs, list):
        raise ValueError("not a list")
    return [_number(x, kind) for x in xs]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    return importlib.import_module("matplotlib.pyplot")


def evaluated(curve: Curve) -> tuple[list[int], list[float]]:
    """The epochs that were evaluated, and their evaluation error in percent."""
    points = [(x, 100 * e) for x, e in zip(curve.epochs, curve.eval_error, strict=True) if e is not None]
    return [x for x, _ in points], [y for _, y in points]


def save(figure: Any, out: Path) -> None:
    """Write the PNG atomically, so an interrupted run never leaves half an image."""
    atomic_write(out, lambda f: figure.savefig(f, dpi=100, format="png"))
    _pyplot().close(figure)


def draw(curves: list[Curve], title: str | None = None) -> Any:
    """Three panels side by side: training error, evaluation error, learning rate."""
    figure, axes = _pyplot().subplots(1, 3, figsize=(13, 3.8))
    for curve in curves:
        (line,) = axes[0].plot(curve.epochs, [100 * e for e in curve.train_error], label=curve.label)
        axes[1].plot(*evaluated(curve), color=line.get_color(), marker=".")
        axes[2].plot(curve.epochs, curve.lr, color=line.get_color())
    names = "/".join(sorted({c.eval_name for c in curves}))
    for ax, name in zip(axes, ("training error (%)", f"{names} error (%)", "learning rate"), strict=True):
        ax.set(xlabel="epoch", ylabel=name)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(bottom=0)
    # A log scale shows step drops best, but cannot draw a schedule that ends at 0.
    if all(lr > 0 for curve in curves for lr in curve.lr):
        axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def figure6(panels: dict[str, list[tuple[int, Curve]]], title: str) -> Any:
    """
    Figure 6, a panel per entry of `panels` (plain, then residual): error in percent per epoch, training
    thin and dashed, test bold, one colour per depth; sized to stay legible at the README's width.
    """
    depths = sorted({depth for curves in panels.values() for depth, _ in curves})
    # One colour per depth (matplotlib's cycle), the same in both panels: a depth is easy to follow.
    colour = {depth: f"C{i % 10}" for i, depth in enumerate(depths)}
    figure, axes = _pyplot().subplots(1, len(panels), figsize=(11, 4.8), sharey=True, squeeze=False)
    for ax, (name, curves) in zip(axes[0], panels.items(), strict=True):
        for depth, curve in curves:
            ax.plot(curve.epochs, [100 * e for e in curve.train_error], "--", lw=1, color=colour[depth])
            xs, ys = evaluated(curve)  # a run evaluated only at its end gets a marker to be seen at all
            ax.plot(xs, ys, "-", lw=2.5, color=colour[depth], label=curve.label,
                    marker="o" if len(xs) < 3 else None)  # fmt: skip
        ax.set_title(name, fontsize=13)
        ax.set_xlabel("epoch", fontsize=12)
        ax.tick_params(labelsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=11, loc="upper right")
    axes[0][0].set_ylabel("error (%)", fontsize=12)
    # The first epochs' errors, high and noisy at a large learning rate, would squash the end, where the
    # curves part, to a sliver: the axis stops at 30% (the paper's at 20%), higher for runs that end high.
    curves = [curve for pairs in panels.values() for _, curve in pairs]
    last = [100 * c.train_error[-1] for c in curves] + [ys[-1] for _, ys in map(evaluated, curves) if ys]
    axes[0][0].set_ylim(0, max(30, 5 * math.ceil(1.5 * max(last, default=0) / 5)))
    figure.suptitle("\n".join(textwrap.fill(line, 110) for line in title.splitlines()), fontsize=11)
    figure.tight_layout()
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.plot", description=__doc__.split("\n\n")[2])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                        help="run folders, metrics.jsonl, or the JSON this wrote for one run")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("curves.png"),
                        help="PNG to write (curves.png); its numbers go beside it (curves.json)")  # fmt: skip
    parser.add_argument("--labels", nargs="+", metavar="LABEL", help="one legend label per run")
    parser.add_argument("--title", help="a title over the panels")
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.runs):
        parser.error(f"--labels gives {len(args.labels)} labels for {len(args.runs)} runs; give one per run")
    if importlib.util.find_spec("matplotlib") is None:
        parser.error('drawing needs matplotlib: pip install -e ".[plot]"')
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out {args.out}: give a .png path (its JSON goes beside it)")
    # The JSON beside the PNG must never replace a kept curve it is drawn from.
    if any(run.resolve() == args.out.with_suffix(".json").resolve() for run in args.runs):
        parser.error(f"--out {args.out}: its JSON would overwrite an input; give another name")
    labels = args.labels or [None] * len(args.runs)
    try:
        curves = [read_run(run, label) for run, label in zip(args.runs, labels, strict=True)]
    except ExperimentError as e:  # a run folder that cannot be drawn, and what to do
        print(f"error: {e}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The numbers first, so that a failure to draw leaves the curves kept.
    write_json(args.out.with_suffix(".json"), {"curves": [asdict(c) for c in curves]})
    save(draw(curves, args.title), args.out)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
