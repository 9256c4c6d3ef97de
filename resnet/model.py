"""
# Deep Residual Learning for Image Recognition

This module is an annotated PyTorch implementation of
[Deep Residual Learning for Image Recognition](https://arxiv.org/abs/1512.03385)
(He, Zhang, Ren and Sun, 2015). Read it from top to bottom: it follows the paper from the idea of
residual learning, through the shortcut connections and the two kinds of block, to the stack of stages
and the exact networks of the paper's tables.

## The degradation problem

Stacking more layers should never hurt a network: a deeper model could copy a shallower one and set its
extra layers to the identity. In practice it does hurt. Past a certain depth a *plain* network (layers
simply stacked) reaches a **higher training error** than a shallower one (§1, Figure 1). This is not
overfitting, because the training error itself goes up; the optimiser just fails to find the identity
solution for the extra layers. The paper calls this the *degradation problem*.

The paper shows it on CIFAR-10 in its Figure 6, which this library reproduces
(`experiments/degradation.py`, all 50,000 training images, the paper's widths). On the left, plain
networks of 20 to 56 layers: each deeper one ends with a *higher* training error (thin dashed lines),
and its test error (bold) follows. On the right, the same networks with the shortcuts this module
builds: now depth lowers both. RESULTS.md has the runs, their commands and their numbers.

![Figure 6 reproduced: deeper plain networks train worse, residual ones better](figures/figure6_cifar10.png)

## Residual learning

Let $\\mathcal{H}(x)$ be the mapping a few stacked layers should learn. Instead of asking those layers to
fit $\\mathcal{H}(x)$ directly, a residual network asks them to fit the *residual*

$$\\mathcal{F}(x) = \\mathcal{H}(x) - x$$

and adds the input back, so that the block computes $\\mathcal{F}(x) + x$ (§3.1). If the identity is the
best thing a block can do, the layers only need to push $\\mathcal{F}(x)$ towards zero, which is far easier
for a solver than building an identity out of convolutions and non-linearities.

With weights $\\{W_i\\}$ in the residual branch a block computes (§3.2, Eq. 1)

$$y = \\mathcal{F}(x, \\{W_i\\}) + x.$$

When $\\mathcal{F}(x)$ changes the shape (fewer pixels, more channels) the shortcut must change shape too.
The paper's general form (Eq. 2) applies a linear map $W_s$ to the shortcut:

$$y = \\mathcal{F}(x, \\{W_i\\}) + W_s x.$$

$\\mathcal{F}$ needs at least two layers: with one layer, $W_1 x + x$ is still a linear map, and the
shortcut would buy nothing.

Everything the CIFAR-10 trainer in `experiments/cifar10.py` trains is built from the modules below. They
derive from a labml-helpers `Module` (see [`module.py`](module.py)) so that they fit labml experiments.
"""

from dataclasses import replace
from typing import Any, Literal

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from resnet.checks import (
    check_choice,
    check_image_batch,
    check_non_negative,
    check_positive,
    check_same_length,
)
from resnet.features import FeatureInfo
from resnet.module import Module

# The paper's three shortcut options A, B and C (§3.3, §4.1), plus `"none"` for the plain networks that
# show the degradation problem.
Shortcut = Literal["A", "B", "C", "none"]
SHORTCUTS: tuple[str, ...] = ("A", "B", "C", "none")
Stem = Literal["seed", "cifar", "imagenet"]
STEMS: tuple[str, ...] = ("seed", "cifar", "imagenet")


def conv3x3(in_channels: int, out_channels: int, stride: int, bias: bool) -> nn.Conv2d:
    """A $3 \\times 3$ convolution whose padding keeps the map size, up to the stride."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=bias)


class ShortcutProjection(Module):
    """
    ## Projection shortcut ($W_s x$)

    A $1 \\times 1$ convolution learns $W_s$ of Eq. 2, mixing the input channels into the output ones.
    It uses the same stride as the residual branch, so both sides of the sum see the same map size.
    §3.4 puts batch normalisation after every convolution, and this one is no exception: it puts the
    shortcut on the same scale as the normalised branch it is added to.

    * `in_channels` is the number of channels of $x$
    * `out_channels` is the number of channels of $\\mathcal{F}(x, \\{W_i\\})$
    * `stride` is the stride of the residual branch, repeated here to match the map size
    * `conv_bias` gives the convolution a bias. The bias is redundant in front of batch norm, which
      subtracts the mean; the presets leave it out, as the paper does, while the default keeps
      PyTorch's (and labml's original) behaviour.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, *, conv_bias: bool = True):
        super().__init__()
        check_positive(in_channels=in_channels, out_channels=out_channels, stride=stride)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=conv_bias)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # $W_s x$, normalised; no ReLU, because the sum it joins is rectified once, after the addition.
        projected: torch.Tensor = self.bn(self.conv(x))
        return projected


class ZeroPadShortcut(Module):
    """
    ## Zero-padding shortcut (option A)

    Option A keeps the shortcut free of parameters even where the shape changes: it takes every
    `stride`-th pixel, which matches the positions a strided convolution reads, and appends zero-valued
    channels until the width matches. Table 3 puts its cost on ImageNet at about half a point of top-1
    error against projections (ResNet-34: 25.03% for A, 24.52% for B), because the padded channels
    carry no residual learning. On CIFAR-10, where every parameter counts, the paper uses option A for
    all its results (§4.2).

    This is a real module rather than a lambda, so models that use it can be pickled, scripted and
    exported.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        check_positive(in_channels=in_channels, out_channels=out_channels, stride=stride)
        if out_channels < in_channels:
            raise ValueError(
                f"ZeroPadShortcut can only add channels, but out_channels={out_channels} is "
                f"less than in_channels={in_channels}; use a projection (shortcut='B') "
                f"to reduce the width"
            )
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Keep the pixels the branch's strided convolution is centred on, so both sides of the sum describe
        # the same places in the image.
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # The new channels are zeros: the shortcut still carries $x$ unchanged in the old ones, and adds
        # nothing a weight would have to learn. `F.pad` reads its widths from the last dimension backwards:
        # (W, W, H, H, C before, C after).
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))


def make_shortcut(
    shortcut: str, in_channels: int, out_channels: int, stride: int, *, conv_bias: bool
) -> nn.Module | None:
    """
    ## Choosing the shortcut

    ![Shortcut options A, B and C](figures/shortcut_options.svg)

    This is the one place that decides what a block adds back (§3.3 and §4.1):

    | option | shape unchanged | shape changes |
    |---|---|---|
    | `"A"` | identity | subsample + zero-pad ([`ZeroPadShortcut`](#ZeroPadShortcut)) |
    | `"B"` | identity | projection ([`ShortcutProjection`](#ShortcutProjection)) |
    | `"C"` | projection | projection |
    | `"none"` | no shortcut: a plain block | no shortcut |

    Table 3 finds C only marginally better than B (24.19% against 24.52% top-1 on ResNet-34) for many
    more parameters, and concludes projections are not essential; B is the usual choice on ImageNet.
    """
    check_choice("shortcut", shortcut, SHORTCUTS)
    if shortcut == "none":
        return None
    reshapes = stride != 1 or in_channels != out_channels
    if shortcut == "C" or (shortcut == "B" and reshapes):
        return ShortcutProjection(in_channels, out_channels, stride, conv_bias=conv_bias)
    if shortcut == "A" and reshapes:
        return ZeroPadShortcut(in_channels, out_channels, stride)
    return nn.Identity()


class ResidualBlock(Module):
    """
    ## Residual block

    ![Basic residual block](figures/basic_block.svg)

    The "basic" block of Figure 2 and Table 1: two $3 \\times 3$ convolutions, each followed by batch
    normalisation (§3.4: BN right after each convolution, before the activation). The first convolution
    carries the stride and the change of width; the second keeps both. The shortcut is added before the
    last ReLU, so the block's output is $\\mathrm{ReLU}(\\mathcal{F}(x) + x)$.

    * `in_channels` is the number of channels of $x$
    * `out_channels` is the width of the block's output
    * `stride` is the stride of the first convolution; 2 halves the feature map
    * `shortcut` is the shortcut option, see [`make_shortcut`](#make_shortcut)
    * `conv_bias` gives the convolutions a bias (see [`ShortcutProjection`](#ShortcutProjection))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        *,
        shortcut: Shortcut = "B",
        conv_bias: bool = True,
    ):
        super().__init__()
        check_positive(in_channels=in_channels, out_channels=out_channels, stride=stride)
        self.conv1 = conv3x3(in_channels, out_channels, stride, conv_bias)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels, 1, conv_bias)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride, conv_bias=conv_bias)
        self.act2 = nn.ReLU(inplace=True)

    def last_norm(self) -> nn.BatchNorm2d:
        """The batch norm that closes the residual branch $\\mathcal{F}$."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The first layer of $\mathcal{F}$. It alone may change the shape: its stride shrinks the map and
        # its `out_channels` widen it.
        out = self.act1(self.bn1(self.conv1(x)))
        # The second layer stops at batch norm: no ReLU yet, so $\mathcal{F}(x)$ can be negative and pull
        # the sum below $x$ as well as above it.
        out = self.bn2(self.conv2(out))
        # Eq. 1, $\mathcal{F}(x) + x$, or Eq. 2, $\mathcal{F}(x) + W_s x$, whichever shortcut
        # `make_shortcut` chose. A plain block (`shortcut="none"`) has only $\mathcal{F}(x)$.
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        # The block's second non-linearity comes after the addition (Figure 2).
        y: torch.Tensor = self.act2(out)
        return y


class BottleneckResidualBlock(Module):
    """
    ## Bottleneck residual block

    ![Bottleneck block](figures/bottleneck_block.svg)

    For the 50-, 101- and 152-layer networks the paper swaps the basic block for a *bottleneck*
    (§4.1, "Deeper Bottleneck Architectures", Figure 5): a $1 \\times 1$ convolution shrinks the width to
    `bottleneck_channels`, a $3 \\times 3$ convolution works in that narrow space, and a second
    $1 \\times 1$ convolution widens it again to `out_channels` (four times the bottleneck in the paper).
    The expensive $3 \\times 3$ convolution then runs on a quarter of the channels, so a bottleneck block
    costs about as much as a basic one but has three layers where the basic block has two. Swapping one
    for the other makes the network one and a half times as deep for about the same cost: ResNet-34 and
    ResNet-50 have the same 16 blocks, and 3.6 against 3.8 billion FLOPs (Table 1).

    The stride sits on the $3 \\times 3$ convolution, not on the first $1 \\times 1$ as in the paper's
    original Caffe models. A strided $1 \\times 1$ convolution simply skips three quarters of the pixels;
    moving the stride to the $3 \\times 3$ convolution lets every input pixel contribute. This is the
    variant torchvision calls "ResNet V1.5" and the one whose weights we convert.

    The shortcut is identity or projection as decided by [`make_shortcut`](#make_shortcut); identity
    shortcuts matter most here, since a projection between the wide ends would double the block's cost.

    * `in_channels` is the number of channels of $x$
    * `bottleneck_channels` is the width of the $3 \\times 3$ convolution
    * `out_channels` is the width of the block's output
    * `stride` is the stride of the $3 \\times 3$ convolution
    """

    def __init__(
        self,
        in_channels: int,
        bottleneck_channels: int,
        out_channels: int,
        stride: int,
        *,
        shortcut: Shortcut = "B",
        conv_bias: bool = True,
    ):
        super().__init__()
        check_positive(
            in_channels=in_channels,
            bottleneck_channels=bottleneck_channels,
            out_channels=out_channels,
            stride=stride,
        )
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, kernel_size=1, bias=conv_bias)
        self.bn1 = nn.BatchNorm2d(bottleneck_channels)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(bottleneck_channels, bottleneck_channels, stride, conv_bias)
        self.bn2 = nn.BatchNorm2d(bottleneck_channels)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=conv_bias)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = make_shortcut(shortcut, in_channels, out_channels, stride, conv_bias=conv_bias)
        self.act3 = nn.ReLU(inplace=True)

    def last_norm(self) -> nn.BatchNorm2d:
        """The batch norm that closes the residual branch $\\mathcal{F}$."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # $1 \times 1$: squeeze the width down to `bottleneck_channels`.
        out = self.act1(self.bn1(self.conv1(x)))
        # $3 \times 3$ in the narrow space, where it is cheap; it carries the stage's stride.
        out = self.act2(self.bn2(self.conv2(out)))
        # $1 \times 1$: back out to `out_channels`, and, as in the basic block, no ReLU before the sum.
        out = self.bn3(self.conv3(out))
        # $\mathcal{F}(x)$ plus the shortcut (identity or projection), unless the block is plain.
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        # Rectify the sum, as the basic block does.
        y: torch.Tensor = self.act3(out)
        return y


class ResNetStem(Module):
    """
    ## The stem

    Before the first residual block a single convolution turns the image into feature maps. Three
    stems are on offer:

    * `"seed"`: a `kernel_size` convolution with stride 2, as in labml's original implementation. We
      follow it with a ReLU, which labml's version lacks; §3.3 puts an activation after every
      convolution-plus-batch-norm except where a shortcut is added.
    * `"cifar"`: a `kernel_size` (3 in the paper) convolution with stride 1 (§4.2). CIFAR images are only
      $32 \\times 32$, so the stem keeps every pixel.
    * `"imagenet"`: a $7 \\times 7$ (`kernel_size`) convolution with stride 2, then a $3 \\times 3$
      max-pool with stride 2 (Table 1, "conv1" and the start of "conv2_x"): a $224 \\times 224$ image
      becomes $56 \\times 56$ maps before the first block.
    """

    def __init__(self, img_channels: int, out_channels: int, kernel_size: int, stem: Stem, conv_bias: bool):
        super().__init__()
        check_choice("stem", stem, STEMS)
        stride = 1 if stem == "cifar" else 2
        self.conv = nn.Conv2d(
            img_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=conv_bias,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        self.stride = stride * (2 if stem == "imagenet" else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Convolution, batch norm and ReLU like every other layer; the max-pool is `nn.Identity` except on
        # the ImageNet stem.
        maps: torch.Tensor = self.pool(self.act(self.bn(self.conv(x))))
        return maps


def zero_init_residual_branches(module: nn.Module) -> None:
    """
    Set the scale of the last batch norm of every residual block inside `module` to zero: each branch
    $\\mathcal{F}$ then starts as 0 and each block as the identity (up to its last ReLU).
    """
    for block in module.modules():
        if isinstance(block, (ResidualBlock, BottleneckResidualBlock)):
            nn.init.zeros_(block.last_norm().weight)


class ResNetBase(Module):
    """
    ## The residual network

    A ResNet is a stem, then *stages* of residual blocks, then global average pooling (§3.3, Table 1).
    Within a stage every block keeps the map size and the width. Each new stage halves the map and
    widens the network; the paper's rule for plain networks (§3.3) is to double the filters when the map
    halves, so that every layer costs about the same number of operations. This class returns the pooled
    vector; [`ResNetClassifier`](#ResNetClassifier) puts the linear classifier on top.

    * `n_blocks` is the number of blocks in each stage
    * `n_channels` is the output width of each stage
    * `bottlenecks` is the bottleneck width of each stage; `None` builds basic
      [`ResidualBlock`](#ResidualBlock)s, a list builds [`BottleneckResidualBlock`](#BottleneckResidualBlock)s
    * `img_channels` is the number of channels of the input images
    * `first_kernel_size` is the kernel size of the stem convolution

    and, keyword-only:

    * `shortcut` is the shortcut option for every block, see [`make_shortcut`](#make_shortcut)
    * `stem` is the stem, see [`ResNetStem`](#ResNetStem)
    * `stem_channels` is the stem's width. It defaults to `n_channels[0]`, which is all the basic-block
      networks need; bottleneck networks feed a 64-wide stem into a 256-wide first stage.
    * `conv_bias` gives every convolution a bias
    * `zero_init_residual` starts the last batch norm of every residual branch at zero, so every block
      starts as the identity (Goyal et al., 2017, "Accurate, Large Minibatch SGD"); it helps large-batch
      training
    * `kaiming_init` initialises convolutions as in He et al. (2015),
      ["Delving Deep into Rectifiers"](https://arxiv.org/abs/1502.01852),
      which the paper uses (§3.4) and which keeps the signal's scale steady through the ReLUs
    """

    def __init__(
        self,
        n_blocks: list[int],
        n_channels: list[int],
        bottlenecks: list[int] | None = None,
        img_channels: int = 3,
        first_kernel_size: int = 7,
        *,
        shortcut: Shortcut = "B",
        stem: Stem = "seed",
        stem_channels: int | None = None,
        conv_bias: bool = True,
        zero_init_residual: bool = False,
        kaiming_init: bool = True,
    ):
        super().__init__()
        check_same_length(n_blocks=n_blocks, n_channels=n_channels)
        if bottlenecks is not None:
            check_same_length(n_channels=n_channels, bottlenecks=bottlenecks)
        check_positive(
            img_channels=img_channels,
            first_kernel_size=first_kernel_size,
            stem_channels=stem_channels if stem_channels is not None else 1,
            **{f"n_blocks[{i}]": n for i, n in enumerate(n_blocks)},
            **{f"n_channels[{i}]": c for i, c in enumerate(n_channels)},
            **{f"bottlenecks[{i}]": b for i, b in enumerate(bottlenecks or [])},
        )
        check_choice("shortcut", shortcut, SHORTCUTS)
        self.img_channels = img_channels
        self.stage_channels = tuple(n_channels)
        self.out_channels = n_channels[-1]

        in_channels = stem_channels or n_channels[0]
        self.stem = ResNetStem(img_channels, in_channels, first_kernel_size, stem, conv_bias)

        stages = []
        for i, (blocks, channels) in enumerate(zip(n_blocks, n_channels, strict=True)):
            # §3.3 and §4.2: the first block of every stage after the first halves the map with stride 2.
            # The first stage keeps the map the stem made. (labml's original gives stride 2 to the very
            # first block only, so its later stages never downsample; we follow the paper.)
            strides = [1 if i == 0 else 2] + [1] * (blocks - 1)
            stage: list[nn.Module] = []
            for stride in strides:
                if bottlenecks is None:
                    stage.append(
                        ResidualBlock(in_channels, channels, stride, shortcut=shortcut, conv_bias=conv_bias)
                    )
                else:
                    stage.append(
                        BottleneckResidualBlock(
                            in_channels,
                            bottlenecks[i],
                            channels,
                            stride,
                            shortcut=shortcut,
                            conv_bias=conv_bias,
                        )
                    )
                in_channels = channels
            stages.append(nn.Sequential(*stage))
        self.stages = nn.ModuleList(stages)

        # How many input pixels one pixel of the last feature map stands for; inputs smaller than this
        # would leave the last stages looking at padding only.
        self.total_stride = self.stem.stride * 2 ** (len(n_blocks) - 1)

        if kaiming_init:
            self._kaiming_init()
        if zero_init_residual:
            zero_init_residual_branches(self)

    def _kaiming_init(self) -> None:
        # "fan_out" keeps the gradients' scale steady in the backward pass; He et al. (2015),
        # [Delving Deep into Rectifiers, §2.2](https://arxiv.org/abs/1502.01852), show that either
        # direction is enough for very deep rectifier networks to converge.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """
        The feature map after each stage, highest resolution first: the multi-scale features detection
        and segmentation heads (feature pyramids, U-Nets) attach to.
        """
        # Refuse a wrong batch here, in one line, rather than as a shape error deep inside a convolution.
        x = check_image_batch(x, self.img_channels, self.total_stride, self.stem.conv.weight.dtype)
        # From pixels to the first stage's width (and, for ImageNet, a quarter of the resolution).
        x = self.stem(x)
        outputs: list[torch.Tensor] = []
        # Each stage halves the map in its first block (except the first stage) and keeps it after.
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def feature_info(self) -> list[FeatureInfo]:
        """
        The width and scale of each map `stage_outputs` returns (see [`features.py`](features.py)),
        known without running the network: every stage after the first halves the map.
        """
        return [
            FeatureInfo(f"stages.{i}", channels, self.stem.stride * 2**i)
            for i, channels in enumerate(self.stage_channels)
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map, `[batch_size, n_channels[-1], height / stride, width / stride]`."""
        return self.stage_outputs(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        * `x` is a batch of images of shape `[batch_size, img_channels, height, width]`

        Returns the globally average-pooled features, `[batch_size, n_channels[-1]]`.
        """
        # Global average pooling (§3.3): one number per channel, whatever the map's size, so the network
        # accepts any image size, and no weights to learn, unlike the large fully connected layers of VGG.
        return self.forward_features(x).mean(dim=(2, 3))


class ResNetClassifier(Module):
    """
    ## Classifier

    The trunk's pooled features go through one fully-connected layer to the class scores (§3.3: "a
    global average pooling layer and a 1000-way fully-connected layer with softmax"). The softmax lives
    in the loss, so the model returns logits.

    The methods follow timm's model interface, so code written for timm's networks runs on these:
    `forward_features` gives the last unpooled map, `forward_head` pools it and classifies
    (`pre_logits=True` stops after the pooling), and `num_classes=0` or `reset_classifier(0)` leaves
    the head out, so the network returns its `num_features`-wide pooled feature vector.
    """

    def __init__(self, trunk: ResNetBase, num_classes: int):
        super().__init__()
        check_non_negative(num_classes=num_classes)
        self.trunk = trunk
        self.num_features = trunk.out_channels
        self.num_classes = num_classes
        self.head: nn.Module = nn.Linear(trunk.out_channels, num_classes) if num_classes else nn.Identity()

    def feature_info(self) -> list[FeatureInfo]:
        """The trunk's [`feature_info`](#ResNetBase.feature_info), with module names from here."""
        return [replace(info, module=f"trunk.{info.module}") for info in self.trunk.feature_info()]

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's [`stage_outputs`](#ResNetBase.stage_outputs)."""
        return self.trunk.stage_outputs(x)

    def get_classifier(self) -> nn.Module:
        """The fully connected head (`nn.Identity` for a network built with `num_classes=0`)."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised head with `num_classes` outputs; 0 removes it."""
        check_non_negative(num_classes=num_classes)
        weight = self.trunk.stem.conv.weight
        self.num_classes = num_classes
        self.head = (
            nn.Linear(self.num_features, num_classes, device=weight.device, dtype=weight.dtype)
            if num_classes
            else nn.Identity()
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """
        * `x` is the map `forward_features` returns
        * `pre_logits` stops after the pooling and returns the `num_features`-wide vector
        """
        # Global average pooling, as in the trunk's `forward`.
        pooled = x.mean(dim=(2, 3))
        if pre_logits:
            return pooled
        # One linear map to the class scores; the softmax is left to the loss.
        logits: torch.Tensor = self.head(pooled)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The trunk's last map, then the head: the same as `self.head(self.trunk(x))`, split where timm's
        # interface splits it.
        return self.forward_head(self.forward_features(x))


def cifar_resnet(
    n: int, *, num_classes: int = 10, shortcut: Shortcut = "A", **kwargs: Any
) -> ResNetClassifier:
    """
    ## The CIFAR-10 networks (§4.2)

    $6n + 2$ weighted layers: a $3 \\times 3$ stem, three stages of $n$ basic blocks (two layers each)
    with 16, 32 and 64 filters on $32 \\times 32$, $16 \\times 16$ and $8 \\times 8$ maps, and the
    classifier. Option A shortcuts throughout, so residual and plain networks have exactly the same
    parameters. `shortcut="none"` gives the paper's plain networks.

    Extra keyword arguments go to [`ResNetBase`](#ResNetBase).
    """
    check_positive(n=n)
    trunk = ResNetBase(
        [n, n, n],
        [16, 32, 64],
        first_kernel_size=3,
        stem="cifar",
        shortcut=shortcut,
        conv_bias=False,
        **kwargs,
    )
    return ResNetClassifier(trunk, num_classes)


def imagenet_resnet(
    n_blocks: list[int], bottleneck: bool, *, num_classes: int = 1000, shortcut: Shortcut = "B", **kwargs: Any
) -> ResNetClassifier:
    """
    ## The ImageNet networks (Table 1)

    A $7 \\times 7$ stem with max-pool, then four stages on $56, 28, 14, 7$ pixel maps. Basic-block
    networks use widths 64, 128, 256, 512; bottleneck networks use those as bottleneck widths and four
    times as many output channels. Option B shortcuts, as in the paper's Table 1 models.
    """
    widths = [64, 128, 256, 512]
    trunk = ResNetBase(
        n_blocks,
        [4 * w for w in widths] if bottleneck else widths,
        widths if bottleneck else None,
        first_kernel_size=7,
        stem="imagenet",
        stem_channels=64,
        shortcut=shortcut,
        conv_bias=False,
        **kwargs,
    )
    return ResNetClassifier(trunk, num_classes)


# ### Presets
#
# The depths of Table 6 (CIFAR-10) and Table 1 (ImageNet). Their parameter counts (tested exactly):
# 0.27M, 0.46M, 0.66M, 0.85M, 1.7M and 19.4M for the CIFAR networks, as in Table 6; 11.7M, 21.8M,
# 25.6M, 44.5M and 60.2M for the ImageNet ones, the same as torchvision's.


def resnet20(**kwargs: Any) -> ResNetClassifier:
    """ResNet-20 (CIFAR-10, $n = 3$): 8.75% test error in Table 6."""
    return cifar_resnet(3, **kwargs)


def resnet32(**kwargs: Any) -> ResNetClassifier:
    """ResNet-32 (CIFAR-10, $n = 5$): 7.51% test error in Table 6."""
    return cifar_resnet(5, **kwargs)


def resnet44(**kwargs: Any) -> ResNetClassifier:
    """ResNet-44 (CIFAR-10, $n = 7$): 7.17% test error in Table 6."""
    return cifar_resnet(7, **kwargs)


def resnet56(**kwargs: Any) -> ResNetClassifier:
    """ResNet-56 (CIFAR-10, $n = 9$): 6.97% test error in Table 6."""
    return cifar_resnet(9, **kwargs)


def resnet110(**kwargs: Any) -> ResNetClassifier:
    """ResNet-110 (CIFAR-10, $n = 18$): 6.43% best, 6.61±0.16% over 5 runs in Table 6."""
    return cifar_resnet(18, **kwargs)


def resnet1202(**kwargs: Any) -> ResNetClassifier:
    """ResNet-1202 (CIFAR-10, $n = 200$): 7.93% in Table 6, worse than ResNet-110 through overfitting."""
    return cifar_resnet(200, **kwargs)


def resnet18(**kwargs: Any) -> ResNetClassifier:
    """ResNet-18 (ImageNet, basic blocks [2, 2, 2, 2])."""
    return imagenet_resnet([2, 2, 2, 2], bottleneck=False, **kwargs)


def resnet34(**kwargs: Any) -> ResNetClassifier:
    """ResNet-34 (ImageNet, basic blocks [3, 4, 6, 3]): 24.52% top-1 (10-crop, option B) in Table 3."""
    return imagenet_resnet([3, 4, 6, 3], bottleneck=False, **kwargs)


def resnet50(**kwargs: Any) -> ResNetClassifier:
    """ResNet-50 (ImageNet, bottleneck blocks [3, 4, 6, 3]): 22.85% top-1 in Table 3."""
    return imagenet_resnet([3, 4, 6, 3], bottleneck=True, **kwargs)


def resnet101(**kwargs: Any) -> ResNetClassifier:
    """ResNet-101 (ImageNet, bottleneck blocks [3, 4, 23, 3]): 21.75% top-1 in Table 3."""
    return imagenet_resnet([3, 4, 23, 3], bottleneck=True, **kwargs)


def resnet152(**kwargs: Any) -> ResNetClassifier:
    """ResNet-152 (ImageNet, bottleneck blocks [3, 8, 36, 3]): 21.43% top-1 in Table 3."""
    return imagenet_resnet([3, 8, 36, 3], bottleneck=True, **kwargs)


# The paper's eleven networks by name. Where to go next: [`fast.py`](fast.py) builds a network from
# outside the paper, the wide and shallow ResNet-9 that fast CIFAR-10 training uses, out of the same
# `ResidualBlock`; [`registry.py`](registry.py) gives every network the trainer trains a name, for
# `resnet.create_model` and `torch.hub`.
PRESETS = {
    preset.__name__: preset
    for preset in (
        resnet20,
        resnet32,
        resnet44,
        resnet56,
        resnet110,
        resnet1202,
        resnet18,
        resnet34,
        resnet50,
        resnet101,
        resnet152,
    )
}

# `torch.fx` records the input check as one call instead of tracing into it (see `checks.py`), so the
# networks trace, for feature extraction among others, and the traced graph still checks its input. The
# mark applies to this module's name for the function, so it has to be made here.
torch.fx.wrap("check_image_batch")
