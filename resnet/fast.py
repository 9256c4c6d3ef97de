"""
# A fast residual network for CIFAR-10 (beyond the paper)

The paper's CIFAR networks are thin (16 to 64 channels) and deep. They follow the paper's rule of
halving the map where the filters double (§3.3), so each of the three stages costs about the same: 16
channels on $32 \\times 32$ maps, 32 on $16 \\times 16$, 64 on $8 \\times 8$. That is the right shape for
studying depth, but not for training fast on a GPU: thin layers leave most of a modern GPU idle, and
every one of the many layers costs a kernel launch.

The networks that held the CIFAR-10 speed records turned this around. The best known is the "ResNet-9"
that David Page (Myrtle.ai) trained for the DAWNBench competition in 2018: 94% test accuracy in 24
epochs and 79 seconds on one V100, and 26 seconds after a further series of training tricks. It has only
eight convolutions, wide ones (64 to 512 channels), a max-pool after each widening so that the expensive
layers see small maps, and just two residual blocks. (Later networks, such as Keller Jordan's airbench,
are faster still.) It is still a residual network, and this module
builds it from the library's own [`ResidualBlock`](model.py#ResidualBlock).

It is **not** a network from He et al. (2015), and we keep it out of `resnet.PRESETS`, which holds the
paper's eleven. It differs from Page's in one detail: his residual branch ends in a ReLU and the sum is
not rectified, while ours is the paper's block, $\\mathrm{ReLU}(\\mathcal{F}(x) + x)$. The weights
keep PyTorch's default initialisation (`ResNetBase` uses He initialisation); we have not compared the
two for this network.

| layer | output (CIFAR) | what it is |
|---|---|---|
| stem | $64 \\times 32 \\times 32$ | $3 \\times 3$ convolution, BN, ReLU (the CIFAR stem) |
| layer 1 | $128 \\times 16 \\times 16$ | convolution, BN, ReLU, $2 \\times 2$ max-pool; residual block |
| layer 2 | $256 \\times 8 \\times 8$ | convolution, BN, ReLU, $2 \\times 2$ max-pool |
| layer 3 | $512 \\times 4 \\times 4$ | convolution, BN, ReLU, $2 \\times 2$ max-pool; residual block |
| head | 10 | global max-pool, fully connected layer without bias, logits scaled by $1/8$ |

Scaling the logits down by 8 keeps the softmax from saturating early at the large learning rates these
short schedules use. The training recipe that goes with it is `--recipe resnet9` in
`experiments/recipes.py`.
"""

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.fx
from torch import nn

from resnet.checks import check_image_batch, check_non_negative, check_positive
from resnet.features import FeatureInfo
from resnet.model import ResidualBlock, ResNetStem, Shortcut, conv3x3, zero_init_residual_branches
from resnet.module import Module

# A leaf for `torch.fx`, as in `model.py`: the network traces and the traced graph keeps the check.
torch.fx.wrap("check_image_batch")


class ConvPool(Module):
    """
    ## Widen and downsample

    A $3 \\times 3$ convolution to `out_channels`, batch norm, ReLU, then a $2 \\times 2$ max-pool that
    halves the map. A stride-2 $3 \\times 3$ convolution would halve it too, and it would also read
    every pixel; but it computes its output at only one position in four. Convolving at stride 1 and
    then pooling computes it at every position and keeps the strongest response of each $2 \\times 2$
    window, at four times the cost of the strided convolution.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        check_positive(in_channels=in_channels, out_channels=out_channels)
        self.conv = conv3x3(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.pool(self.act(self.bn(self.conv(x))))
        return pooled


class ResNet9(Module):
    """
    ## The network

    * `num_classes` is the number of outputs; 0 leaves the head out, so the network returns its pooled
      `num_features`-wide feature vector (timm's convention, as for `ResNetClassifier`)
    * `widths` are the channels of the stem and of the three layers
    * `residual` says which of the three layers end in a residual block
    * `img_channels` is the number of channels of the input images
    * `shortcut` is the blocks' shortcut option (see `resnet.make_shortcut`); the blocks keep their
      shape, so `"A"` and `"B"` are both identities, `"C"` projects and `"none"` removes the shortcut
    * `logit_scale` multiplies the output of the fully connected layer; it must be positive
    * `zero_init_residual` starts the last batch norm of each residual branch at zero, so each block
      begins as the identity
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (64, 128, 256, 512),
        residual: Sequence[bool] = (True, False, True),
        *,
        img_channels: int = 3,
        shortcut: Shortcut = "A",
        logit_scale: float = 0.125,
        zero_init_residual: bool = False,
    ):
        super().__init__()
        if len(widths) != 4 or len(residual) != 3:
            raise ValueError(
                f"ResNet9 needs 4 widths (stem and three layers) and 3 residual flags, got "
                f"widths={list(widths)} and residual={list(residual)}"
            )
        check_non_negative(num_classes=num_classes)
        check_positive(
            img_channels=img_channels,
            **{f"widths[{i}]": w for i, w in enumerate(widths)},
        )
        if not logit_scale > 0:
            raise ValueError(f"logit_scale must be a positive number, got {logit_scale!r}")
        self.img_channels = img_channels
        self.logit_scale = float(logit_scale)
        self.stem = ResNetStem(img_channels, widths[0], 3, "cifar", conv_bias=False)
        layers: list[nn.Module] = []
        for in_channels, out_channels, has_block in zip(widths[:-1], widths[1:], residual, strict=True):
            layers.append(ConvPool(in_channels, out_channels))
            if has_block:
                layers.append(
                    ResidualBlock(out_channels, out_channels, 1, shortcut=shortcut, conv_bias=False)
                )
        self.layers = nn.Sequential(*layers)
        if zero_init_residual:
            zero_init_residual_branches(self.layers)
        # One 2x2 max-pool per layer: each output pixel stands for a 2^3 = 8 pixels wide patch of the input.
        self.total_stride = 2 ** (len(widths) - 1)
        self.num_features = widths[-1]
        self.num_classes = num_classes
        self.head: nn.Module = (
            nn.Linear(widths[-1], num_classes, bias=False) if num_classes else nn.Identity()
        )
        # Where each of the three layers ends in `self.layers`: the maps `stage_outputs` returns.
        self.stage_ends = [int(info.module.split(".")[1]) for info in self.feature_info()]

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The map at the end of each layer, the ones [`feature_info`](#ResNet9.feature_info) describes."""
        x = self.stem(check_image_batch(x, self.img_channels, self.total_stride, self.stem.conv.weight.dtype))
        outputs: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.stage_ends:
                outputs.append(x)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last layer's map, `[batch_size, widths[-1], height / 8, width / 8]`."""
        x = check_image_batch(x, self.img_channels, self.total_stride, self.stem.conv.weight.dtype)
        features: torch.Tensor = self.layers(self.stem(x))
        return features

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """
        Max-pools the map over all positions (Page's choice; the paper's networks average), so any image
        size works, then applies the head and the logit scale. `pre_logits=True`, like `num_classes=0`,
        stops after the pooling and returns the `num_features`-wide vector.
        """
        pooled = x.amax(dim=(2, 3))
        if pre_logits or self.num_classes == 0:
            return pooled
        logits: torch.Tensor = self.head(pooled)
        return logits * self.logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        * `x` is a batch of images `[batch_size, img_channels, height, width]`, at least 8 pixels a side

        Returns the logits `[batch_size, num_classes]`.
        """
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The bias-free fully connected head (`nn.Identity` for a network built with `num_classes=0`)."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised head with `num_classes` outputs; 0 removes it."""
        check_non_negative(num_classes=num_classes)
        weight = self.stem.conv.weight
        self.num_classes = num_classes
        self.head = (
            nn.Linear(self.num_features, num_classes, bias=False, device=weight.device, dtype=weight.dtype)
            if num_classes
            else nn.Identity()
        )

    def feature_info(self) -> list[FeatureInfo]:
        """
        The map at the end of each of the three layers (see [`features.py`](features.py)); each layer's
        max-pool halves it.
        """
        info: list[FeatureInfo] = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, ConvPool):
                info.append(FeatureInfo(f"layers.{i}", layer.conv.out_channels, 2 ** (len(info) + 1)))
            else:
                # A residual block keeps the shape and closes the layer its `ConvPool` opened.
                info[-1] = replace(info[-1], module=f"layers.{i}")
        return info


def resnet9(**kwargs: Any) -> ResNet9:
    """The DAWNBench-style ResNet-9 for CIFAR-10 (about 6.6M parameters); see `ResNet9` for the options."""
    return ResNet9(**kwargs)
