"""
# Model speed against reference implementations

Are our networks as fast as the ones people would otherwise use? For every preset asked for, this
script times a training step (forward, cross-entropy, backward, SGD step) and an inference forward pass
of our model and of a reference with **the same architecture**, on the same batch and image size:

* ImageNet presets (`resnet18` ... `resnet152`) against `torchvision.models.resnetXX`;
* CIFAR presets (`resnet20` ... `resnet1202`) against [`ReferenceCifarResNet`](#ReferenceCifarResNet),
  a deliberately plain option-A CIFAR ResNet written below, the way short CIFAR scripts write it;
* the fast CIFAR network `resnet9` (`resnet/fast.py`, not a preset of the paper) against
  [`reference_resnet9`](#reference_resnet9), the same eight convolutions as one plain `nn.Sequential`.

Both models of a pair are checked to have the same number of parameters before they are timed. The two
are measured in alternating repeats; the table gives each side's median images/s and the ratio
`ours / reference` as the median of the per-repeat ratios (the two runs of a repeat are back to back,
so they share the machine's load). A ratio of 1.0 or more means we are not slower. Each pair is
measured in the variants asked for: plain eager NCHW, `channels_last`, `torch.compile`, and both.

    python -m benchmarks.model_speed --device cpu --models resnet20,resnet56,resnet9 --repeats 7
    python -m benchmarks.model_speed --device cuda --models resnet18,resnet50 --batch-size 128
"""

import argparse
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import resnet
from benchmarks.common import (
    alternate,
    load_average,
    paired_ratio,
    parser,
    positive,
    rate_summary,
    start,
    table,
)

# $n$ of the $6n + 2$-layer CIFAR networks, for the reference.
CIFAR_DEPTHS = {f"resnet{6 * n + 2}": n for n in (3, 5, 7, 9, 18, 200)}
# The CIFAR-sized networks: the paper's presets and the fast ResNet-9.
CIFAR_MODELS = (*CIFAR_DEPTHS, "resnet9")
IMAGENET_PRESETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
VARIANTS = ("eager", "channels_last", "compile", "compile_channels_last")
MODES = ("train", "infer")


class ReferencePadShortcut(nn.Module):
    """Option A the short way: keep every other pixel, pad the new channels with zeros on both sides."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.before = extra_channels // 2
        self.after = extra_channels - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.before, self.after))


class ReferenceBlock(nn.Module):
    """The basic block with functional ReLUs and no checks: as little Python per call as it gets."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        changes_shape = stride != 1 or in_channels != out_channels
        self.shortcut = ReferencePadShortcut(out_channels - in_channels) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ReferenceCifarResNet(nn.Module):
    """
    ## The CIFAR reference

    The $6n + 2$-layer network of §4.2 as a minimal script writes it: a $3 \\times 3$ stem, three stages
    of `n` blocks with 16, 32, 64 channels, the first block of the second and third stage striding by
    2, global average pooling and a linear layer. Nothing else: no argument or input checks, no
    configurable shortcut, no base class from another library. It is the bar our `resnet20` and
    `resnet56` have to clear.
    """

    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks: list[nn.Module] = []
        in_channels = 16
        for stage, channels in enumerate((16, 32, 64)):
            for i in range(n):
                blocks.append(ReferenceBlock(in_channels, channels, 2 if stage > 0 and i == 0 else 1))
                in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def reference_conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """A $3 \\times 3$ convolution that keeps the map's size, batch norm and an in-place ReLU."""
    return [nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]  # fmt: skip


class ReferenceResidual(nn.Module):
    """ResNet-9's residual block: two convolutions on a branch, the identity added, a ReLU after the sum."""

    def __init__(self, channels: int):
        super().__init__()
        self.branch = nn.Sequential(
            *reference_conv_bn_relu(channels, channels),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The sum is a fresh tensor, so rectifying it in place touches nothing the backward pass needs.
        return F.relu(self.branch(x) + x, inplace=True)


class ReferenceScale(nn.Module):
    """Multiplies by a constant (ResNet-9's $1/8$ on the logits); a layer, so the net stays one Sequential."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def reference_resnet9(num_classes: int = 10) -> nn.Sequential:
    """
    ## The ResNet-9 reference

    The DAWNBench ResNet-9 as a short script writes it: one `nn.Sequential` of convolution, batch norm,
    ReLU and max-pool layers, with in-place ReLUs as in David Page's code, and the two residual blocks
    as the only custom modules. Like ours (and unlike Page's), a block's ReLU comes after the sum. No
    checks, no configuration: the bar for `resnet.resnet9()`.
    """
    return nn.Sequential(
        *reference_conv_bn_relu(3, 64),
        *reference_conv_bn_relu(64, 128), nn.MaxPool2d(2), ReferenceResidual(128),
        *reference_conv_bn_relu(128, 256), nn.MaxPool2d(2),
        *reference_conv_bn_relu(256, 512), nn.MaxPool2d(2), ReferenceResidual(512),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(512, num_classes, bias=False), ReferenceScale(0.125),
    )  # fmt: skip


def build_pair(name: str) -> tuple[nn.Module, nn.Module, str]:
    """
    Our network `name`, the reference with the same architecture, and what that reference is, once their
    parameter counts agree: a cheap guard against comparing different networks.
    """
    ours: nn.Module
    reference: nn.Module
    if name == "resnet9":
        ours, reference, described = resnet.resnet9(), reference_resnet9(), "minimal ResNet-9 (nn.Sequential)"
    elif name in CIFAR_DEPTHS:
        ours, reference = resnet.PRESETS[name](), ReferenceCifarResNet(CIFAR_DEPTHS[name])
        described = "minimal option-A CIFAR ResNet"
    else:
        ours, reference = resnet.PRESETS[name](), getattr(torchvision.models, name)(weights=None)
        described = f"torchvision.models.{name}"
    counts = [sum(p.numel() for p in model.parameters()) for model in (ours, reference)]
    if counts[0] != counts[1]:
        raise RuntimeError(f"{name}: ours has {counts[0]} parameters, the reference {counts[1]}; "
                           f"the comparison would not be between equal architectures")  # fmt: skip
    return ours, reference, described


@dataclass
class Setting:
    """Everything that decides what one timed call does."""

    device: torch.device
    batch_size: int
    image_size: int
    variant: str
    autocast: str
    steps: int
    compile_mode: str = "default"


def timed_steps(model: nn.Module, setting: Setting, mode: str, num_classes: int) -> Callable[[], None]:
    """
    A callable that runs `setting.steps` training steps (forward, cross-entropy, backward, SGD step, as a
    trainer does) or forward passes in evaluation mode without autograd, on one fixed random batch.
    """
    model = model.to(setting.device)
    if "channels_last" in setting.variant:
        model = model.to(memory_format=torch.channels_last)
    compiled = (
        torch.compile(model, mode=setting.compile_mode) if setting.variant.startswith("compile") else model
    )
    generator = torch.Generator().manual_seed(0)
    size = (setting.batch_size, 3, setting.image_size, setting.image_size)
    images = torch.randn(size, generator=generator).to(setting.device)
    if "channels_last" in setting.variant:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (setting.batch_size,), generator=generator).to(setting.device)
    autocast = torch.autocast(setting.device.type, dtype=torch.bfloat16, enabled=setting.autocast == "bf16")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train(mode == "train")

    def train() -> None:
        for _ in range(setting.steps):
            with autocast:
                loss = F.cross_entropy(compiled(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def infer() -> None:
        with torch.inference_mode(), autocast:
            for _ in range(setting.steps):
                compiled(images)

    return train if mode == "train" else infer


@dataclass
class Result:
    name: str
    variant: str
    mode: str
    setting: Setting
    ours: float
    reference: float
    ratio: float
    spread: float
    described: str


def measure(name: str, setting: Setting, modes: Sequence[str], repeats: int, warmup: int) -> list[Result]:
    """Time ours and the reference on `name` in one variant, for each mode, in alternating repeats."""
    results = []
    for mode in modes:
        # Fresh models for every mode, so inference never runs on weights that training steps on random
        # data have pushed somewhere unusual.
        ours, reference, described = build_pair(name)
        num_classes = next(m.out_features for m in reversed(list(ours.modules())) if isinstance(m, nn.Linear))
        runs = [timed_steps(model, setting, mode, num_classes) for model in (ours, reference)]
        # Compilation, cuDNN's algorithm search and the allocator's first requests are paid here, untimed.
        for run in runs:
            for _ in range(warmup):
                run()
        seconds = alternate(runs, repeats, setting.device)
        images = setting.batch_size * setting.steps
        (ours_rate, ours_spread), (reference_rate, reference_spread) = (
            rate_summary(images, s) for s in seconds
        )
        # Rates are inverse times: ours/reference in images/s is reference/ours in seconds.
        ratio = paired_ratio(seconds[1], seconds[0])
        spread = max(ours_spread, reference_spread)
        results.append(Result(name, setting.variant, mode, setting, ours_rate, reference_rate, ratio, spread,
                              described))  # fmt: skip
        progress = f"ours {ours_rate:.1f}, reference {reference_rate:.1f} images/s"
        print(f"  {name} {setting.variant} {mode}: {progress}", file=sys.stderr, flush=True)
    return results


def choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An `argparse` type: a comma-separated, non-empty list of names from `allowed`."""

    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in allowed]
        if unknown or not items:
            raise argparse.ArgumentTypeError(
                f"unknown or empty {unknown or text!r}; choose from {', '.join(allowed)}"
            )
        return items

    return parse


def main(argv: Sequence[str] | None = None) -> list[Result]:
    p = parser(__doc__.split("\n\n")[1], repeats=7)
    # fmt: off
    p.add_argument("--models", type=choices((*CIFAR_MODELS, *IMAGENET_PRESETS)),
                   default="resnet20,resnet56,resnet9,resnet18,resnet50",
                   help="comma-separated: resnet20..resnet1202 and resnet9 (CIFAR), resnet18..152 (ImageNet)")
    p.add_argument("--batch-size", type=positive, help="images per step (default: 128 CIFAR, 32 ImageNet)")
    p.add_argument("--image-size", type=positive, help="square image side (default: 32 CIFAR, 224 ImageNet)")
    p.add_argument("--variants", type=choices(VARIANTS), default="eager,channels_last,compile",
                   help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--no-compile", action="store_true", help="drop the torch.compile variants")
    p.add_argument("--no-channels-last", action="store_true", help="drop the channels_last variants")
    p.add_argument("--compile-mode", choices=("default", "reduce-overhead", "max-autotune"),
                   default="default", help="torch.compile mode (default)")
    p.add_argument("--modes", type=choices(MODES), default="train,infer", help="train, infer or both")
    p.add_argument("--steps", type=positive, default=5, help="steps per timed repeat (5)")
    p.add_argument("--warmup", type=int, choices=range(100), default=2, metavar="N", help="untimed calls (2)")
    p.add_argument("--autocast", choices=("none", "bf16"), default="none", help="bf16 autocast (forward)")
    # fmt: on
    args = p.parse_args(argv)
    if args.quick:  # resnet20 and resnet18, batch 4, 32x32, eager and channels_last, 2 repeats of 1 step
        args.models, args.batch_size, args.image_size = ["resnet20", "resnet18"], 4, 32
        args.variants, args.repeats, args.steps, args.warmup = ["eager", "channels_last"], 2, 1, 1
    args.variants = [v for v in args.variants if not (args.no_compile and v.startswith("compile"))
                     and not (args.no_channels_last and "channels_last" in v)]  # fmt: skip
    if not args.variants:
        p.error("--no-compile/--no-channels-last removed every variant; keep at least one")
    device = start(p, args)
    results: list[Result] = []
    for name in args.models:
        cifar = name in CIFAR_MODELS
        for variant in args.variants:
            batch, size = args.batch_size or (128 if cifar else 32), args.image_size or (32 if cifar else 224)
            setting = Setting(device, batch, size, variant, args.autocast, args.steps, args.compile_mode)
            results.extend(measure(name, setting, args.modes, args.repeats, args.warmup))

    print(f"\nimages/s, median of {args.repeats} alternating repeats of {args.steps} steps; autocast "
          f"{args.autocast}; ratio = median over repeats of ours/reference measured back to back; "
          f"spread = (max - min) / median of the noisier side; {load_average()}")  # fmt: skip
    headers = ["model", "variant", "mode", "batch", "size", "ours img/s", "reference img/s", "ratio",
               "spread", "reference"]  # fmt: skip
    rows = [[r.name, r.variant, r.mode, r.setting.batch_size, r.setting.image_size, f"{r.ours:.1f}",
             f"{r.reference:.1f}", f"{r.ratio:.3f}", f"{r.spread:.0%}", r.described]
            for r in results]  # fmt: skip
    print(table(headers, rows) + "\n")
    for r in results:
        verdict = "meets" if r.ratio >= 1.0 else "below"
        print(f"ratio {r.name} {r.variant} {r.mode}: {r.ratio:.3f} (ours/reference, {verdict} the 1.0 bar)")
    geometric_mean = math.exp(statistics.fmean(math.log(r.ratio) for r in results))
    print(f"ratio geometric mean over {len(results)} rows: {geometric_mean:.3f}")
    return results


if __name__ == "__main__":
    main()
