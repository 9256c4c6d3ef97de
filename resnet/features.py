"""
# Describing the feature maps

A detection or segmentation head (a feature pyramid, a U-Net decoder) attaches to the maps a backbone
makes at several scales, and its layers must know each map's width and scale before any image has gone
through. `feature_info()` on a trunk or a classifier answers that from the configuration alone, one
`FeatureInfo` per map, highest resolution first.

`module` names the submodule whose output is the map, relative to the model `feature_info` was called
on, so it can go straight into
`torchvision.models.feature_extraction.create_feature_extractor(model, {info.module: ...})`.
"""

from dataclasses import dataclass


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
