"""
# Trainer overhead: what the labml trainer costs per epoch

[`experiments/cifar10.py`](../experiments/cifar10.py) wraps every training step in bookkeeping: the
progress display, the global step, on-device sums of loss and accuracy, a check for a non-finite loss
and for stop signals, the learning-rate schedule. This script measures what that costs: an epoch of
`cifar10.train(...)`, the trainer's public entry point, against a bare PyTorch loop that does only the
arithmetic (forward, cross-entropy, backward, SGD step, schedule step) on the same network, the same
number of steps and the same images, read by the same `TensorBatches` loader.

Each repeat is one trainer run of two epochs on synthetic images in CIFAR-10's file format, and two
epochs of the bare loop; the first epoch of each warms up, the second is timed. The trainer's time is
its own clock for that epoch (`epoch_train_time_s` in its history), which stops while it evaluates or
writes its checkpoint, so set-up, evaluation and files are not part of the number. The two sides
alternate (trainer first in one repeat, bare loop first in the next); the overhead is the median over
repeats of the ratio of the two epoch times measured back to back, minus 1. The target is at most 3%.

    python -m benchmarks.trainer_overhead --device cpu --images 2560 --repeats 11
"""

import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import resnet
from benchmarks.common import (
    load_average,
    paired_ratio,
    parser,
    positive,
    rate_summary,
    start,
    table,
    time_call,
)
from experiments import cifar10
from experiments.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from experiments.loader import TensorBatches
from experiments.synthetic import write_synthetic_cifar10

CIFAR_PRESETS = [name for name in resnet.PRESETS if name in ("resnet20", "resnet32", "resnet44", "resnet56")]


def trainer_epoch(data_dir: Path, logs_dir: Path, settings: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """A two-epoch trainer run: its second epoch's training seconds by its own clock, and its summary."""
    results = cifar10.train(data_dir=str(data_dir), verify_checksums=False, logs_dir=logs_dir, epochs=2,
                            eval_every_epoch=False, valid_split=0, **settings)  # fmt: skip
    assert results.summary is not None, f"the trainer run stopped early: {results.stopped}"
    return float(results.history[-1]["epoch_train_time_s"]), results.summary


class BareLoop:
    """
    The trainer's network, optimizer settings (the `paper` recipe's SGD and step schedule) and loader,
    driven by a minimal loop; `steps` counts the steps it trained.
    """

    def __init__(self, data_dir: Path, model: str, batch_size: int, channels_last: bool, device: torch.device,
                 seed: int, epochs: int = 2):  # fmt: skip
        arrays = load_cifar10(data_dir, download=False, verify_checksums=False)
        self.device = device
        self.model = resnet.PRESETS[model]().to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loader = TensorBatches(arrays.train_images, arrays.train_labels, batch_size=batch_size,
                                    shuffle=True, augment=True, device=device, seed=seed, mean=CIFAR10_MEAN,
                                    std=CIFAR10_STD, channels_last=channels_last)  # fmt: skip
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        # The drops at 50% and 75% of the run, as `cifar10.Configs.lr_milestones` places them.
        total = epochs * len(self.loader)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, [total // 2, total * 3 // 4])
        self.steps = 0

    def epoch(self, epoch: int) -> None:
        self.model.train()
        for images, labels in self.loader.epoch(epoch):
            loss = F.cross_entropy(self.model(images), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.steps += 1

    def two_epochs(self) -> float:
        """Seconds of the second of two epochs (the first warms up), as the trainer's run is timed."""
        self.epoch(0)
        return time_call(lambda: self.epoch(1), self.device)


def main(argv: Sequence[str] | None = None) -> float:
    p = parser(__doc__.split("\n\n")[1], repeats=5)
    p.add_argument("--model", choices=CIFAR_PRESETS, default="resnet20", help="the network (resnet20)")
    p.add_argument("--images", type=positive, default=5120, help="synthetic training images per epoch (5120)")
    p.add_argument("--batch-size", type=positive, default=128, help="images per step (128)")
    p.add_argument("--channels-last", action="store_true", help="the trainer's channels_last setting")
    args = p.parse_args(argv)
    if args.quick:  # 80 images in batches of 16, 2 repeats
        args.images, args.batch_size, args.repeats = 80, 16, 2
    if args.images % 5:
        p.error(f"--images {args.images}: give a multiple of 5 (CIFAR-10 has five training files)")
    device = start(p, args)
    trainer_s: list[float] = []
    bare_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="trainer-overhead-") as folder:
        data_dir, logs_dir = Path(folder) / "data", Path(folder) / "logs"
        write_synthetic_cifar10(data_dir, n_per_train_batch=args.images // 5, n_test=16)
        for repeat in range(args.repeats):
            # Alternate which side goes first, so neither always runs right after the other.
            for side in ("trainer", "bare") if repeat % 2 == 0 else ("bare", "trainer"):
                if side == "trainer":
                    settings = {"model": args.model, "batch_size": args.batch_size, "seed": repeat,
                                "channels_last": args.channels_last, "device": device.type}  # fmt: skip
                    trainer_s.append(trainer_epoch(data_dir, logs_dir, settings)[0])
                else:
                    bare = BareLoop(data_dir, args.model, args.batch_size, args.channels_last, device, repeat)
                    bare_s.append(bare.two_epochs())
            progress = f"trainer {trainer_s[-1]:.3f} s, bare {bare_s[-1]:.3f} s"
            print(f"  repeat {repeat + 1}: {progress}", file=sys.stderr, flush=True)
    rows = []
    for name, times in (("labml trainer (cifar10.train)", trainer_s), ("bare PyTorch loop", bare_s)):
        rate, spread = rate_summary(args.images, times)
        rows.append([name, f"{statistics.median(times):.3f}", f"{rate:.1f}", f"{spread:.0%}"])
    print(f"\n{args.model}, {args.images} synthetic images per epoch in batches of {args.batch_size}, "
          f"channels_last={args.channels_last}; median of {args.repeats} alternating epochs; "
          f"{load_average()}")  # fmt: skip
    print(table(["loop", "s/epoch", "images/s", "spread"], rows))
    overhead = paired_ratio(trainer_s, bare_s) - 1
    medians = statistics.median(trainer_s) / statistics.median(bare_s)
    print(f"\nratio trainer/bare epoch time: {1 + overhead:.4f} (median over repeats of the back-to-back "
          f"pair; ratio of the medians: {medians:.4f})")  # fmt: skip
    print(f"overhead: {overhead:+.2%} (target: at most +3%)")
    return overhead


if __name__ == "__main__":
    main()
