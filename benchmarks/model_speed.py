"""
# Model speed against reference implementations

Training steps and inference passes of our networks against a reference of the same architecture:
`torchvision.models.resnetXX` for the ImageNet presets, the plain networks below for the CIFAR ones and
`resnet9`. BENCHMARKS.md, section 1, has the commands and what they measured.
"""

import itertools
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import resnet
from benchmarks import common
from benchmarks.common import names, positive

# $n$ of the $6n + 2$-layer CIFAR networks, for the reference.
CIFAR_DEPTHS = {f"resnet{6 * n + 2}": n for n in (3, 5, 7, 9, 18, 200)}
CIFAR_MODELS = (*CIFAR_DEPTHS, "resnet9")
IMAGENET_PRESETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VARIANTS = ("eager", "channels_last", "compile", "compile_channels_last")


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1,
                 inplace: bool = True) -> list[nn.Module]:  # fmt: skip
    return [nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=inplace)]  # fmt: skip


class ReferenceResidual(nn.Sequential):
    """
    The basic block as plain layers, no checks: two convolutions, the input added, a ReLU after the sum; a
    block that widens and halves the map adds option A's shortcut (every other pixel, zero channels padded).
    """

    def __init__(self, in_channels: int, out_channels: int, inplace: bool = True):
        # A block that widens the map halves it: stride 2 on its first convolution.
        first = conv_bn_relu(in_channels, out_channels, 1 + (in_channels != out_channels), inplace)
        super().__init__(*first, *conv_bn_relu(out_channels, out_channels)[:2])
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if out.shape != x.shape:
            x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, out.shape[1] - x.shape[1]))
        # The sum is a fresh tensor, so rectifying it in place touches nothing the backward pass needs.
        return F.relu(out + x, inplace=self.inplace)


def reference_cifar_resnet(n: int, num_classes: int = 10) -> nn.Sequential:
    """
    The $6n + 2$-layer network of §4.2 and nothing else: the bar our `resnet20` ... have to clear. Its ReLUs
    allocate their output, as in the reference every CIFAR number in BENCHMARKS.md was measured against.
    """
    widths = itertools.pairwise([16] + [width for width in (16, 32, 64) for _ in range(n)])
    return nn.Sequential(
        *conv_bn_relu(3, 16, inplace=False), *(ReferenceResidual(a, b, inplace=False) for a, b in widths),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )  # fmt: skip


class ReferenceScale(nn.Module):
    """ResNet-9's $1/8$ on the logits, as a layer, so the network stays one `nn.Sequential`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.125


def reference_resnet9(num_classes: int = 10) -> nn.Sequential:
    """The DAWNBench ResNet-9 as one `nn.Sequential` with in-place ReLUs (a block's ReLU after the sum)."""
    return nn.Sequential(
        *conv_bn_relu(3, 64), *conv_bn_relu(64, 128), nn.MaxPool2d(2), ReferenceResidual(128, 128),
        *conv_bn_relu(128, 256), nn.MaxPool2d(2), *conv_bn_relu(256, 512), nn.MaxPool2d(2),
        ReferenceResidual(512, 512), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        nn.Linear(512, num_classes, bias=False), ReferenceScale(),
    )  # fmt: skip


def build_pair(name: str) -> tuple[nn.Module, nn.Module, str]:
    """Our network `name`, its reference and what that is, once their parameter counts agree."""
    if name == "resnet9":
        pair, described = (resnet.resnet9(), reference_resnet9()), "minimal ResNet-9 (nn.Sequential)"
    elif name in CIFAR_DEPTHS:
        pair = resnet.PRESETS[name](), reference_cifar_resnet(CIFAR_DEPTHS[name])
        described = "minimal option-A CIFAR ResNet"
    else:
        pair = resnet.PRESETS[name](), getattr(torchvision.models, name)(weights=None)
        described = f"torchvision.models.{name}"
    ours, theirs = (sum(p.numel() for p in model.parameters()) for model in pair)
    if ours != theirs:
        raise RuntimeError(f"{name}: ours has {ours} parameters, the reference {theirs}: not equal networks")
    return *pair, described


class Result(NamedTuple):
    name: str
    variant: str
    mode: str
    batch_size: int
    image_size: int
    ours: float
    reference: float
    ratio: float
    spread: float
    described: str


def timed_steps(model: nn.Module, device: torch.device, batch: int, size: int, variant: str, train: bool,
                steps: int, amp: str) -> Callable[[], None]:  # fmt: skip
    """`steps` SGD training steps (or inference passes) on one fixed random batch."""
    layout = torch.channels_last if "channels_last" in variant else torch.contiguous_format
    model = model.to(device, memory_format=layout).train(train)
    compiled = torch.compile(model) if variant.startswith("compile") else model
    generator = torch.Generator().manual_seed(0)
    images = torch.randn((batch, 3, size, size), generator=generator).to(device, memory_format=layout)
    num_classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    labels = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def run() -> None:
        with torch.inference_mode(not train):
            for _ in range(steps):
                with autocast:
                    out = compiled(images)
                    if not train:
                        continue
                    loss = F.cross_entropy(out, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    return run


def main(argv: Sequence[str] | None = None) -> list[Result]:
    p = common.parser(__doc__, repeats=7)
    # fmt: off
    p.add_argument("--models", type=names((*CIFAR_MODELS, *IMAGENET_PRESETS)),
                   default="resnet20,resnet56,resnet9,resnet18,resnet50",
                   help="comma-separated: resnet20..resnet1202 and resnet9 (CIFAR), resnet18..152 (ImageNet)")
    p.add_argument("--batch-size", type=positive, help="images per step (default: 128 CIFAR, 32 ImageNet)")
    p.add_argument("--image-size", type=positive, help="square image side (default: 32 CIFAR, 224 ImageNet)")
    p.add_argument("--variants", type=names(VARIANTS), default="eager,channels_last,compile",
                   help=f"comma-separated, from {', '.join(VARIANTS)}")
    for layout in ("compile", "channels-last"):
        p.add_argument(f"--no-{layout}", action="store_true", help=f"drop the {layout} variants")
    p.add_argument("--modes", type=names(("train", "infer")), default="train,infer", help="train, infer")
    p.add_argument("--steps", type=positive, default=5, help="steps per timed repeat (5)")
    p.add_argument("--warmup", type=int, choices=range(100), default=2, metavar="N", help="untimed calls (2)")
    p.add_argument("--amp", choices=("none", "bf16"), default="none", help="number format, as the trainer's")
    # fmt: on
    args = p.parse_args(argv)
    device = common.start(p, args, models=["resnet20", "resnet18"], batch_size=4, image_size=32,
                          variants=["eager", "channels_last"], repeats=2, steps=1, warmup=1)  # fmt: skip
    args.variants = [v for v in args.variants if not (args.no_compile and v.startswith("compile"))
                     and not (args.no_channels_last and "channels_last" in v)]  # fmt: skip
    if not args.variants:
        p.error("--no-compile/--no-channels-last removed every variant; keep at least one")
    results: list[Result] = []
    for name, variant, mode in itertools.product(args.models, args.variants, args.modes):
        cifar = name in CIFAR_MODELS
        batch, size = args.batch_size or (128 if cifar else 32), args.image_size or (32 if cifar else 224)
        # Fresh models for each mode: inference never runs on weights trained on random data.
        *pair, described = build_pair(name)
        train = mode == "train"
        runs = [timed_steps(m, device, batch, size, variant, train, args.steps, args.amp) for m in pair]
        seconds = common.alternate(runs, args.repeats, device, args.warmup)
        (ours, spread), (theirs, spread2) = (common.rate_summary(batch * args.steps, t) for t in seconds)
        # Rates are inverse times: ours/reference in images/s is reference/ours in seconds.
        ratio = common.paired_ratio(seconds[1], seconds[0])
        results.append(Result(name, variant, mode, batch, size, ours, theirs, ratio, max(spread, spread2),
                              described))  # fmt: skip
        print(f"  {name} {variant} {mode}: ours {ours:.1f}, reference {theirs:.1f} images/s", file=sys.stderr)

    print(f"\nimages/s, median of {args.repeats} alternating repeats of {args.steps} steps; amp {args.amp}; "
          "ratio = median over repeats of ours/reference measured back to back; spread = (max - min) / "
          f"median of the noisier side; {common.load_average()}")  # fmt: skip
    headers = ["model", "variant", "mode", "batch", "size", "ours img/s", "reference img/s", "ratio",
               "spread", "reference"]  # fmt: skip
    print(common.table(headers, [[*r[:5], f"{r.ours:.1f}", f"{r.reference:.1f}", f"{r.ratio:.3f}",
                                  f"{r.spread:.0%}", r.described] for r in results]) + "\n")  # fmt: skip
    for r in results:
        verdict = "meets" if r.ratio >= 1.0 else "below"
        print(f"ratio {r.name} {r.variant} {r.mode}: {r.ratio:.3f} (ours/reference, {verdict} the 1.0 bar)")
    geometric_mean = statistics.geometric_mean(r.ratio for r in results)
    print(f"ratio geometric mean over {len(results)} rows: {geometric_mean:.3f}")
    return results


if __name__ == "__main__":
    main()
