"""
# Describing the feature maps

A detection or segmentation head (a feature pyramid, a U-Net decoder) attaches to the maps a backbone
makes at several scales, and its layers must know each map's width and scale before any image has gone
through. `feature_info()` on a trunk or a classifier answers that from the configuration alone, one
`FeatureInfo` per map, highest resolution first.

`module` names the submodule whose output is the map, relative to the model `feature_info` was called
on, so it can go straight into
`torchvision.models.feature_extraction.create_feature_extractor(model, {info.module: ...})`.

[`FeatureExtractor`](#FeatureExtractor) is the other way to get the maps, without tracing: timm's
`features_only=True`, which `resnet.create_model` builds.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class FeatureInfo:
    """
    * `module` is the dotted name of the submodule that outputs the map
    * `channels` is the map's width
    * `reduction` is how many input pixels one pixel of the map stands for along each side: an image
      whose sides are multiples of it gives maps `reduction` times smaller on each side
    """

    module: str
    channels: int
    reduction: int


class Backbone(Protocol):
    """What a network offers to become a [`FeatureExtractor`](#FeatureExtractor)."""

    def feature_info(self) -> list[FeatureInfo]: ...

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def reset_classifier(self, num_classes: int) -> None: ...


class FeatureExtractor(nn.Module):
    """
    ## A backbone that returns its maps

    timm's `features_only=True`: the network without its classifier, returning the maps of the stages
    picked by `out_indices` (indices into `feature_info()`, negative ones counting from the end; all
    stages by default), highest resolution first. Unlike timm's ResNets, index 0 is the first *stage*:
    the stem's map is not offered, because no head in this library attaches to it.
    `resnet.create_model(name, features_only=True, out_indices=...)` builds one.

    The network is kept whole under `network`, so its own weights load into it
    (`extractor.network.load_state_dict(...)`); only its head is dropped.
    """

    def __init__(self, network: Backbone, out_indices: Sequence[int] | None = None):
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"expected a network (an nn.Module), got {type(network).__name__}")
        info = network.feature_info()
        n = len(info)
        indices = list(range(n)) if out_indices is None else list(out_indices)
        if not indices:
            raise ValueError(f"out_indices must name at least one of the {n} stages, got {out_indices!r}")
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, int) or not -n <= index < n:
                raise ValueError(
                    f"out_indices must be stage indices from {-n} to {n - 1} (this network has {n} "
                    f"stages), got {list(out_indices or [])}"
                )
        self.out_indices = [index % n for index in indices]
        if len(set(self.out_indices)) != len(self.out_indices):
            raise ValueError(f"out_indices names a stage twice: {list(out_indices or [])}")
        network.reset_classifier(0)
        self.network = network
        self._info = [replace(info[i], module=f"network.{info[i].module}") for i in self.out_indices]

    def feature_info(self) -> list[FeatureInfo]:
        """The width and scale of each map `forward` returns, in the same order."""
        return list(self._info)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.network.stage_outputs(x)
        return [maps[i] for i in self.out_indices]
