"""
# Trainer overhead: what the labml trainer costs per epoch

The second epoch of a two-epoch `cifar10.train(...)` run, by the trainer's own clock, against a bare
PyTorch loop on the same network, settings, steps and `TensorBatches`, on synthetic images in CIFAR-10's
file format: the overhead is the median of the paired ratios minus 1. BENCHMARKS.md, section 3.
"""

import itertools
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import resnet
from benchmarks import common
from benchmarks.common import positive
from experiments import cifar10
from experiments.data import CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from experiments.loader import TensorBatches
from experiments.synthetic import write_synthetic_cifar10

LABELS = {"trainer": "labml trainer (cifar10.train)", "bare": "bare PyTorch loop"}


def trainer_epoch(data_dir: Path, logs_dir: Path, settings: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """A two-epoch trainer run: its second epoch's training seconds by its own clock, and its summary."""
    results = cifar10.train(data_dir=str(data_dir), verify_checksums=False, logs_dir=logs_dir, epochs=2,
                            eval_every_epoch=False, valid_split=0, **settings)  # fmt: skip
    assert results.summary is not None, f"the trainer run stopped early: {results.stopped}"
    return float(results.history[-1]["epoch_train_time_s"]), results.summary


class BareLoop:
    """The `paper` recipe's network, SGD, step schedule and loader in a minimal loop; `steps` it trained."""

    def __init__(self, data_dir: Path, model: str, batch_size: int, channels_last: bool, device: torch.device,
                 seed: int, epochs: int = 2):  # fmt: skip
        arrays = load_cifar10(data_dir, download=False, verify_checksums=False)
        self.device, self.steps = device, 0
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = resnet.PRESETS[model]().to(device, memory_format=layout)
        self.loader = TensorBatches(arrays.train_images, arrays.train_labels, batch_size=batch_size,
                                    shuffle=True, augment=True, device=device, seed=seed, mean=CIFAR10_MEAN,
                                    std=CIFAR10_STD, channels_last=channels_last)  # fmt: skip
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        total = epochs * len(self.loader)  # drops at 50% and 75% of the run, as `cifar10.Configs` puts them
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, [total // 2, total * 3 // 4])

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
        return common.time_call(lambda: self.epoch(1), self.device)


def main(argv: Sequence[str] | None = None) -> float:
    p = common.parser(__doc__, repeats=5)
    p.add_argument("--model", choices=("resnet20", "resnet32", "resnet44", "resnet56"), default="resnet20")
    p.add_argument("--images", type=positive, default=5120, help="synthetic training images per epoch (5120)")
    p.add_argument("--batch-size", type=positive, default=128, help="images per step (128)")
    p.add_argument("--channels-last", action="store_true", help="the trainer's channels_last setting")
    args = p.parse_args(argv)
    device = common.start(p, args, images=80, batch_size=16, repeats=2)
    if args.images % 5:
        p.error(f"--images {args.images}: give a multiple of 5 (CIFAR-10 has five training files)")
    settings = {"model": args.model, "batch_size": args.batch_size, "channels_last": args.channels_last,
                "device": device.type}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="trainer-overhead-") as folder:
        data_dir, logs_dir = Path(folder) / "data", Path(folder) / "logs"
        write_synthetic_cifar10(data_dir, n_per_train_batch=args.images // 5, n_test=16)
        # Each side's repeat `i` trains with seed `i`; each call is one fresh run that times itself.
        seeds = {"trainer": itertools.count(), "bare": itertools.count()}
        sides = [lambda: trainer_epoch(data_dir, logs_dir, {**settings, "seed": next(seeds["trainer"])})[0],
                 lambda: BareLoop(data_dir, args.model, args.batch_size, args.channels_last, device,
                                  next(seeds["bare"])).two_epochs()]  # fmt: skip
        seconds = dict(zip(seeds, common.alternate(sides, args.repeats, device, warmup=0), strict=True))
    rows = []
    for side, times in seconds.items():
        rate, spread = common.rate_summary(args.images, times)
        rows.append([LABELS[side], f"{statistics.median(times):.3f}", f"{rate:.1f}", f"{spread:.0%}"])
    print(f"\n{args.model}, {args.images} synthetic images per epoch in batches of {args.batch_size}, "
          f"channels_last={args.channels_last}; median of {args.repeats} alternating epochs; "
          f"{common.load_average()}")  # fmt: skip
    print(common.table(["loop", "s/epoch", "images/s", "spread"], rows))
    overhead = common.paired_ratio(seconds["trainer"], seconds["bare"]) - 1
    medians = statistics.median(seconds["trainer"]) / statistics.median(seconds["bare"])
    print(f"\nratio trainer/bare epoch time: {1 + overhead:.4f} (median over repeats of the back-to-back "
          f"pair; ratio of the medians: {medians:.4f})")  # fmt: skip
    print(f"overhead: {overhead:+.2%} (target: at most +3%)")
    return overhead


if __name__ == "__main__":
    main()
