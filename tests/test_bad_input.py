"""Every misuse gets an error that names what was expected and what was given."""

import pytest
import torch

import resnet
from resnet import BottleneckResidualBlock, ResidualBlock, ResNetBase, ShortcutProjection, ZeroPadShortcut

MODEL = resnet.resnet20()


@pytest.mark.parametrize(
    "x, error, message",
    [
        (torch.randn(3, 32, 32), ValueError, r"4-d image batch \[batch, 3, height, width\].*\[3, 32, 32\]"),
        (torch.randn(2, 1, 32, 32), ValueError, "expected 3 input channels.*with 1"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), TypeError, "floating-point.*torch.uint8"),
        (torch.randn(2, 3, 2, 32), ValueError, "2x32 pixels are too small.*downsamples by 4"),
    ],
)
def test_bad_images_are_rejected_with_a_clear_message(x, error, message):
    with pytest.raises(error, match=message):
        MODEL(x)


def test_imagenet_preset_needs_32_pixels():
    with pytest.raises(ValueError, match="at least 32x32"):
        resnet.resnet18()(torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize(
    "build, error, message",
    [
        (lambda: ResNetBase([1, 1], [8]), ValueError, r"len\(n_blocks\) == 2 but len\(n_channels\) == 1"),
        (
            lambda: ResNetBase([1], [8], [2, 2]),
            ValueError,
            r"len\(n_channels\) == 1 but len\(bottlenecks\) == 2",
        ),
        (lambda: ResNetBase([], []), ValueError, "at least one stage"),
        (lambda: ResNetBase(2, [8]), TypeError, "n_blocks must be a list"),
        (lambda: ResNetBase([1, 0], [8, 16]), ValueError, r"n_blocks\[1\] must be a positive int, got 0"),
        (lambda: ResNetBase([1], [-8]), ValueError, r"n_channels\[0\] must be a positive int, got -8"),
        (lambda: ResNetBase([1.5], [8]), TypeError, r"n_blocks\[0\] must be a positive int, got 1.5"),
        (lambda: ResNetBase([1], [8], img_channels=0), ValueError, "img_channels must be a positive int"),
        (lambda: ResNetBase([1], [8], stem_channels=0), ValueError, "stem_channels must be a positive int"),
        (lambda: ResNetBase([1], [8], shortcut="D"), ValueError, "unknown shortcut 'D'; expected one of 'A'"),
        (lambda: ResNetBase([1], [8], stem="tiny"), ValueError, "unknown stem 'tiny'"),
        (lambda: ResidualBlock(4, 8, 0), ValueError, "stride must be a positive int, got 0"),
        (lambda: ResidualBlock(4, 8, 1, shortcut="a"), ValueError, "unknown shortcut 'a'"),
        (lambda: BottleneckResidualBlock(4, 0, 8, 1), ValueError, "bottleneck_channels must be a positive"),
        (lambda: ShortcutProjection(4, True, 1), TypeError, "out_channels must be a positive int, got True"),
        (lambda: ZeroPadShortcut(8, 4, 1), ValueError, "can only add channels.*shortcut='B'"),
        (lambda: resnet.resnet20(num_classes=0), ValueError, "num_classes must be a positive int"),
        (lambda: resnet.resnet56(shortcut="plain"), ValueError, "unknown shortcut 'plain'"),
    ],
)
def test_inconsistent_configurations_are_rejected(build, error, message):
    with pytest.raises(error, match=message):
        build()
