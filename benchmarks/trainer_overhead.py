"""
# Trainer overhead: what the labml trainer costs per epoch

[`experiments/cifar10.py`](../experiments/cifar10.py) wraps every training step in bookkeeping: labml's
progress display (`monit.iterate`), the global step for the tracker, on-device sums of loss and accuracy,
a check for a non-finite loss and for stop signals, the learning-rate schedule. This script measures
what that costs by timing one epoch of `cifar10.train_epoch(c, run)` against a bare PyTorch loop that does
only the arithmetic: forward, cross-entropy, backward, SGD step, schedule step.

Both sides get the same network (a copy of the trainer's, same initial weights), the same optimizer
settings and the very same `TensorBatches` loader and epoch number, so they see identical batches. The
data are synthetic `uint8` images of CIFAR-10's shape, handed to the trainer's configuration in place
of the data set; nothing is read from or written to disk (no labml experiment is created, so no run
folder, checkpoint or metrics file is written: those happen once per epoch, outside `train_epoch`).
The two loops run in alternating repeats; the overhead is the median over repeats of the ratio of the
two epoch times measured back to back, minus 1. The target is at most 3%.

    python -m benchmarks.trainer_overhead --device cpu --images 5120 --repeats 5
"""

import argparse
import copy
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from labml import experiment
from torch.optim.lr_scheduler import LambdaLR

from benchmarks.common import (
    alternate,
    machine_description,
    paired_ratio,
    parse_device,
    print_table,
    rate_summary,
    set_threads,
)
from experiments import cifar10, launch, trainer
from experiments.cli import config_default
from experiments.data import CifarArrays
from experiments.models import MODEL_NAMES


def synthetic_dataset(n_train: int, n_test: int, seed: int) -> CifarArrays:
    generator = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=generator)

    return CifarArrays(
        images(n_train),
        labels(n_train),
        images(n_test),
        labels(n_test),
        tuple(f"class{i}" for i in range(10)),
    )


def build_trainer(overrides: dict[str, Any], dataset: CifarArrays) -> trainer.Run:
    """
    A run as `experiments/cifar10.py` builds it, minus the labml experiment (which would create a run
    folder): the configuration is computed the way the trainer's non-main ranks compute it.
    """
    c = cifar10.Configs()
    # An iteration budget far beyond the benchmark, so the loop never stops early.
    experiment.evaluate()
    experiment.configs(c, {**overrides, "iterations": 10**9, "dataset": dataset})
    launch.prepare(c)
    return trainer.Run(
        c,
        model_name=str(overrides.get("model", config_default(cifar10.Configs, "model"))),
        settings=overrides,
        run_dir=None,
    )


def trainer_epoch(run: trainer.Run, epochs: list[int]) -> Callable[[], None]:
    """One call trains the next epoch in `epochs` through the trainer, then rewinds to a fresh epoch."""

    def train() -> None:
        # The start of a fresh epoch, set the way a resume sets it.
        fresh = trainer.Progress(run.device).state_dict()
        run.progress.load_state_dict({**fresh, "position": {"step": 0, "epoch": epochs.pop(0), "batch": 0}})
        cifar10.train_epoch(run.c, run)

    return train


class BareEpoch:
    """
    The same epoch as a minimal loop, on a copy of the trainer's model (taken when this is built) with an
    identical optimizer and schedule. Each call trains the next epoch in `epochs`.
    """

    def __init__(self, trainer: trainer.Run, epochs: list[int]):
        self.model = copy.deepcopy(trainer.network)
        settings = trainer.c.optimizer.param_groups[0]
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=settings["lr"],
            momentum=settings["momentum"],
            weight_decay=settings["weight_decay"],
            nesterov=settings["nesterov"],
            fused=settings.get("fused"),
        )
        self.scheduler = LambdaLR(self.optimizer, copy.deepcopy(trainer.c.scheduler.lr_lambdas[0]))
        self.loader = trainer.c.train_loader
        self.label_smoothing = trainer.c.label_smoothing
        self.epochs = epochs

    def __call__(self) -> None:
        self.model.train()
        for images, labels in self.loader.epoch(self.epochs.pop(0)):
            loss = F.cross_entropy(self.model(images), labels, label_smoothing=self.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when available)",
    )
    parser.add_argument("--model", default="resnet20", help="a model name the trainer accepts")
    parser.add_argument("--images", type=int, default=5120, help="synthetic training images (one epoch)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="alternating timed epochs per loop")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice, one per core)",
    )
    parser.add_argument("--channels-last", action="store_true", help="the trainer's channels_last setting")
    parser.add_argument(
        "--quick", action="store_true", help="seconds-long smoke run: 64 images in batches of 16, 2 repeats"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.batch_size, args.repeats = 64, 16, 2
    for flag in ("images", "batch_size", "repeats"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.model not in MODEL_NAMES:
        raise SystemExit(
            f"--model {args.model!r} is not a trainer model; choose from {', '.join(MODEL_NAMES)}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> float:
    args = parse_args(argv)
    device = parse_device(args.device)
    set_threads(args.threads)
    print(f"machine: {machine_description(device)}")
    overrides = {
        "model": args.model,
        "batch_size": args.batch_size,
        "channels_last": args.channels_last,
        "device.use_cuda": device.type == "cuda",
        "log_every": 20,
    }
    trainer = build_trainer(overrides, synthetic_dataset(args.images, 16, seed=0))
    # Epoch 0 of each loop is the warm-up; repeat r then trains epoch r + 1 on both sides.
    trainer_epochs, bare_epochs = list(range(args.repeats + 1)), list(range(args.repeats + 1))
    runs = [trainer_epoch(trainer, trainer_epochs), BareEpoch(trainer, bare_epochs)]
    for run in runs:
        run()
    seconds = alternate(runs, args.repeats, device)
    images = trainer.c.train_loader.images_per_epoch
    names = ["labml trainer (cifar10.train_epoch)", "bare PyTorch loop"]
    rows = []
    for name, times in zip(names, seconds, strict=True):
        rate, spread = rate_summary(images, times)
        rows.append([name, f"{statistics.median(times):.3f}", f"{rate:.1f}", f"{spread:.0%}"])
    print(
        f"\n{args.model}, {images} synthetic images per epoch in batches of {args.batch_size}, "
        f"channels_last={args.channels_last}; median of {args.repeats} alternating epochs"
    )
    print_table(["loop", "s/epoch", "images/s", "spread"], rows)
    overhead = paired_ratio(seconds[0], seconds[1]) - 1
    print(
        f"\nratio trainer/bare epoch time: {1 + overhead:.4f} (median over repeats of the back-to-back "
        f"pair; ratio of the medians: {statistics.median(seconds[0]) / statistics.median(seconds[1]):.4f})"
    )
    print(f"overhead: {overhead:+.2%} (target: at most +3%)")
    return overhead


if __name__ == "__main__":
    main()
