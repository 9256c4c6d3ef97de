"""
# Data pipeline: does the loader keep the model busy?

A training step can only go as fast as its batches arrive. This script measures, on synthetic `uint8`
data of CIFAR-10's shape (no files needed):

* **supply**: images/s that [`experiments.loader.TensorBatches`](../experiments/loader.py) delivers with
  the paper's augmentation (pad 4, random 32x32 crop, horizontal flip) and normalisation;
* the same for the usual alternative, a `torch.utils.data.DataLoader` over PIL images with
  `RandomCrop(32, padding=4)`, `RandomHorizontalFlip()`, `ToTensor()`, `Normalize(...)`, with 0 and 2
  worker processes (workers are persistent, so their start-up is not counted per epoch);
* **demand**: images/s a `resnet20` training step consumes on the same device.

Supply divided by demand says how much head-room the loader leaves: below 1 the model waits for data.
The last rows feed each loader into the training step, which is what a trainer sees.

    python -m benchmarks.data_pipeline --device cpu --batches 20 --repeats 5
"""

import argparse
import itertools
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

import resnet
from benchmarks.common import alternate, load_average, parser, positive, rate_summary, start, table
from experiments.data import CIFAR10_MEAN, CIFAR10_STD
from experiments.loader import TensorBatches

Batch = tuple[torch.Tensor, torch.Tensor]


class PilCifar(Dataset):
    """CIFAR-shaped `uint8` arrays served one PIL image at a time, as `torchvision.datasets.CIFAR10` does."""

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]
    ):
        # torchvision's CIFAR10 keeps its images as HWC arrays and converts each one to PIL on access.
        self.images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def synthetic_cifar(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 10, (n,), generator=generator)


def endless(make_epoch: Callable[[int], Iterator[Batch]]) -> Iterator[Batch]:
    """Batches from epoch after epoch, so a timed window never stops at an epoch boundary."""
    for epoch in itertools.count():
        yield from make_epoch(epoch)


def epochs_of(loader: DataLoader, epoch: int) -> Iterator[Batch]:
    """One epoch of a DataLoader, which shuffles anew each time it is iterated."""
    return iter(loader)


def pil_loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int, workers: int,
               device: torch.device) -> DataLoader:  # fmt: skip
    """The usual alternative: torchvision's transforms on PIL images, in worker processes if asked."""
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])  # fmt: skip
    dataset = PilCifar(images.numpy(), labels.numpy(), transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0, pin_memory=device.type == "cuda")  # fmt: skip


def take(batches: Iterator[Batch], count: int, device: torch.device,
         consume: Callable[[torch.Tensor, torch.Tensor], None] | None) -> Callable[[], None]:  # fmt: skip
    """A callable that pulls `count` batches, moves them to `device` and hands them to `consume`."""

    def run() -> None:
        for images, labels in itertools.islice(batches, count):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if consume is not None:
                consume(images, labels)

    return run


def worker_counts(text: str) -> list[int]:
    """An `argparse` type: comma-separated worker counts, each 0 or more."""
    try:
        counts = [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 0,2, got {text!r}") from None
    if any(count < 0 for count in counts):
        raise argparse.ArgumentTypeError(f"worker counts are 0 or more, got {text!r}")
    return counts


def train_step(device: torch.device, channels_last: bool) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One `resnet20` SGD step per call, the demand side."""
    model = resnet.resnet20().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    p = parser("\n\n".join(__doc__.split("\n\n")[1:3]), repeats=5)
    # fmt: off
    p.add_argument("--images", type=positive, default=50_000, help="synthetic training-set size (50000)")
    p.add_argument("--batch-size", type=positive, default=128, help="images per batch (128)")
    p.add_argument("--batches", type=positive, default=20, help="batches per timed repeat (20)")
    p.add_argument("--workers", type=worker_counts, default=[0, 2], help="DataLoader worker counts (0,2)")
    p.add_argument("--channels-last", action="store_true", help="model and TensorBatches in channels_last")
    p.add_argument("--no-end-to-end", action="store_true", help="skip the loader + training-step rows")
    # fmt: on
    args = p.parse_args(argv)
    if args.quick:  # 128 images, batch 8, 2 batches, 2 repeats, workers 0
        args.images, args.batch_size, args.batches, args.repeats, args.workers = 128, 8, 2, 2, [0]
    if args.images < args.batch_size:
        p.error(f"--images ({args.images}) must be at least --batch-size ({args.batch_size})")
    device = start(p, args)
    images, labels = synthetic_cifar(args.images, seed=0)
    tensor_batches = TensorBatches(
        images,
        labels,
        batch_size=args.batch_size,
        shuffle=True,
        augment=True,
        device=device,
        seed=0,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        drop_last=True,
        channels_last=args.channels_last,
    )
    # Each row pulls from its own endless stream of batches (a DataLoader's workers start only once).
    loaders: dict[str, Callable[[], Iterator[Batch]]] = {}
    loaders["TensorBatches"] = partial(endless, tensor_batches.epoch)
    for workers in args.workers:
        loader = pil_loader(images, labels, args.batch_size, workers, device)
        loaders[f"DataLoader+PIL workers={workers}"] = partial(endless, partial(epochs_of, loader))
    step = train_step(device, args.channels_last)
    fixed_images, fixed_labels = next(tensor_batches.epoch(0))

    def model_only() -> None:
        for _ in range(args.batches):
            step(fixed_images, fixed_labels)

    # Each row: (name, callable). Iterators are created once, so workers start and warm up only once.
    pipelines: list[tuple[str, Callable[[], None]]] = [
        (f"supply: {name}", take(make(), args.batches, device, None)) for name, make in loaders.items()
    ]
    pipelines.append(("demand: resnet20 train step (fixed batch)", model_only))
    if not args.no_end_to_end:
        pipelines += [
            (f"end to end: {name} -> resnet20 step", take(make(), args.batches, device, step))
            for name, make in loaders.items()
        ]
    for _, run in pipelines:  # warm-up: worker start-up, allocator, first-call costs
        run()
    seconds = alternate([run for _, run in pipelines], args.repeats, device)
    images_per_repeat = args.batches * args.batch_size
    summaries = {
        name: rate_summary(images_per_repeat, times)
        for (name, _), times in zip(pipelines, seconds, strict=True)
    }
    rates = {name: rate for name, (rate, _) in summaries.items()}
    rows = [[name, f"{rate:.0f}", f"{spread:.0%}"] for name, (rate, spread) in summaries.items()]

    print(
        f"\nimages/s, median of {args.repeats} alternating repeats of {args.batches} batches of "
        f"{args.batch_size}; {args.images} synthetic uint8 CIFAR images on {device.type}; "
        f"channels_last={args.channels_last}; {load_average()}"
    )
    print(table(["pipeline", "images/s", "spread"], rows) + "\n")
    demand = rates["demand: resnet20 train step (fixed batch)"]
    tensor_supply = rates["supply: TensorBatches"]
    for name in loaders:
        ratio = rates[f"supply: {name}"] / demand
        print(f"ratio supply/demand {name}: {ratio:.2f} (above 1: the loader outpaces a resnet20 step)")
    for workers in args.workers:
        name = f"DataLoader+PIL workers={workers}"
        print(f"ratio TensorBatches/{name} supply: {tensor_supply / rates[f'supply: {name}']:.2f}")
        if not args.no_end_to_end:
            ours = rates["end to end: TensorBatches -> resnet20 step"]
            theirs = rates[f"end to end: {name} -> resnet20 step"]
            print(f"ratio TensorBatches/{name} end to end: {ours / theirs:.2f}")
    return rates


if __name__ == "__main__":
    main()
