"""
# The degradation problem: plain networks against residual networks (Figure 6)

```
python experiments/degradation.py --quick                    # a CIFAR-10 subset, minutes per network
python experiments/degradation.py                            # the paper's full schedule (GPU hours)
python experiments/degradation.py --quick --depths 20 32 --out figure6.png
python experiments/degradation.py --quick --stand-in         # no CIFAR-10 here: a synthetic stand-in
```

## What the paper observed

Stacking more layers should never make a network *worse on its own training set*: a deeper network
could copy a shallower one and set its extra layers to the identity. Yet §4.2 and Figure 6 of He et
al. (2015) show exactly that on CIFAR-10. A 56-layer *plain* network (the same stack of $3 \\times 3$
convolutions and batch normalisation, without shortcuts) ends with a **higher training error** than a
20-layer one. This is not overfitting, which would show as lower training error and higher test error;
it is an optimisation failure, and the paper names it the *degradation problem*. Batch normalisation
keeps the signals healthy, so vanishing gradients are not the explanation; the solver simply has a hard
time finding the near-identity mappings that the extra layers would need.

Residual networks ask each block to learn $\\mathcal{F}(x) = \\mathcal{H}(x) - x$ instead of
$\\mathcal{H}(x)$, so "do nothing" is the easy default of zero weights. With the shortcuts in place the
order flips back to what one expects: **ResNet-56 has lower training and test error than ResNet-20**.

## What this script does

It trains the four networks (plain and residual, at two depths; `--depths` changes them) with one and
the same recipe, each as an ordinary run of the trainer [`experiments/cifar10.py`](cifar10.py), so
every run is a labml experiment with its own run folder. After each epoch the trainer records the
training error (on the augmented batches of that epoch, as the paper's thin curves are) and the test
error; this script takes them from the history `train()` returns (the records each run folder's
`metrics.jsonl` holds) and draws Figure 6's two panels: plain networks on the left, residual ones on
the right, training error dashed, test error solid, one colour per depth. The numbers go into a JSON
file next to the plot and into a table on the console.

The plain networks are the CIFAR presets with `shortcut="none"`; the residual ones keep the paper's
option A (zero-padding identity shortcuts). Option A adds no parameters, so each plain network and its
residual twin have exactly the same weights to learn: the shortcuts are the only difference.

## The recipe

Without `--quick`: the paper's §4.2 recipe on all 50,000 training images (batch 128, SGD with momentum
0.9, weight decay $10^{-4}$, learning rate 0.1 divided by 10 at 32k and 48k iterations, 64k
iterations). That is four GPU runs of an hour or so each.

With `--quick`: a class-balanced subset (5,000 training and 1,000 test images by default), 20 epochs of
batch 128, and the same shape of schedule compressed: the learning rate drops by 10 at 50% and 75% of
the iterations, as 32k and 48k are of 64k. With a different batch the learning rate follows the linear
scaling rule, $0.1 \\times B / 128$, unless `--lr` says otherwise.

Two more settings apply to every network alike. `--warmup-steps N` holds the rate at a tenth of its
value for the first N steps, the warm-up §4.2 gives ResNet-110 because 0.1 is "slightly too large to
start converging"; it must end before the first drop. `--amp auto` lets each run choose bf16 where it
is faster (on a CPU, only where the CPU has native bf16 and a timed step confirms it); the JSON and the
table record the format each run trained in.

## What the quick mode can and cannot show

It can show the *early* part of Figure 6: whether the deep plain network falls behind the shallow one
in training error, and whether the residual pair keeps the expected order, after some hundreds of
iterations rather than 64,000. It cannot reproduce the final numbers (ResNet-56 at 6.97% test error, the
plain networks' final gap), because it sees a tenth of the data for about one percent of the
iterations; with so few test images a test error differs from run to run by a point or more; and a
short schedule favours whatever learns fastest at first, which need not be what ends best. One seed per
network is one sample: read small gaps as noise.

What it costs: each network trains on 100,000 images (5,000 × 20 epochs), and a 56-layer network
costs about three times what a 20-layer one does per image, so the time is set by the two deep networks;
RESULTS.md has the measured times of a run on real CIFAR-10. On a CPU shared with other work, try
`--threads 1` (BENCHMARKS.md: two threads competing with other processes can be many times slower).

## On real CIFAR-10

`python experiments/degradation.py --quick --data-dir DATA --no-verify-checksums` (DATA a faithful copy
of CIFAR-10 that is not the official archive; with the official one leave the flag out) trained each
network for 800 iterations. A second run, two and a half times as long with the warm-up and bf16
(`--epochs 50 --warmup-steps 200 --amp auto`), ran 2,000 iterations per network. A third kept the
depths but halved the widths and the batch (`--widths 8 16 32 --batch-size 64 --epochs 100 --amp
auto`), which buys 7,900 iterations per network in the same hour of a two-core CPU. Final training error:

| network | 800 iterations | 2,000 iterations, warm-up | half width, 7,900 iterations of 64 |
|---|---|---|---|
| plain-20 | 45.7% | 36.9% | 18.3% |
| plain-56 | 81.0% | 66.4% | 59.0% |
| ResNet-20 | 41.7% | 20.6% | 12.8% |
| ResNet-56 | 62.1% | 44.5% | **5.9%** |

The plain half of Figure 6 is there in all three: plain-56, with three times the layers, trains far
worse than plain-20. That is the degradation problem itself, since the deeper network could copy the
shallower one and set its extra layers to identities. The residual half needs iterations. In the two
shorter runs ResNet-56 still trails ResNet-20, in every epoch: at a rate of 0.1 and batches of 128 the
deep network is slow to get going. With four times the iterations (at half width) the order turns
round: ResNet-56 is below ResNet-20 in every epoch from epoch 29 on and ends at less than half its
training error (and a lower test error, 24.5% against 27.4%), as in the paper. RESULTS.md has the
runs' commands and times, and how the third setting was found.

![Degradation experiment on CIFAR-10 at half width, 7,900 iterations](figures/degradation_cifar10_narrow.png)

## When CIFAR-10 is not at hand

`--stand-in` writes a synthetic data set in CIFAR-10's on-disk format into a temporary folder and runs
the same experiment on it (see [`write_stand_in`](#write_stand_in)): ten classes of noisy stripe
patterns. Its figure and JSON say so in their titles. It exercises the whole pipeline and asks the same
optimisation question on a different task; what it says about CIFAR-10 is nothing.

The stand-in figure `docs/figures/degradation_quick.png` comes from one such run (1,280 training and 500 test
images, 10 epochs of batch 32, learning rate 0.025, one CPU thread, 8½ minutes for all four). There
plain-56 did not learn at all in its 400 iterations (88% training and test error, chance is 90%) while
plain-20 reached 11% training and 2% test error: the plain half of Figure 6, in an extreme form. The
residual half did *not* appear: the task is too easy to separate ResNet-56 from ResNet-20 (both end
at 0% test error), and ResNet-56 got there more slowly.

The same stand-in with `--quick`'s own recipe (batch 128, learning rate 0.1; the stand-in's 1,280
images make that only 200 iterations) shows how a schedule this short can even invert the residual
half: plain-20 reached 10.7% training error and plain-56 89.8%, as before, but ResNet-56 had not
started learning either (80.6% training error) while ResNet-20 reached 0%. At a rate of 0.1 the deeper
network needs more than 200 steps to get going; the paper warms ResNet-110 up at 0.01 for the same
reason. Read the residual panel of a quick run with this in mind; the real-data run above shows the
same in a milder form.
"""

import argparse
import importlib.util
import math
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # `python experiments/degradation.py` puts `experiments/` on the path; we need the project root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

import resnet
from experiments import cifar10, cli
from experiments import data as cifar_data
from experiments.checkpoint import CheckpointError
from experiments.files import atomic_write, write_json
from experiments.launch import Results
from experiments.models import PLAIN_NETWORKS
from experiments.precision import AMP_CHOICES
from experiments.recipes import ScheduleError
from experiments.synthetic import write_cifar10_folder
from experiments.trainer import RunError

# The paper's CIFAR widths (§4.2: 16, 32 and 64 filters in the three stages).
PAPER_WIDTHS = [16, 32, 64]
# Figure 6 compares 20 and 56 layers (it also shows 32, 44 and 110).
DEFAULT_DEPTHS = [20, 56]
QUICK_TRAIN_IMAGES = 5_000
QUICK_TEST_IMAGES = 1_000
QUICK_EPOCHS = 20
PAPER_BATCH = 128
PAPER_LR = 0.1

# Stand-in defaults, small enough for a CPU core.
STAND_IN_TRAIN_IMAGES = 1_280
STAND_IN_TEST_IMAGES = 500


class DegradationError(Exception):
    """A problem that ends the experiment with a one-line message and exit status 1."""


# ## The networks


@dataclass(frozen=True)
class Network:
    """One of the compared networks: `plain` (no shortcuts) or `residual` (option A), `depth` layers."""

    kind: str
    depth: int
    widths: tuple[int, ...] = tuple(PAPER_WIDTHS)

    @property
    def name(self) -> str:
        return f"{'plain' if self.kind == 'plain' else 'ResNet'}-{self.depth}"

    @property
    def blocks_per_stage(self) -> int:
        # §4.2: $6n + 2$ layers, the stem, $2n$ convolutions in each of three stages, and the classifier.
        return (self.depth - 2) // 6

    def trainer_settings(self) -> dict[str, Any]:
        """How the trainer names this network: a preset where one exists, else a `custom` network."""
        preset = f"plain{self.depth}" if self.kind == "plain" else f"resnet{self.depth}"
        known = PLAIN_NETWORKS if self.kind == "plain" else resnet.PRESETS
        if list(self.widths) == PAPER_WIDTHS and preset in known:
            return {"model": preset}
        n = self.blocks_per_stage
        return {
            "model": "custom",
            "n_blocks": [n, n, n],
            "n_channels": list(self.widths),
            "shortcut": "none" if self.kind == "plain" else "A",
        }


def networks_for(depths: list[int], widths: list[int]) -> list[Network]:
    """Plain networks first (the left panel), then residual ones, each in the order of `depths`."""
    return [Network(kind, depth, tuple(widths)) for kind in ("plain", "residual") for depth in depths]


def check_depth(depth: int) -> None:
    if depth < 8 or (depth - 2) % 6:
        raise DegradationError(
            f"depth {depth} is not a CIFAR network depth: it must be 6n+2 with n >= 1 "
            f"(8, 14, 20, 26, 32, 38, 44, 50, 56, ..., 110, ...)"
        )


# ## The data


@dataclass
class DataPlan:
    """Where the images come from, and how many of them a run uses (None: all)."""

    description: str
    data_dir: Path | None
    stand_in: bool
    train_images: int | None
    test_images: int | None
    seed: int
    # Off only when the user says so, for a copy of CIFAR-10 rebuilt from another source.
    verify_checksums: bool = True

    def trainer_settings(self) -> dict[str, Any]:
        """
        How the trainer is told which images to use. A CIFAR-10 subset is the trainer's own
        `train_subset`/`test_subset` (class-balanced, drawn from the run's seed) of the user's folder, read
        with every check on. The stand-in already has exactly the planned sizes and is not the official
        data, so only its md5 check is off.
        """
        if self.stand_in:
            return {"verify_checksums": False}
        settings: dict[str, Any] = {} if self.verify_checksums else {"verify_checksums": False}
        if self.train_images is not None:
            settings["train_subset"] = self.train_images
        if self.test_images is not None:
            settings["test_subset"] = self.test_images
        return settings


STAND_IN_CLASSES = tuple(
    f"{axis} stripes, {cycles} cycles" for axis in ("vertical", "horizontal") for cycles in (2, 3, 4, 5, 6)
)


def stand_in_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """
    `n` stand-in images (uint8 `[n, 3, 32, 32]`) and labels, balanced over the ten classes.

    Class $k$ is a sinusoidal stripe pattern: vertical stripes for classes 0–4 and horizontal ones for
    5–9, with 2, 3, 4, 5 or 6 periods across the image. Each image gets its own random phase, contrast
    (amplitude 20–50 grey levels) and flat background colour, plus Gaussian pixel noise (σ = 40), so
    neither colour nor a single pixel tells the class: a network has to pick up frequency and
    orientation, which survive the trainer's crops and horizontal flips. Nothing was tuned to favour
    plain or residual networks; the numbers were fixed before the first run.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10)
    cycles = np.array([2, 3, 4, 5, 6])[labels % 5].astype(np.float64)
    vertical = labels < 5
    position = np.arange(32, dtype=np.float64) / 32
    phase = rng.uniform(0, 2 * math.pi, size=n)
    wave = np.sin(2 * math.pi * cycles[:, None] * position[None, :] + phase[:, None])  # [n, 32]
    pattern = np.where(vertical[:, None, None], wave[:, None, :], wave[:, :, None])  # [n, 32, 32]
    amplitude = rng.uniform(20, 50, size=(n, 1, 1, 1))
    background = rng.uniform(60, 196, size=(n, 3, 1, 1))
    noise = rng.normal(0, 40, size=(n, 3, 32, 32))
    images = background + amplitude * pattern[:, None] + noise
    return np.clip(np.rint(images), 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_stand_in(root: Path, n_train: int, n_test: int, seed: int) -> None:
    """
    The stand-in set under `root/cifar-10-batches-py/`, written as the official files were (training
    and test images from different seeds), so the trainer reads it with the same code as the real set.
    The training images are spread over the five `data_batch_*` files.
    """
    images, labels = stand_in_images(n_train, seed)
    parts = np.array_split(np.arange(n_train), len(cifar_data.TRAIN_FILES))
    write_cifar10_folder(
        root,
        [(images[part], labels[part]) for part in parts],
        stand_in_images(n_test, seed + 10_000),
        class_names=STAND_IN_CLASSES,
        description="synthetic stand-in (stripes), not CIFAR-10",
        name_prefix="stand_in",
    )


@contextmanager
def prepared_data(plan: DataPlan) -> Iterator[Path]:
    """
    The data folder the trainer reads, kept for as long as the experiment runs: the user's folder, used
    in place and only read (a subset is chosen by the trainer), or for the stand-in a temporary folder
    that is removed afterwards.
    """
    if not plan.stand_in:
        assert plan.data_dir is not None
        yield plan.data_dir
        return
    with tempfile.TemporaryDirectory(prefix="degradation-data-") as tmp:
        root = Path(tmp)
        write_stand_in(
            root,
            plan.train_images or STAND_IN_TRAIN_IMAGES,
            plan.test_images or STAND_IN_TEST_IMAGES,
            plan.seed,
        )
        yield root


# ## Running the trainer


@dataclass
class Curve:
    """What one network's run recorded: per-epoch errors (fractions, not percent) and where it lives."""

    network: str
    kind: str
    depth: int
    epochs: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    train_error: list[float] = field(default_factory=list)
    test_error: list[float] = field(default_factory=list)
    parameters: int = 0
    run_dir: str = ""
    wall_time_s: float = 0.0
    device: str = ""
    # The number format the run trained in: with `--amp auto` each run times its own step and decides.
    amp: str = ""


@dataclass
class Schedule:
    """The one recipe every network gets."""

    epochs: int | None
    batch_size: int
    learning_rate: float
    # The trainer's `amp` for every network (None: its default, float32).
    amp: str | None = None
    # §4.2's warm-up for ResNet-110: the rate held at a tenth of its value for the first steps.
    warmup_steps: int = 0

    def trainer_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {
            "batch_size": self.batch_size,
            "optimizer.learning_rate": self.learning_rate,
        }
        if self.epochs is not None:
            settings["epochs"] = self.epochs
        if self.amp is not None:
            settings["amp"] = self.amp
        if self.warmup_steps:
            settings["lr_warmup_steps"] = self.warmup_steps
        return settings


def make_schedule(
    epochs: int | None,
    batch_size: int,
    learning_rate: float | None,
    amp: str | None = None,
    warmup_steps: int = 0,
) -> Schedule:
    """
    The paper's schedule, compressed to `epochs` when given. The trainer states its drops as fractions
    of the run (50% and 75%, the paper's 32k and 48k of 64k), so a shorter run keeps the paper's shape
    without our passing any milestones. Without `epochs` the paper's 64k iterations apply unchanged.
    """
    lr = learning_rate if learning_rate is not None else PAPER_LR * batch_size / PAPER_BATCH
    return Schedule(epochs, batch_size, lr, amp, warmup_steps)


def read_curve(network: Network, results: Results) -> Curve:
    """Per-epoch errors of a finished run, from the records it returned (one per epoch)."""
    summary = results.summary
    assert summary is not None
    curve = Curve(
        network.name,
        network.kind,
        network.depth,
        parameters=int(summary["parameters"]),
        run_dir=str(results.run_dir),
        wall_time_s=float(summary["wall_time_s"]),
        device=str(summary["device"]),
        amp=str(summary["amp"]),
    )
    for record in results.history:
        if "test_accuracy" not in record:
            raise DegradationError(
                f"epoch {record['epoch']} of {results.run_dir} has no test error; the runs must "
                f"evaluate on the test set every epoch"
            )
        curve.epochs.append(int(record["epoch"]))
        curve.steps.append(int(record["step"]))
        curve.train_error.append(1.0 - float(record["train_accuracy"]))
        curve.test_error.append(1.0 - float(record["test_accuracy"]))
    return curve


def train(
    network: Network,
    data_dir: Path,
    schedule: Schedule,
    *,
    seed: int,
    device: str,
    logs_dir: Path | None,
    download: bool,
    data_settings: dict[str, Any] | None = None,
    threads: int | None = None,
) -> Curve:
    """One ordinary trainer run (its own labml experiment and run folder); returns its curve."""
    settings: dict[str, Any] = {
        "data_dir": str(data_dir),
        "seed": seed,
        # Figure 6 plots test error every epoch, so every epoch is evaluated on the test set.
        "eval_every_epoch": True,
        "valid_split": 0,
        "download": download,
        **network.trainer_settings(),
        **schedule.trainer_settings(),
        **(data_settings or {}),
    }
    run = {"device": device, "logs_dir": logs_dir, "threads": threads}
    print(f"\n=== {network.name}: {cli.command_line({**run, **settings})}", flush=True)
    try:
        results = cifar10.train(device=device, logs_dir=logs_dir, threads=threads, **settings)
    except (RunError, CheckpointError, cifar_data.DataError, cli.UsageError, ScheduleError) as e:
        raise DegradationError(
            f"the trainer stopped while training {network.name}: {e}; the runs finished so far are in "
            f"their folders"
        ) from None
    if results.summary is None:
        raise DegradationError(
            f"the run of {network.name} was stopped ({results.stopped}) before its end; its checkpoint is in "
            f"{results.run_dir}, and the runs finished before it are in their folders"
        )
    return read_curve(network, results)


# ## The figure

# Characters per title line at the figure's 10 inches and the title's 10 points.
TITLE_WIDTH = 120
# One colour per depth, the same in both panels, so a depth is easy to follow across them.
COLOURS = ["tab:orange", "tab:red", "tab:blue", "tab:green", "tab:purple", "tab:brown"]


def build_figure(curves: list[Curve], title: str, *, x_axis: str = "epochs") -> Any:
    """
    Figure 6's layout: plain networks on the left, residual networks on the right, error in percent,
    training error dashed and test error solid, one colour per depth. Returns the matplotlib figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    depths = sorted({c.depth for c in curves})
    colour = {d: COLOURS[i % len(COLOURS)] for i, d in enumerate(depths)}
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, kind, label in zip(
        axes, ("plain", "residual"), ("plain networks", "residual networks"), strict=True
    ):
        for curve in (c for c in curves if c.kind == kind):
            x = curve.epochs if x_axis == "epochs" else curve.steps
            ax.plot(
                x,
                [100 * e for e in curve.train_error],
                linestyle="--",
                linewidth=1.2,
                color=colour[curve.depth],
                label=f"{curve.network} train",
            )
            ax.plot(
                x,
                [100 * e for e in curve.test_error],
                linestyle="-",
                linewidth=2,
                color=colour[curve.depth],
                label=f"{curve.network} test",
            )
        ax.set_title(label)
        ax.set_xlabel("epoch" if x_axis == "epochs" else "iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error (%)")
    axes[0].set_ylim(bottom=0)
    # A long first line (data, length, batch, rate, warm-up, format) is wrapped to stay inside the figure.
    figure.suptitle("\n".join(textwrap.fill(line, TITLE_WIDTH) for line in title.splitlines()), fontsize=10)
    figure.tight_layout()
    return figure


def save_figure(figure: Any, path: Path) -> None:
    """Write the PNG atomically (`experiments/files.py`), so an interrupted run never leaves half an image."""
    atomic_write(path, lambda f: figure.savefig(f, dpi=100, format="png"))


def summary_table(curves: list[Curve]) -> str:
    lines = [
        f"{'network':<12} {'params':>9} {'epochs':>6} {'train err %':>11} {'test err %':>10} {'minutes':>8} "
        f"{'amp':>5}"
    ]
    for c in curves:
        lines.append(
            f"{c.network:<12} {c.parameters:>9,} {len(c.epochs):>6} "
            f"{100 * c.train_error[-1]:>11.2f} {100 * c.test_error[-1]:>10.2f} "
            f"{c.wall_time_s / 60:>8.1f} {c.amp:>5}"
        )
    return "\n".join(lines)


# ## The command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="experiments/degradation.py",
        description="Figure 6 of He et al. (2015): train plain and residual CIFAR networks of two depths "
        "with one recipe (each an ordinary experiments/cifar10.py run, tracked by labml) and "
        "plot their training error (dashed) and test error (solid) per epoch.",
        epilog="--quick: a class-balanced subset (5,000 train / 1,000 test images), 20 epochs, the paper's "
        "step schedule compressed (drops at 50% and 75% of the iterations). It shows the early "
        "trend only, not the paper's final numbers. Without --quick: the paper's full recipe.",
    )
    parser.add_argument("--quick", action="store_true", help="a subset and a short schedule (see below)")
    parser.add_argument(
        "--depths",
        type=int,
        nargs="+",
        default=DEFAULT_DEPTHS,
        metavar="D",
        help="network depths, each 6n+2 (default: 20 56)",
    )
    parser.add_argument(
        "--widths",
        type=int,
        nargs=3,
        default=PAPER_WIDTHS,
        metavar="W",
        help="filters in the three stages (default: the paper's 16 32 64)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="folder with CIFAR-10 (cifar-10-batches-py/ or the .tar.gz); default: labml's data folder",
    )
    parser.add_argument(
        "--stand-in",
        action="store_true",
        help="no CIFAR-10: use a synthetic stripe-pattern set in CIFAR-10's format (written "
        "to a temporary folder; the figure says so)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PNG",
        help="plot path; the numbers go next to it as .json (default: degradation.png, or "
        "degradation_quick.png with --quick)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing plot and JSON")
    parser.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="epochs per network (default: 20 with --quick, else the paper's 64k iterations)",
    )
    parser.add_argument("--batch-size", type=int, default=PAPER_BATCH, metavar="N", help="default 128")
    parser.add_argument(
        "--lr",
        type=float,
        metavar="LR",
        help="learning rate (default: 0.1 x batch/128, the paper's 0.1 at batch 128)",
    )
    parser.add_argument(
        "--train-images",
        type=int,
        metavar="N",
        help=f"training subset size (default: {QUICK_TRAIN_IMAGES} with --quick, else all)",
    )
    parser.add_argument(
        "--test-images",
        type=int,
        metavar="N",
        help=f"test subset size (default: {QUICK_TEST_IMAGES} with --quick, else all)",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=0,
        metavar="N",
        help="hold the learning rate at a tenth of its value for the first N steps, as §4.2 does for "
        "ResNet-110; N must end before the first drop at 50%% of the run (default 0: no warm-up)",
    )
    parser.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        help="the trainer's number format for every network (default: its own, float32). auto: each "
        "run decides for itself (on a CPU with native bf16, bf16 if a timed step is faster; on CUDA, "
        "bf16 where supported); the JSON and the table record what each run used",
    )
    parser.add_argument("--seed", type=int, default=5, help="seed for every run and for the subset")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N (default: cuda when available)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for PyTorch (on a busy machine 1 can be much faster than several)",
    )
    parser.add_argument(
        "--logs-dir",
        type=Path,
        metavar="DIR",
        help="where the trainer's run folders go (default: labml's logs folder)",
    )
    parser.add_argument("--no-download", action="store_true", help="never download CIFAR-10")
    parser.add_argument(
        "--no-verify-checksums",
        action="store_true",
        help="skip the md5 check of the CIFAR-10 files, for a faithful copy that is not the official "
        "archive (the trainer's verify_checksums=false)",
    )
    parser.add_argument(
        "--x-axis", choices=("epochs", "iterations"), default="epochs", help="what the plot's x axis counts"
    )
    return parser


@dataclass
class Plan:
    networks: list[Network]
    data: DataPlan
    schedule: Schedule
    out: Path
    json_out: Path
    title: str


def plan_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Plan:
    """Check every argument and decide everything before any data is read or any run starts."""
    try:
        for depth in args.depths:
            check_depth(depth)
    except DegradationError as e:
        parser.error(str(e))
    if len(set(args.depths)) != len(args.depths):
        parser.error(f"--depths {' '.join(map(str, args.depths))}: each depth once, please")
    if any(w < 1 for w in args.widths):
        parser.error("--widths must be three positive integers, e.g. 16 32 64")
    for flag, value in (
        ("--epochs", args.epochs),
        ("--batch-size", args.batch_size),
        ("--train-images", args.train_images),
        ("--test-images", args.test_images),
        ("--threads", args.threads),
    ):
        if value is not None and value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if args.stand_in and args.data_dir is not None:
        parser.error("--stand-in writes its own data; leave out --data-dir")

    quick = args.quick
    train_images = args.train_images or (QUICK_TRAIN_IMAGES if quick else None)
    test_images = args.test_images or (QUICK_TEST_IMAGES if quick else None)
    if args.stand_in:
        train_images = args.train_images or STAND_IN_TRAIN_IMAGES
        test_images = args.test_images or STAND_IN_TEST_IMAGES
    epochs = args.epochs or (QUICK_EPOCHS if quick or args.stand_in else None)
    data_dir = None if args.stand_in else (args.data_dir or cifar_data.default_data_dir())
    if args.stand_in:
        description = (
            f"synthetic stand-in (stripe patterns), NOT CIFAR-10: {train_images} train / "
            f"{test_images} test images"
        )
    elif train_images is None and test_images is None:
        description = "CIFAR-10, all 50,000 train / 10,000 test images"
    else:
        description = (
            f"CIFAR-10 subset: {train_images or 'all'} train / {test_images or 'all'} test "
            f"images (class-balanced, seed {args.seed})"
        )
    schedule = make_schedule(epochs, args.batch_size, args.lr, args.amp, args.warmup_steps)
    # The step schedule holds the warm-up rate until the warm-up ends, past any drop that falls inside it:
    # a warm-up that reaches the first drop (50% of the run) would leave the network never at full rate.
    # `train_images` is set for every subset, the stand-in's included; None means all of CIFAR-10.
    images = train_images or cifar_data.TRAIN_IMAGES
    paper_iterations = int(cli.config_default(cifar10.Configs, "iterations"))
    iterations = epochs * math.ceil(images / args.batch_size) if epochs else paper_iterations
    # Where the trainer puts the first drop (`_step_schedule` in cifar10.py).
    first_drop = round(min(cli.config_default(cifar10.Configs, "lr_milestones")) * iterations)
    if not 0 <= args.warmup_steps < first_drop:
        parser.error(
            f"--warmup-steps {args.warmup_steps}: must be 0 or more and end before the first drop, at step "
            f"{first_drop} of this run's {iterations}; give fewer steps or more --epochs"
        )

    out = args.out or Path("degradation_quick.png" if quick else "degradation.png")
    if out.suffix.lower() != ".png":
        parser.error(f"--out {out}: the plot is a PNG, give a path ending in .png")
    json_out = out.with_suffix(".json")
    for path in (out, json_out):
        if path.exists() and not args.overwrite:
            parser.error(f"{path} exists; pass --overwrite to replace it or choose another --out")
    if not out.parent.exists():
        parser.error(f"--out {out}: the folder {out.parent} does not exist")
    # The plot is drawn only after every network has trained: a missing optional package must stop the
    # run now, not after an hour of training.
    if importlib.util.find_spec("matplotlib") is None:
        parser.error('the plot needs matplotlib, which is not installed: pip install -e ".[plot]"')

    length = f"{epochs} epochs" if epochs else "64k iterations"
    widths = "/".join(map(str, args.widths))
    title = (
        f"{'Synthetic stand-in, not CIFAR-10' if args.stand_in else 'CIFAR-10'}"
        f"{' (quick mode)' if quick else ''}: {description.split(': ', 1)[-1]}, {length}, "
        f"{'' if args.widths == PAPER_WIDTHS else f'widths {widths}, '}"
        f"batch {schedule.batch_size}, lr {schedule.learning_rate:g}"
        f"{f', {schedule.warmup_steps} warm-up steps at lr/10' if schedule.warmup_steps else ''}"
        f"{f', amp {schedule.amp}' if schedule.amp else ''}\n"
        f"dashed: training error, solid: test error"
    )
    return Plan(
        networks_for(args.depths, args.widths),
        DataPlan(
            description,
            data_dir,
            args.stand_in,
            train_images,
            test_images,
            args.seed,
            verify_checksums=not args.no_verify_checksums,
        ),
        schedule,
        out,
        json_out,
        title,
    )


def run(
    plan: Plan, *, seed: int, device: str, logs_dir: Path | None, download: bool, threads: int | None = None
) -> list[Curve]:
    curves = []
    data_settings = plan.data.trainer_settings()
    with prepared_data(plan.data) as data_dir:
        for network in plan.networks:
            curves.append(
                train(
                    network,
                    data_dir,
                    plan.schedule,
                    seed=seed,
                    device=device,
                    logs_dir=logs_dir,
                    download=download,
                    data_settings=data_settings,
                    threads=threads,
                )
            )
    return curves


def main(argv: list[str] | None = None) -> int:
    """Parse, train the networks one after another, write the plot and the JSON; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    plan = plan_from_args(args, parser)
    started = time.perf_counter()
    try:
        # The trainer sets the thread count for each run (and puts it back); `--threads` passes through.
        curves = run(
            plan,
            seed=args.seed,
            device=args.device,
            logs_dir=args.logs_dir,
            download=not args.no_download,
            threads=args.threads,
        )
    except (DegradationError, cifar_data.DataError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    summary = {
        "title": plan.title,
        "data": plan.data.description,
        "quick": args.quick,
        "schedule": asdict(plan.schedule),
        "widths": list(args.widths),
        "seed": args.seed,
        "threads": args.threads,
        "total_wall_time_s": time.perf_counter() - started,
        "networks": [asdict(c) for c in curves],
    }
    # The numbers first: if drawing fails, the hours of training are still on disk.
    write_json(plan.json_out, summary)
    figure = build_figure(curves, plan.title, x_axis=args.x_axis)
    save_figure(figure, plan.out)
    print("\n" + plan.data.description)
    print(summary_table(curves))
    print(f"plot: {plan.out}\nnumbers: {plan.json_out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
