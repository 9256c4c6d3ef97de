"""
# Which network a run trains

The trainer's `model` setting names a network: a `resnet` preset, a `plainN` network (the CIFAR preset
with `shortcut="none"`, the paper's plain baselines of Figure 6), `custom`, built from `n_blocks`,
`n_channels` and `bottlenecks`, or `resnet9`, the fast DAWNBench network of `resnet/fast.py` (not a
network from the paper). This module is the one place that turns those settings into a network (a
`resnet.ResNetClassifier`, or a `resnet.ResNet9`); the command line uses it too, to reject a bad custom
network before anything is read or written.
"""

from typing import Any

import resnet

# The paper's plain (shortcut-free) CIFAR networks, named by depth like their residual twins.
PLAIN_NETWORKS = {f"plain{depth}": f"resnet{depth}" for depth in (20, 32, 44, 56, 110)}

# The first name is the default: ResNet-20, the paper's smallest CIFAR network.
MODEL_NAMES = [
    "resnet20",
    *(n for n in resnet.PRESETS if n != "resnet20"),
    *PLAIN_NETWORKS,
    "resnet9",
    "custom",
]


def custom_trunk(
    n_blocks: list[int],
    n_channels: list[int],
    bottlenecks: list[int] | None,
    shortcut: str,
    zero_init_residual: bool = False,
) -> resnet.ResNetBase:
    """
    A CIFAR-style trunk (3×3 stem at full resolution, §4.2). `shortcut="preset"` picks the paper's
    choice for the block type: option A for basic blocks, as on CIFAR; option B for bottlenecks, whose
    projections the ImageNet networks use.
    """
    if shortcut == "preset":
        shortcut = "A" if bottlenecks is None else "B"
    return resnet.ResNetBase(
        list(n_blocks),
        list(n_channels),
        list(bottlenecks) if bottlenecks else None,
        first_kernel_size=3,
        stem="cifar",
        conv_bias=False,
        shortcut=shortcut,
        zero_init_residual=zero_init_residual,
    )


def build_model(
    name: str,
    *,
    num_classes: int,
    shortcut: str,
    n_blocks: list[int],
    n_channels: list[int],
    bottlenecks: list[int] | None,
    zero_init_residual: bool,
) -> resnet.ResNetClassifier | resnet.ResNet9:
    """
    A `resnet.ResNetClassifier` (a `ResNetBase` trunk with an `nn.Linear` head) or, for `resnet9`, a
    `resnet.ResNet9`, named as above.
    """
    if name == "custom":
        trunk = custom_trunk(n_blocks, n_channels, bottlenecks, shortcut, zero_init_residual)
        return resnet.ResNetClassifier(trunk, num_classes)
    extra: dict[str, Any] = {"zero_init_residual": zero_init_residual}
    if name == "resnet9":
        # Its blocks keep their shape, so the CIFAR default (A) and B both give identity shortcuts.
        return resnet.resnet9(
            num_classes=num_classes, shortcut="A" if shortcut == "preset" else shortcut, **extra
        )
    if name in PLAIN_NETWORKS:
        return resnet.PRESETS[PLAIN_NETWORKS[name]](num_classes=num_classes, shortcut="none", **extra)
    if shortcut != "preset":
        extra["shortcut"] = shortcut
    return resnet.PRESETS[name](num_classes=num_classes, **extra)
