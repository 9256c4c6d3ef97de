"""
# Which network a run trains

The trainer's `model` setting is a name from `resnet.list_models()`: a `resnet` preset, a `plainN`
network (the CIFAR preset with `shortcut="none"`, the paper's plain baselines of Figure 6), `custom`,
built from `n_blocks`, `n_channels` and `bottlenecks`, or `resnet9`, the fast DAWNBench network of
`resnet/fast.py` (not a network from the paper). The names and the networks behind them live in the
library (`resnet/registry.py`), so a run's `model` is also what `resnet.create_model` and `torch.hub`
take. This module only turns the trainer's settings into that call; the command line uses it too, to
reject a bad custom network before anything is read or written.
"""

from typing import Any

import resnet
from resnet.registry import PLAIN_NETWORKS

__all__ = ["MODEL_NAMES", "PLAIN_NETWORKS", "build_model", "custom_trunk"]

# The first name is the trainer's default: ResNet-20, the paper's smallest CIFAR network.
MODEL_NAMES = ["resnet20", *(name for name in resnet.list_models() if name != "resnet20")]


def _library_shortcut(shortcut: str) -> dict[str, Any]:
    # The trainer's `preset` means "the network's own choice", which the library gives when no shortcut
    # is passed.
    return {} if shortcut == "preset" else {"shortcut": shortcut}


def custom_trunk(
    n_blocks: list[int],
    n_channels: list[int],
    bottlenecks: list[int] | None,
    shortcut: str,
    zero_init_residual: bool = False,
) -> resnet.ResNetBase:
    """The trunk of the `custom` network (see `resnet.custom_resnet`); an empty `bottlenecks` is `None`."""
    return resnet.custom_resnet(
        list(n_blocks),
        list(n_channels),
        list(bottlenecks) if bottlenecks else None,
        zero_init_residual=zero_init_residual,
        **_library_shortcut(shortcut),
    ).trunk


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
    `resnet.create_model(name)` with the run's settings: a `resnet.ResNetClassifier`, or for `resnet9` a
    `resnet.ResNet9`. The stages (`n_blocks`, `n_channels`, `bottlenecks`) reach only `custom`.
    """
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "zero_init_residual": zero_init_residual,
        **_library_shortcut(shortcut),
    }
    if name == "custom":
        kwargs.update(
            n_blocks=list(n_blocks),
            n_channels=list(n_channels),
            bottlenecks=list(bottlenecks) if bottlenecks else None,
        )
    return resnet.create_model(name, **kwargs)
