"""
# int8 against float32 and bfloat16 on the CPU

The same weights as float32, as bfloat16 and through `resnet.quantize_int8` (calibrated on the first
`--calibration` training images): single-view CIFAR-10 test accuracy and images/s on one batch.
`--model NAME` takes the shipped weights, `NAME=FILE` what `resnet.load_checkpoint` reads. BENCHMARKS.md,
"int8 inference on the CPU".
"""

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

import resnet
from benchmarks import common
from benchmarks.common import positive
from experiments.data import load_cifar10
from experiments.errors import ExperimentError
from resnet.quantize import quantize_int8


@dataclass
class Measured:
    network: str
    version: str
    accuracy: float
    images_per_second: float
    spread: float


def load_network(spec: str) -> tuple[str, nn.Module]:
    """`NAME` (its shipped weights) or `NAME=FILE` (what `resnet.load_checkpoint` reads), in eval mode."""
    name, _, file = spec.partition("=")
    try:
        if file:
            return name, resnet.create_model(name, checkpoint_path=file).eval()
        return name, resnet.create_model(name, weights="cifar10").eval()
    except ValueError as e:  # `resnet.LoadError` too: the library's one line, with the way out
        raise SystemExit(f"--model {spec}: {e}" + ("" if file else f"; or use --model {name}=FILE")) from None


def normalized(images: torch.Tensor) -> torch.Tensor:
    """CIFAR-10's `uint8` `[N, 3, 32, 32]` to the float batch the trainer feeds, by its own arithmetic."""
    return resnet.normalize_cifar10(images.permute(0, 2, 3, 1).contiguous())


@torch.no_grad()
def measure(name: str, model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], calibration: torch.Tensor,
            batch_size: int, repeats: int) -> list[Measured]:  # fmt: skip
    images, labels = test
    int8 = quantize_int8(model, calibration.split(batch_size), batch_size=batch_size)
    versions = {"float32": (model, torch.float32), "bfloat16": (copy.deepcopy(model).to(torch.bfloat16),
                torch.bfloat16), "int8": (int8, torch.float32)}  # fmt: skip
    runs = [partial(network, images[:batch_size].to(dtype)) for network, dtype in versions.values()]
    seconds, results = common.alternate(runs, repeats, torch.device("cpu")), []  # warm-up: oneDNN's choice
    for (version, (network, dtype)), times in zip(versions.items(), seconds, strict=True):
        rate, spread = common.rate_summary(min(batch_size, len(images)), times)
        logits = torch.cat([network(x.to(dtype)) for x in images.split(batch_size)])
        score = 100.0 * (logits.argmax(1) == labels).double().mean().item()
        # A line as soon as each is scored: the full test set takes minutes per version on a busy CPU.
        print(f"{name} {version}: {score:.2f}% test accuracy, {rate:.0f} images/s", flush=True)
        results.append(Measured(name, version, score, rate, spread))
    for i, version in ((2, "int8"), (1, "bfloat16")):
        ratio = common.paired_ratio(seconds[0], seconds[i])
        print(f"speed-up {name} {version}/float32: {ratio:.2f}x (median of paired repeats)")
    return results


def main(argv: Sequence[str] | None = None) -> list[Measured]:
    p = common.parser(__doc__, repeats=7, devices=("cpu",))
    # fmt: off
    p.add_argument("--data-dir", type=Path, required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--model", action="append", required=True, help="NAME or NAME=FILE; repeat for more")
    p.add_argument("--batch-size", type=positive, default=256, help="inference batch (256)")
    p.add_argument("--calibration", type=positive, default=512, help="training images to calibrate (512)")
    p.add_argument("--test-images", type=positive, default=10_000, help="test images to score (all)")
    p.add_argument("--no-verify-checksums", action="store_true", help="skip the md5 check (own copies)")
    # fmt: on
    args = p.parse_args(argv)
    common.start(p, args, test_images=64, calibration=32, batch_size=16, repeats=2)
    try:
        data = load_cifar10(args.data_dir, download=False, verify_checksums=not args.no_verify_checksums)
    except ExperimentError as e:
        raise SystemExit(str(e)) from None  # one line, exit status 1: a bad file, not a bad setting
    test = normalized(data.test_images[: args.test_images]), data.test_labels[: args.test_images]
    calibration = normalized(data.train_images[: args.calibration])
    networks = [load_network(spec) for spec in args.model]
    print(common.load_average("load average before:"))
    print(f"batch {args.batch_size}, {args.repeats} repeats, {len(test[0])} test images, "
          f"{len(calibration)} calibration images")  # fmt: skip
    results = [m for name, model in networks for m in measure(name, model, test, calibration, args.batch_size,
                                                              args.repeats)]  # fmt: skip
    rows = [[r.network, r.version, f"{r.accuracy:.2f}", f"{r.images_per_second:.0f}", f"{r.spread:.0%}"]
            for r in results]  # fmt: skip
    print(common.table(["network", "version", "test accuracy %", "images/s", "spread"], rows))
    print(common.load_average("load average after:"))
    return results


if __name__ == "__main__":
    main()
