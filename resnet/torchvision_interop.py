"""
# Weights from and to torchvision

torchvision's ImageNet ResNets have the same layers as our ImageNet presets (the bottleneck stride on the
$3 \\times 3$ convolution, option B shortcuts, no convolution biases); only the names differ. These two
functions rename the entries of a state dict, so users can load the pretrained torchvision files they
already have into `resnet.resnet50()` and friends, and hand our trained weights back to torchvision code.

| torchvision | ours |
|---|---|
| `conv1`, `bn1` | `trunk.stem.conv`, `trunk.stem.bn` |
| `layer{s}.{b}.conv1` … `bn3` | `trunk.stages.{s-1}.{b}.conv1` … `bn3` |
| `layer{s}.{b}.downsample.0`, `.1` | `trunk.stages.{s-1}.{b}.shortcut.conv`, `.bn` |
| `fc` | `head` |
"""

import re
from collections.abc import Callable, Mapping

import torch

StateDict = Mapping[str, torch.Tensor]

_BLOCK_LAYERS = r"(conv[123]|bn[123])"


def _from_tv_key(key: str) -> str:
    if m := re.fullmatch(r"(conv1|bn1)\.(\w+)", key):
        return f"trunk.stem.{'conv' if m[1] == 'conv1' else 'bn'}.{m[2]}"
    if m := re.fullmatch(rf"layer(\d+)\.(\d+)\.{_BLOCK_LAYERS}\.(\w+)", key):
        return f"trunk.stages.{int(m[1]) - 1}.{m[2]}.{m[3]}.{m[4]}"
    if m := re.fullmatch(r"layer(\d+)\.(\d+)\.downsample\.([01])\.(\w+)", key):
        return f"trunk.stages.{int(m[1]) - 1}.{m[2]}.shortcut.{'conv' if m[3] == '0' else 'bn'}.{m[4]}"
    if m := re.fullmatch(r"fc\.(weight|bias)", key):
        return f"head.{m[1]}"
    raise KeyError(key)


def _to_tv_key(key: str) -> str:
    if m := re.fullmatch(r"trunk\.stem\.(conv|bn)\.(\w+)", key):
        return f"{m[1]}1.{m[2]}"
    if m := re.fullmatch(rf"trunk\.stages\.(\d+)\.(\d+)\.{_BLOCK_LAYERS}\.(\w+)", key):
        return f"layer{int(m[1]) + 1}.{m[2]}.{m[3]}.{m[4]}"
    if m := re.fullmatch(r"trunk\.stages\.(\d+)\.(\d+)\.shortcut\.(conv|bn)\.(\w+)", key):
        return f"layer{int(m[1]) + 1}.{m[2]}.downsample.{'0' if m[3] == 'conv' else '1'}.{m[4]}"
    if m := re.fullmatch(r"head\.(weight|bias)", key):
        return f"fc.{m[1]}"
    raise KeyError(key)


def _rename(
    state_dict: StateDict, rename: Callable[[str], str], source: str, hint: str
) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}"
        )
    renamed: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        try:
            renamed[rename(key)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
        raise ValueError(f"{len(unknown)} entries are not {source} ResNet weights: {shown}. {hint}")
    return renamed


def from_torchvision(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """
    Rename a torchvision `resnet18` … `resnet152` state dict for the matching preset here
    (`resnet.resnet18()` … `resnet.resnet152()`), which then loads it with `strict=True`.
    """
    return _rename(
        state_dict,
        _from_tv_key,
        "torchvision",
        "Pass the state dict of a torchvision.models.resnet* model (unwrap a checkpoint's "
        "'state_dict' entry and strip any 'module.' prefix first).",
    )


def to_torchvision(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """
    The inverse of [`from_torchvision`](#from_torchvision): an ImageNet preset's state dict, renamed for
    the matching `torchvision.models.resnet*`.
    """
    return _rename(
        state_dict,
        _to_tv_key,
        "this library's",
        "Pass the state dict of one of the ImageNet presets (resnet18 ... resnet152).",
    )
