"""
# Which network a run trains

The trainer's `model` is a name from `resnet.list_models()` (`resnet/registry.py`), so it is also what
`resnet.create_model` and `torch.hub` take: a preset, a `plainN` network (the preset without shortcuts,
Figure 6's plain baselines), `resnet9` (the DAWNBench network, not the paper's) or `custom`, built from
`n_blocks`, `n_channels` and `bottlenecks`. This module turns the trainer's settings into that call.
"""

from typing import Any

import resnet
from resnet.registry import PLAIN_NETWORKS

__all__ = ["MODEL_NAMES", "PLAIN_NETWORKS", "build_model", "custom_trunk"]

# The first name is the trainer's default: ResNet-20, the paper's smallest CIFAR network.
MODEL_NAMES = ["resnet20", *(name for name in resnet.list_models() if name != "resnet20")]


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
    `resnet.create_model(name)` with the run's settings. The stages reach only `custom`, and the
    trainer's `shortcut="preset"` (each network's own choice) is what the library does when given none.
    """
    kwargs: dict[str, Any] = {"num_classes": num_classes, "zero_init_residual": zero_init_residual}
    if shortcut != "preset":
        kwargs["shortcut"] = shortcut
    if name == "custom":
        stages = {"n_blocks": n_blocks, "n_channels": n_channels, "bottlenecks": bottlenecks or None}
        kwargs.update({key: list(value) if value else value for key, value in stages.items()})
    return resnet.create_model(name, **kwargs)


def custom_trunk(
    n_blocks: list[int], n_channels: list[int], bottlenecks: list[int] | None, shortcut: str
) -> resnet.ResNetBase:
    """The `custom` network's trunk; the command line builds it to check the three lists before a run."""
    network = build_model(
        "custom",
        num_classes=10,
        shortcut=shortcut,
        n_blocks=n_blocks,
        n_channels=n_channels,
        bottlenecks=bottlenecks,
        zero_init_residual=False,
    )
    return network.trunk
