"""What the shortcuts and blocks promise, checked on small tensors."""

import pytest
import torch
from labml_helpers.module import Module as LabmlModule
from torch import nn

import resnet
from resnet import BottleneckResidualBlock, ResidualBlock, ShortcutProjection, ZeroPadShortcut, make_shortcut


def test_every_public_module_is_a_labml_helpers_module():
    for module in (
        ShortcutProjection(4, 8, 2),
        ZeroPadShortcut(4, 8, 2),
        ResidualBlock(4, 4, 1),
        BottleneckResidualBlock(8, 2, 8, 1),
        resnet.resnet20(),
    ):
        assert isinstance(module, LabmlModule)


def test_seed_positional_signatures_still_work():
    assert ShortcutProjection(3, 6, 2).conv.stride == (2, 2)
    assert ResidualBlock(3, 6, 2).conv1.out_channels == 6
    block = BottleneckResidualBlock(8, 2, 16, 2)
    assert (block.conv1.out_channels, block.conv3.out_channels, block.conv2.stride) == (2, 16, (2, 2))
    # The seed's convolutions keep PyTorch's default bias.
    assert block.conv1.bias is not None


def test_projection_shortcut_is_conv_then_batch_norm():
    projection = ShortcutProjection(3, 6, 2, conv_bias=False).eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(projection(x), projection.bn(projection.conv(x)))
    assert projection(x).shape == (2, 6, 4, 4)
    assert projection.conv.bias is None


def test_option_a_has_no_parameters_and_matches_its_definition():
    shortcut = ZeroPadShortcut(2, 4, 2)
    assert list(shortcut.parameters()) == [] and list(shortcut.buffers()) == []
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    # Hand-computed: keep rows and columns 0 and 2 of each channel, then two channels of zeros.
    expected = torch.tensor(
        [
            [
                [[0.0, 2.0], [8.0, 10.0]],
                [[16.0, 18.0], [24.0, 26.0]],
                [[0.0, 0.0], [0.0, 0.0]],
                [[0.0, 0.0], [0.0, 0.0]],
            ]
        ]
    )
    assert torch.equal(shortcut(x), expected)


def test_option_a_with_stride_one_only_pads_channels():
    x = torch.randn(2, 3, 5, 5)
    out = ZeroPadShortcut(3, 5, 1)(x)
    assert torch.equal(out[:, :3], x) and torch.count_nonzero(out[:, 3:]) == 0


@pytest.mark.parametrize(
    "option, reshapes, expected",
    [
        ("A", False, nn.Identity),
        ("A", True, ZeroPadShortcut),
        ("B", False, nn.Identity),
        ("B", True, ShortcutProjection),
        ("C", False, ShortcutProjection),
        ("C", True, ShortcutProjection),
    ],
)
def test_make_shortcut_follows_the_papers_options(option, reshapes, expected):
    shortcut = make_shortcut(option, 4, 8 if reshapes else 4, 2 if reshapes else 1, conv_bias=False)
    assert type(shortcut) is expected


def test_shortcut_none_builds_plain_blocks():
    block = ResidualBlock(4, 4, 1, shortcut="none").eval()
    assert block.shortcut is None
    x = torch.randn(2, 4, 6, 6)
    plain = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))
    assert torch.allclose(block(x), plain)
    bottleneck = BottleneckResidualBlock(8, 2, 8, 1, shortcut="none")
    assert bottleneck.shortcut is None


@pytest.mark.parametrize("block", [ResidualBlock(6, 6, 1), BottleneckResidualBlock(6, 2, 6, 1)])
def test_block_adds_the_input_back_before_the_last_relu(block):
    block.eval()
    nn.init.zeros_(block.last_norm().weight)
    nn.init.zeros_(block.last_norm().bias)
    x = torch.randn(2, 6, 5, 5)
    # With a silenced residual branch F(x) = 0, the block computes ReLU(x).
    assert torch.allclose(block(x), torch.relu(x))


@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
def test_strided_blocks_halve_the_map_and_change_width(shortcut):
    x = torch.randn(2, 4, 8, 8)
    assert ResidualBlock(4, 8, 2, shortcut=shortcut)(x).shape == (2, 8, 4, 4)
    assert BottleneckResidualBlock(4, 2, 8, 2, shortcut=shortcut)(x).shape == (2, 8, 4, 4)


def test_bottleneck_puts_the_stride_on_the_3x3_convolution():
    block = BottleneckResidualBlock(8, 4, 16, 2)
    assert (block.conv1.stride, block.conv2.stride, block.conv3.stride) == ((1, 1), (2, 2), (1, 1))
