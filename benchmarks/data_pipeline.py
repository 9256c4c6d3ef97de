"""
# Data pipeline: does the loader keep the model busy?

Images/s of [`TensorBatches`](../experiments/loader.py) with the paper's augmentation, of a `DataLoader`
over PIL images with torchvision's transforms, of a `resnet20` training step, and of each loader feeding
that step, on synthetic `uint8` data of CIFAR-10's shape. BENCHMARKS.md, section 2.
"""

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
from benchmarks import common
from benchmarks.common import positive
from experiments.data import CIFAR10_MEAN, CIFAR10_STD
from experiments.loader import TensorBatches

Batch = tuple[torch.Tensor, torch.Tensor]
DEMAND = "demand: resnet20 train step (fixed batch)"


class PilCifar(Dataset):
    """HWC `uint8` arrays served one PIL image at a time, as `torchvision.datasets.CIFAR10` serves them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[..., torch.Tensor]):
        self.images, self.labels = np.ascontiguousarray(images.numpy().transpose(0, 2, 3, 1)), labels.numpy()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def take(epoch: Callable[[int], Iterator[Batch]], count: int, device: torch.device,
         consume: Callable[[torch.Tensor, torch.Tensor], None] | None) -> Callable[[], None]:  # fmt: skip
    """
    A callable that pulls the next `count` batches to `device` and hands them to `consume`; from epoch
    after epoch, so that a timed window never stops at an epoch boundary.
    """
    batches = itertools.chain.from_iterable(map(epoch, itertools.count()))

    def run() -> None:
        for images, labels in itertools.islice(batches, count):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if consume is not None:
                consume(images, labels)

    return run


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    p = common.parser(__doc__, repeats=5)
    p.add_argument("--images", type=positive, default=50_000, help="synthetic training-set size (50000)")
    p.add_argument("--batch-size", type=positive, default=128, help="images per batch (128)")
    p.add_argument("--batches", type=positive, default=20, help="batches per timed repeat (20)")
    p.add_argument(
        "--workers", type=partial(positive, least=0), nargs="+", default=[0, 2], help="DataLoader workers"
    )
    p.add_argument("--channels-last", action="store_true", help="model and TensorBatches in channels_last")
    args = p.parse_args(argv)
    device = common.start(p, args, images=128, batch_size=8, batches=2, repeats=2, workers=[0])
    if args.images < args.batch_size:
        p.error(f"--images ({args.images}) must be at least --batch-size ({args.batch_size})")
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (args.images,), generator=generator)
    tensor_batches = TensorBatches(images, labels, batch_size=args.batch_size, shuffle=True, augment=True,
                                   device=device, seed=0, mean=CIFAR10_MEAN, std=CIFAR10_STD, drop_last=True,
                                   channels_last=args.channels_last)  # fmt: skip
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])  # fmt: skip
    # Each row pulls from its own endless stream; a DataLoader's persistent workers start only once.
    loaders: dict[str, Callable[[int], Iterator[Batch]]] = {"TensorBatches": tensor_batches.epoch}
    for workers in args.workers:
        loader = DataLoader(PilCifar(images, labels, transform), batch_size=args.batch_size, shuffle=True,
                            num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                            pin_memory=device.type == "cuda")  # fmt: skip
        loaders[f"DataLoader+PIL workers={workers}"] = lambda _, loader=loader: iter(loader)
    # The demand side: one `resnet20` SGD step per batch.
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    model = resnet.resnet20().to(device, memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        loss = F.cross_entropy(model(images.contiguous(memory_format=layout)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    fixed = next(tensor_batches.epoch(0))
    pipelines = {f"supply: {n}": take(epochs, args.batches, device, None) for n, epochs in loaders.items()}
    pipelines[DEMAND] = take(lambda _: itertools.repeat(fixed), args.batches, device, step)
    for name, epochs in loaders.items():
        pipelines[f"end to end: {name} -> resnet20 step"] = take(epochs, args.batches, device, step)
    seconds = common.alternate(list(pipelines.values()), args.repeats, device)
    images_timed = args.batches * args.batch_size
    summaries = {
        name: common.rate_summary(images_timed, t) for name, t in zip(pipelines, seconds, strict=True)
    }
    rates = {name: rate for name, (rate, _) in summaries.items()}

    print(f"\nimages/s, median of {args.repeats} alternating repeats of {args.batches} batches of "
          f"{args.batch_size}; {args.images} synthetic uint8 CIFAR images on {device.type}; "
          f"channels_last={args.channels_last}; {common.load_average()}")  # fmt: skip
    rows = [[name, f"{rate:.0f}", f"{spread:.0%}"] for name, (rate, spread) in summaries.items()]
    print(common.table(["pipeline", "images/s", "spread"], rows) + "\n")
    for name in loaders:
        ratio = rates[f"supply: {name}"] / rates[DEMAND]
        print(f"ratio supply/demand {name}: {ratio:.2f} (above 1: the loader outpaces a resnet20 step)")
    for name in list(loaders)[1:]:
        for what, row in (("supply", "supply: {}"), ("end to end", "end to end: {} -> resnet20 step")):
            ratio = rates[row.format("TensorBatches")] / rates[row.format(name)]
            print(f"ratio TensorBatches/{name} {what}: {ratio:.2f}")
    return rates


if __name__ == "__main__":
    main()
