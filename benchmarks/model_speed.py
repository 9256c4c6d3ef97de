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
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import resnet
from benchmarks.common import (
    alternate,
    machine_description,
    paired_ratio,
    parse_device,
    print_table,
    rate_summary,
    set_threads,
)

# $n$ of the $6n + 2$-layer CIFAR networks, for the reference.
CIFAR_DEPTHS = {
    "resnet20": 3,
    "resnet32": 5,
    "resnet44": 7,
    "resnet56": 9,
    "resnet110": 18,
    "resnet1202": 200,
}
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
    return [
        nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


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
        *reference_conv_bn_relu(64, 128),
        nn.MaxPool2d(2),
        ReferenceResidual(128),
        *reference_conv_bn_relu(128, 256),
        nn.MaxPool2d(2),
        *reference_conv_bn_relu(256, 512),
        nn.MaxPool2d(2),
        ReferenceResidual(512),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(512, num_classes, bias=False),
        ReferenceScale(0.125),
    )


def build_pair(name: str) -> tuple[nn.Module, nn.Module, str]:
    """Our network `name`, the reference with the same architecture, and what that reference is."""
    if name == "resnet9":
        return _checked_pair(name, resnet.resnet9(), reference_resnet9(), "minimal ResNet-9 (nn.Sequential)")
    ours = resnet.PRESETS[name]()
    if name in CIFAR_DEPTHS:
        reference: nn.Module = ReferenceCifarResNet(CIFAR_DEPTHS[name])
        described = "minimal option-A CIFAR ResNet"
    else:
        reference = getattr(torchvision.models, name)(weights=None)
        described = f"torchvision.models.{name}"
    return _checked_pair(name, ours, reference, described)


def _checked_pair(
    name: str, ours: nn.Module, reference: nn.Module, described: str
) -> tuple[nn.Module, nn.Module, str]:
    """The pair, once their parameter counts agree: a cheap guard against comparing different networks."""
    ours_count = sum(p.numel() for p in ours.parameters())
    reference_count = sum(p.numel() for p in reference.parameters())
    if ours_count != reference_count:
        raise RuntimeError(
            f"{name}: ours has {ours_count} parameters, the reference {reference_count}; "
            f"the comparison would not be between equal architectures"
        )
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


def prepare(model: nn.Module, setting: Setting) -> nn.Module:
    """Move the model to the device and memory format of the variant, and compile it if asked."""
    model = model.to(setting.device)
    if "channels_last" in setting.variant:
        model = model.to(memory_format=torch.channels_last)
    if setting.variant.startswith("compile"):
        model = torch.compile(model, mode=setting.compile_mode)
    return model


def autocast_context(setting: Setting) -> AbstractContextManager:
    if setting.autocast == "bf16":
        return torch.autocast(setting.device.type, dtype=torch.bfloat16)
    return nullcontext()


def make_inputs(setting: Setting, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(setting.batch_size, 3, setting.image_size, setting.image_size, generator=generator)
    labels = torch.randint(0, num_classes, (setting.batch_size,), generator=generator)
    images = images.to(setting.device)
    if "channels_last" in setting.variant:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(setting.device)


def train_steps(model: nn.Module, setting: Setting, num_classes: int) -> Callable[[], None]:
    """A callable that runs `setting.steps` full training steps, the way a trainer would."""
    images, labels = make_inputs(setting, num_classes)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def run() -> None:
        for _ in range(setting.steps):
            with autocast_context(setting):
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


def infer_steps(model: nn.Module, setting: Setting, num_classes: int) -> Callable[[], None]:
    """A callable that runs `setting.steps` forward passes in evaluation mode without autograd."""
    images, _ = make_inputs(setting, num_classes)
    model.eval()

    def run() -> None:
        with torch.inference_mode(), autocast_context(setting):
            for _ in range(setting.steps):
                model(images)

    return run


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
        num_classes = ours.head.out_features
        pair = [prepare(ours, setting), prepare(reference, setting)]
        make = train_steps if mode == "train" else infer_steps
        runs = [make(model, setting, num_classes) for model in pair]
        # Warm-up: compilation, cuDNN's algorithm search and the allocator's first requests are paid
        # here, outside the measured repeats.
        for run in runs:
            for _ in range(warmup):
                run()
        seconds = alternate(runs, repeats, setting.device)
        images = setting.batch_size * setting.steps
        ours_rate, ours_spread = rate_summary(images, seconds[0])
        reference_rate, reference_spread = rate_summary(images, seconds[1])
        # Rates are inverse times: ours/reference in images/s is reference/ours in seconds.
        ratio = paired_ratio(seconds[1], seconds[0])
        results.append(
            Result(
                name,
                setting.variant,
                mode,
                setting,
                ours_rate,
                reference_rate,
                ratio,
                max(ours_spread, reference_spread),
                described,
            )
        )
        # Progress for long runs; the table at the end is on stdout.
        print(
            f"  {name} {setting.variant} {mode}: ours {ours_rate:.1f}, reference {reference_rate:.1f} "
            f"images/s",
            file=sys.stderr,
            flush=True,
        )
    return results


def parse_list(text: str, allowed: Sequence[str], flag: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown or not items:
        raise SystemExit(f"{flag}: unknown or empty {unknown or text!r}; choose from {', '.join(allowed)}")
    return items


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    # The opening paragraph ends in a colon: the list after it belongs in the help too.
    parser = argparse.ArgumentParser(
        description="\n\n".join(__doc__.split("\n\n")[1:3]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models",
        default="resnet20,resnet56,resnet9,resnet18,resnet50",
        help="comma-separated networks (CIFAR: resnet20..resnet1202 and resnet9, ImageNet: resnet18..152)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per step (default: 128 for CIFAR networks, 32 for ImageNet presets)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="square image side (default: 32 for CIFAR networks, 224 for ImageNet presets)",
    )
    parser.add_argument(
        "--variants",
        default="eager,channels_last,compile",
        help=f"comma-separated, from {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--compile-mode",
        choices=("default", "reduce-overhead", "max-autotune"),
        default="default",
        help="torch.compile mode (reduce-overhead: CUDA graphs on GPUs)",
    )
    parser.add_argument("--no-compile", action="store_true", help="drop the torch.compile variants")
    parser.add_argument("--no-channels-last", action="store_true", help="drop the channels_last variants")
    parser.add_argument("--modes", default="train,infer", help="train, infer or both")
    parser.add_argument("--repeats", type=int, default=7, help="alternating timed repeats per side")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls (of --steps steps) per side")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda (default: cuda when available)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice, one per core)",
    )
    parser.add_argument(
        "--autocast",
        choices=("none", "bf16"),
        default="none",
        help="bf16 autocast around the forward pass (pays on GPUs and bf16-capable CPUs)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a seconds-long smoke run: resnet20 and resnet18, batch 4, 32x32, eager and "
        "channels_last, 2 repeats of 1 step",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batch_size, args.image_size = "resnet20,resnet18", 4, 32
        args.variants, args.repeats, args.steps, args.warmup = "eager,channels_last", 2, 1, 1
    for flag in ("batch_size", "image_size", "repeats", "steps"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be 0 or more, got {args.warmup}")
    args.models = parse_list(args.models, (*CIFAR_MODELS, *IMAGENET_PRESETS), "--models")
    args.variants = [
        v
        for v in parse_list(args.variants, VARIANTS, "--variants")
        if not (args.no_compile and v.startswith("compile"))
        and not (args.no_channels_last and "channels_last" in v)
    ]
    if not args.variants:
        raise SystemExit("--no-compile/--no-channels-last removed every variant; keep at least one")
    args.modes = parse_list(args.modes, MODES, "--modes")
    return args


def main(argv: Sequence[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    device = parse_device(args.device)
    set_threads(args.threads)
    if device.type == "cuda":
        # Let cuDNN pick the fastest algorithm for the fixed shapes, as the trainer does; both sides get it.
        torch.backends.cudnn.benchmark = True
    print(f"machine: {machine_description(device)}")
    results: list[Result] = []
    for name in args.models:
        cifar = name in CIFAR_MODELS
        for variant in args.variants:
            setting = Setting(
                device,
                args.batch_size or (128 if cifar else 32),
                args.image_size or (32 if cifar else 224),
                variant,
                args.autocast,
                args.steps,
                args.compile_mode,
            )
            results.extend(measure(name, setting, args.modes, args.repeats, args.warmup))

    print(
        f"\nimages/s, median of {args.repeats} alternating repeats of {args.steps} steps; "
        f"autocast {args.autocast}; ratio = median over repeats of ours/reference measured back to back; "
        f"spread = (max - min) / median of the noisier side"
    )
    print_table(
        [
            "model",
            "variant",
            "mode",
            "batch",
            "size",
            "ours img/s",
            "reference img/s",
            "ratio",
            "spread",
            "reference",
        ],
        [
            [
                r.name,
                r.variant,
                r.mode,
                str(r.setting.batch_size),
                str(r.setting.image_size),
                f"{r.ours:.1f}",
                f"{r.reference:.1f}",
                f"{r.ratio:.3f}",
                f"{r.spread:.0%}",
                r.described,
            ]
            for r in results
        ],
    )
    print()
    for r in results:
        verdict = "meets" if r.ratio >= 1.0 else "below"
        print(f"ratio {r.name} {r.variant} {r.mode}: {r.ratio:.3f} (ours/reference, {verdict} the 1.0 bar)")
    geometric_mean = math.exp(statistics.fmean(math.log(r.ratio) for r in results))
    print(f"ratio geometric mean over {len(results)} rows: {geometric_mean:.3f}")
    return results


if __name__ == "__main__":
    main()
