"""
# int8 against float32 and bfloat16 on the CPU

What does int8 inference ([`resnet/quantize.py`](../resnet/quantize.py)) buy, and what does it cost?
For each network given, this script builds three versions of the same trained weights:

* `float32`: the network as trained;
* `bfloat16`: a copy converted with `.to(torch.bfloat16)`, weights and activations;
* `int8`: `resnet.quantize.quantize_int8`, calibrated on the first `--calibration` training images
  (normalised as the trainer normalises them), with oneDNN int8 kernels for `--batch-size`.

It prints each version's single-view accuracy on the CIFAR-10 test set (no flips, no crops) and its
inference speed in images/s on one batch of test images. The three are timed in alternating repeats
(see [`common.py`](common.py)); the `int8 / float32` speed-up is the median of the per-repeat ratios.
The load average is printed before and after, since a busy machine slows every version, if not equally.

    python -m benchmarks.int8 --data-dir ~/data --model resnet20 --threads 2
    python -m benchmarks.int8 --data-dir ~/data --model resnet20 --model resnet56=logs/run/checkpoint.pt

`--model NAME` uses the weights that ship with the package; `--model NAME=FILE` loads a state dict, a
`.safetensors` file or a trainer checkpoint (its evaluation weights, the averaged ones if it kept them).
"""

import argparse
import copy
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import resnet
from benchmarks.common import alternate, describe_machine, paired_ratio, rate_summary, table
from resnet.quantize import quantize_int8

CPU = torch.device("cpu")


@dataclass
class Measured:
    network: str
    version: str
    accuracy: float
    images_per_second: float
    spread: float


def load_network(spec: str) -> tuple[str, nn.Module]:
    """`NAME` (shipped weights) or `NAME=FILE` to a trained network in eval mode."""
    name, _, file = spec.partition("=")
    if not file:
        try:
            return name, resnet.create_model(name, weights="cifar10").eval()
        except (TypeError, ValueError) as error:
            raise SystemExit(
                f"--model {name}: no shipped weights ({error}); give a file with --model {name}=FILE"
            ) from None
    path = Path(file)
    if not path.is_file():
        raise SystemExit(f"--model {spec}: {path} is not a file")
    model = resnet.create_model(name).eval()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and "config" in state:
            from experiments.checkpoint import evaluation_weights, load_checkpoint

            state, _ = evaluation_weights(load_checkpoint(path))
    model.load_state_dict(state)
    return name, model


def normalized(images: torch.Tensor) -> torch.Tensor:
    """CIFAR-10's `uint8` `[N, 3, 32, 32]` to the float batch the trainer feeds, with its own arithmetic."""
    return resnet.normalize_cifar10(images.permute(0, 2, 3, 1).contiguous())


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = model(images[start : start + batch_size])
            correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return 100.0 * correct / len(images)


def measure(
    name: str,
    model: nn.Module,
    test: tuple[torch.Tensor, torch.Tensor],
    calibration: torch.Tensor,
    batch_size: int,
    repeats: int,
) -> list[Measured]:
    images, labels = test
    bf16_model = copy.deepcopy(model).to(torch.bfloat16)
    int8_model = quantize_int8(model, calibration.split(batch_size), batch_size=batch_size)
    versions: dict[str, tuple[nn.Module, torch.dtype]] = {
        "float32": (model, torch.float32),
        "bfloat16": (bf16_model, torch.bfloat16),
        "int8": (int8_model, torch.float32),
    }
    batch = images[:batch_size]
    runs = []
    for version, dtype in versions.values():
        x = batch.to(dtype)

        def run(version: nn.Module = version, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                version(x)

        run()  # warm-up: oneDNN picks and caches its kernels on the first call
        runs.append(run)
    seconds = alternate(runs, repeats, CPU)
    results = []
    for (version, (network, dtype)), times in zip(versions.items(), seconds, strict=True):
        rate, spread = rate_summary(len(batch), times)
        score = accuracy(network, images.to(dtype), labels, batch_size)
        # A line as soon as each is scored: the full test set takes minutes per version on a busy CPU.
        print(f"{name} {version}: {score:.2f}% test accuracy, {rate:.0f} images/s", flush=True)
        results.append(Measured(name, version, score, rate, spread))
    for i, version in ((2, "int8"), (1, "bfloat16")):
        ratio = paired_ratio(seconds[0], seconds[i])
        print(f"speed-up {name} {version}/float32: {ratio:.2f}x (median of paired repeats)")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding cifar-10-batches-py/")
    parser.add_argument(
        "--model", action="append", required=True, help="NAME (shipped weights) or NAME=FILE; repeat for more"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--batch-size", type=int, default=256, help="inference batch (default 256)")
    parser.add_argument("--repeats", type=int, default=7, help="alternating timing repeats (default 7)")
    parser.add_argument(
        "--calibration", type=int, default=512, help="training images to calibrate int8 (512)"
    )
    parser.add_argument("--test-images", type=int, default=10000, help="test images to score (default all)")
    parser.add_argument(
        "--no-verify-checksums", action="store_true", help="skip the md5 check (synthetic or own data sets)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> list[Measured]:
    args = build_parser().parse_args(argv)
    for flag in ("batch_size", "repeats", "calibration", "test_images"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from experiments.data import DataError, load_cifar10

    try:
        data = load_cifar10(args.data_dir, download=False, verify_checksums=not args.no_verify_checksums)
    except DataError as error:
        raise SystemExit(str(error)) from None  # one line, exit status 1: a bad file, not a bad setting
    test = (normalized(data.test_images[: args.test_images]), data.test_labels[: args.test_images])
    calibration = normalized(data.train_images[: args.calibration])
    networks = [load_network(spec) for spec in args.model]
    print(f"machine: {describe_machine(CPU)}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"batch {args.batch_size}, {args.repeats} repeats, {len(test[0])} test images, "
        f"{len(calibration)} calibration images"
    )
    results = []
    for name, model in networks:
        results += measure(name, model, test, calibration, args.batch_size, args.repeats)
    print(
        table(
            ["network", "version", "test accuracy %", "images/s", "spread"],
            [
                [
                    r.network,
                    r.version,
                    f"{r.accuracy:.2f}",
                    f"{r.images_per_second:.0f}",
                    f"{100 * r.spread:.0f}%",
                ]
                for r in results
            ],
        )
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
