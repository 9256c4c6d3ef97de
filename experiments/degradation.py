"""
# The degradation problem: plain networks against residual networks (Figure 6)

```
python experiments/degradation.py --data-dir DATA --recipe cpu --epochs 41 flip_tta=false shift_tta=0 \\
    --time-limit 10000                                                   # again until it draws
python experiments/degradation.py --data-dir DATA --quick              # a subset at half width
python experiments/degradation.py --runs resnet20=logs/cifar10/<uuid> ... --out figure6.png
```

Stacking more layers should never make a network *worse on its own training set*: a deeper network
could copy a shallower one and set its extra layers to the identity. Yet §4.2 and Figure 6 of He et
al. (2015) show a 56-layer *plain* network (the same stack of $3 \\times 3$ convolutions and batch
normalisation, without shortcuts) ending with a **higher training error** than a 20-layer one. That is
not overfitting, which would lower the training error, nor vanishing gradients, which batch
normalisation prevents: it is an optimisation failure, the *degradation problem*. Residual networks
learn $\\mathcal{F}(x) = \\mathcal{H}(x) - x$ instead of $\\mathcal{H}(x)$, so "do nothing" is the easy
default of zero weights, and the order flips back: **ResNet-56 has lower training and test error than
ResNet-20**.

Each network is one ordinary [trainer](cifar10.html) run, `cifar10.train(...)`, with the same settings
for all, in a folder of its own under `--logs-dir` that a rerun resumes (the README lists the flags). The
residual networks keep option A (zero-padding shortcuts, no parameters), so each plain network has exactly
its twin's weights to learn. [`plot.figure6`](plot.html#figure6) draws the errors per epoch.
"""

import argparse
import ast
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python experiments/degradation.py` puts `experiments/` on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import cifar10, cli, plot
from experiments.errors import ExperimentError
from experiments.files import write_json
from experiments.options import annotations

PAPER_WIDTHS = (16, 32, 64)
QUICK = {"train_subset": 5_000, "test_subset": 1_000, "epochs": 20}
# The trainer's own flags (`cli.FLAGS`) pass through, checked by `cifar10.train`, except those that pick
# the network, its folder, its time or what it scores: this script decides them for each network.
TRAINER_FLAGS = [flag for flag in cli.FLAGS if flag.name not in ("--model", "--valid-split", "--resume",
                 "--run-dir", "--eval", "--results", "--logs-dir", "--time-limit")]  # fmt: skip


def network(kind: str, depth: int, widths: tuple[int, ...]) -> tuple[str, dict[str, Any]]:
    """A network's name (`plain-20`, `ResNet-56`) and its trainer settings: a preset, or a `custom` net."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth {depth} is not a CIFAR depth 6n+2 (8, 14, 20, ..., 56, ..., 110)")
    name = f"plain-{depth}" if kind == "plain" else f"ResNet-{depth}"
    if widths == PAPER_WIDTHS and depth in (20, 32, 44, 56, 110):
        return name, {"model": name.lower().replace("-", "")}  # the trainer's preset, plain56 or resnet56
    # §4.2: 6n + 2 layers, the stem, 2n convolutions in each of three stages, and the classifier.
    n = (depth - 2) // 6
    return name, {"model": "custom", "n_blocks": [n, n, n], "n_channels": list(widths),
                  "shortcut": "none" if kind == "plain" else "A"}  # fmt: skip


def setting(text: str) -> tuple[str, Any]:
    """
    A trainer `key=value`: the text where the trainer declares text (`data_dir`), else the Python
    literal it spells (`400`, `[3, 3, 3]`, `false`), else the text, for `cifar10.train` to refuse.
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    if annotations(cifar10.Configs).get(key) is str:
        return key, value
    try:
        return key, ast.literal_eval({"true": "True", "false": "False"}.get(value.lower(), value))
    except (ValueError, SyntaxError):
        return key, value


def parse(argv: list[str] | None) -> argparse.Namespace:
    usage = __doc__.split("\n\n")[1].strip("`\n")  # the docstring's examples
    p = argparse.ArgumentParser(prog="experiments/degradation.py", description=usage,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    # fmt: off
    p.add_argument("--plain", type=int, nargs="*", metavar="D", help="plain depths (20 32 44 56)")
    p.add_argument("--residual", type=int, nargs="*", metavar="D", help="residual depths (20 32 44 56 110)")
    p.add_argument("--widths", type=int, nargs=3, metavar="W", help="stage widths (16 32 64; quick: 8 16 32)")
    p.add_argument("--quick", action="store_true", help="5k/1k images, half width, depths 20 56, 20 epochs")
    p.add_argument("--runs", nargs="+", default=[], metavar="NET=RUN", help="networks from run folders")
    p.add_argument("--plain-epochs", type=int, metavar="N", help="a shorter schedule for the plain networks")
    p.add_argument("--time-limit", type=float, metavar="S", help="seconds for this call; rerun to resume")
    p.add_argument("--out", type=Path, help="the PNG; its JSON beside it (degradation[_quick].png)")
    p.add_argument("--logs-dir", type=Path, default=Path("logs/degradation"), help="a run folder per network")
    p.add_argument("settings", nargs="*", type=setting, metavar="key=value",
                   help="more trainer settings (not right after a list such as --plain 20 56)")
    trainer = p.add_argument_group("the trainer's flags, as experiments/cifar10.py takes them")
    for flag in TRAINER_FLAGS:
        text = flag.help.partition(" (default")[0]
        if flag.metavar is None:
            trainer.add_argument(flag.name, dest=flag.key, action="store_const", const=flag.value, help=text)
        else:
            kind = flag.kind if flag.run else lambda text, key=flag.key: setting(f"{key}={text}")[1]
            trainer.add_argument(flag.name, dest=flag.key, type=kind, metavar=flag.metavar, help=text)
    # fmt: on
    args = p.parse_args(argv)
    if args.time_limit is not None and not args.time_limit > 0:
        p.error(f"--time-limit {args.time_limit}: must be positive")
    widths = args.widths = tuple(args.widths or ((8, 16, 32) if args.quick else PAPER_WIDTHS))
    plain = args.plain if args.plain is not None else [20, 56] if args.quick else [20, 32, 44, 56]
    residual = (
        args.residual if args.residual is not None else [20, 56] if args.quick else [20, 32, 44, 56, 110]
    )
    try:
        args.networks = [(kind, d, *network(kind, d, widths)) for kind, ds in (("plain", plain), ("residual",
                         residual)) for d in ds]  # fmt: skip
    except ValueError as e:
        p.error(str(e))
    names = [n[2] for n in args.networks]
    if len(set(names)) != len(names):
        p.error(f"each depth once per kind, please: {' '.join(names)}")
    args.given = {}
    for item in args.runs:
        name, _, path = item.partition("=")
        match = next((n for n in names if n.lower().replace("-", "") == name.lower().replace("-", "")), None)
        if match is None or not finished(Path(path)):
            p.error(f"--runs {item}: expected NETWORK=RUN_FOLDER, a finished run (with its results.json) or "
                    f"the JSON `python -m experiments.plot` wrote for it, of one of "
                    f"{', '.join(names)}")  # fmt: skip
        args.given[match] = Path(path)
    args.out = args.out or Path("degradation_quick.png" if args.quick else "degradation.png")
    if args.out.suffix.lower() != ".png" or not args.out.parent.is_dir():
        p.error(f"--out {args.out}: give a .png path in a folder that exists")
    # The figure is drawn after hours of training: a missing plotting package must stop it now.
    if importlib.util.find_spec("matplotlib") is None:
        p.error('the figure needs matplotlib, which is not installed: pip install -e ".[plot]"')
    return args


def finished(run: Path) -> bool:
    """A run folder with its results, or the curve JSON of a finished run (kept when its folder is gone)."""
    if run.suffix == ".json":
        try:
            summary = plot.read_curve(run).summary
        except ExperimentError:
            return False
        # What the figure's title reads from a finished run's results.
        return summary is not None and {"recipe", "epochs", "batch_size", "data"} <= summary.keys()
    return (run / "results.json").is_file()


def title(panels: dict[str, list[tuple[int, plot.Curve]]], widths: tuple[int, ...]) -> str:
    """The data and widths, each half's schedule (and whether the plain one is shorter), the line styles."""

    def schedule(curves: list[plot.Curve]) -> str:  # from the runs' results.json
        kinds = {f"{s['recipe']} recipe, {s['epochs']} epochs of batch {s['batch_size']}"
                 for s in (c.summary or {} for c in curves) if s}  # fmt: skip
        return "; ".join(sorted(kinds)) or "unknown schedule"

    plain, residual = ([c for _, c in curves] for curves in panels.values())
    data: dict[str, Any] = next((c.summary["data"] for c in plain + residual if c.summary), {})
    images = " / ".join(f"{data[k]:,} {k[:-7]}" for k in ("train_images", "test_images") if k in data)
    last = [max(c.epochs) for c in plain], [max(c.epochs) for c in residual]
    shorter = " (a shorter schedule)" if all(last) and max(last[0]) < min(last[1]) else ""
    width = "" if widths == PAPER_WIDTHS else f", widths {'/'.join(map(str, widths))}"
    return (f"Figure 6 on CIFAR-10, {images or 'unknown'} images{width}\nplain networks{shorter}: "
            f"{schedule(plain)}\nresidual networks: {schedule(residual)}\n"
            f"thin dashed: training error, bold: test error")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Train (or resume, or read) each network in turn, then write the JSON and draw the figure."""
    args = parse(argv)
    flags = {f.key: getattr(args, f.key) for f in TRAINER_FLAGS if getattr(args, f.key) is not None}
    # Every network scores the test set after every epoch: Figure 6's curves.
    common = {**(QUICK if args.quick else {}), "valid_split": 0, "eval_every_epoch": True,
              **dict(args.settings), **flags}  # fmt: skip
    started, runs = time.monotonic(), {}
    for kind, depth, name, model in args.networks:
        # The trainer's `run_dir`: the same call continues the run in it exactly, or starts it there.
        run_dir = args.given.get(name, args.logs_dir / name)
        if not finished(run_dir):
            settings = {**common, **model, "run_dir": run_dir}
            if kind == "plain" and args.plain_epochs is not None:
                settings["epochs"] = args.plain_epochs
            if args.time_limit is not None:
                settings["time_limit_s"] = max(args.time_limit - (time.monotonic() - started), 1.0)
            print(f"\n=== {name} in {run_dir}", flush=True)
            try:
                results = cifar10.train(**settings)
            except ExperimentError as e:  # one line saying what to fix, and its exit status (2: a setting)
                print(f"error: {name}: {e}", file=sys.stderr, flush=True)
                return e.exit_status
            if results.summary is None:
                print(f"{name} stopped ({results.stopped}) in {run_dir}; run the same command again to "
                      f"resume it, and train the networks after it", flush=True)  # fmt: skip
                return 1
        runs[name] = (kind, depth, run_dir)
    curves = {name: plot.read_run(run_dir, label=name) for name, (_, _, run_dir) in runs.items()}
    panels = {half: [(depth, curves[name]) for name, (kind, depth, _) in runs.items() if kind == k]
              for half, k in (("plain networks", "plain"), ("residual networks", "residual"))}  # fmt: skip
    figure_title = title(panels, args.widths)
    networks = [{"network": name, "kind": kind, "depth": depth, "run_dir": str(run_dir),
                 "epochs": curves[name].epochs, "steps": curves[name].steps,
                 "train_error": curves[name].train_error, "test_error": curves[name].eval_error,
                 "summary": curves[name].summary}
                for name, (kind, depth, run_dir) in runs.items()]  # fmt: skip
    # The numbers first: if drawing fails, the hours of training are on disk.
    write_json(args.out.with_suffix(".json"), {"title": figure_title, "networks": networks})
    plot.save(plot.figure6(panels, figure_title), args.out)
    for n in networks:
        test = n["test_error"][-1]
        print(f"{n['network']:<11} train error {100 * n['train_error'][-1]:6.2f}%  test error "
              f"{'-' if test is None else f'{100 * test:.2f}%':>7}  {n['run_dir']}")  # fmt: skip
    print(f"figure: {args.out}\nnumbers: {args.out.with_suffix('.json')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
