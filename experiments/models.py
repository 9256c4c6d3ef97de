"""
# Which network a run trains

The trainer's `model` is a name of `resnet.list_models()`, what `resnet.create_model` and `torch.hub`
take too; `custom` is built from `n_blocks`, `n_channels` and `bottlenecks`.
"""

from collections.abc import Callable, Collection
from typing import Any

import torch

import resnet
from experiments.errors import UsageError
from experiments.options import Rule, one_of
from resnet.registry import PLAIN_NETWORKS as PLAIN_NETWORKS  # re-exported for the trainer's readers

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
    """`resnet.create_model(name)`; `shortcut="preset"` leaves each network its own shortcut option."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "zero_init_residual": zero_init_residual}
    if shortcut != "preset":
        kwargs["shortcut"] = shortcut
    if name == "custom":
        stages = {"n_blocks": n_blocks, "n_channels": n_channels, "bottlenecks": bottlenecks or None}
        kwargs.update({key: list(value) if value else value for key, value in stages.items()})
    return resnet.create_model(name, **kwargs)


MODEL_RULES: dict[str, Rule] = {
    # `preset`: each network keeps its own shortcut option (A for the CIFAR networks).
    "shortcut": one_of(("preset", *resnet.SHORTCUTS)),
    **dict.fromkeys(
        ("n_blocks", "n_channels", "bottlenecks"),
        lambda v: None if v and min(v) >= 1 else "must be a non-empty list of positive integers",
    ),
}


def check_model_settings(get: Callable[[str], Any], typed: Collection[str]) -> None:
    """The network's settings together (`get` reads one); raises `UsageError`."""
    model, shortcut = get("model"), get("shortcut")
    stages = ", ".join(k for k in ("n_blocks", "n_channels", "bottlenecks") if k in typed)
    if stages and model != "custom":
        # A preset fixes its own stages; accepting these and then ignoring them would train another net.
        raise UsageError(f"{stages} only apply to model=custom, not {model}; add --model custom")
    if str(model).startswith("plain") and shortcut not in ("preset", "none"):
        raise UsageError(
            f"{model} is a plain network without shortcuts, so shortcut={shortcut} does not apply; use "
            f"--model resnet{model[len('plain') :]} shortcut={shortcut}"
        )
    if model == "custom":
        lists = {key: get(key) for key in ("n_blocks", "n_channels", "bottlenecks")}
        try:  # the library's own check of the three lists, on the meta device: the stages take no memory
            with torch.device("meta"):
                build_model("custom", num_classes=10, shortcut=shortcut, zero_init_residual=False, **lists)
        except (ValueError, TypeError) as e:
            raise UsageError(f"custom model: {e}") from None
