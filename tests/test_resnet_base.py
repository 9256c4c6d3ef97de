"""ResNetBase: the stage stack, stems, initialisation and feature maps."""

import pytest
import torch
from torch import nn

import resnet
from resnet import BottleneckResidualBlock, ResidualBlock, ResNetBase


def test_seed_defaults_build_basic_blocks_with_a_7x7_stride_2_stem():
    model = ResNetBase([1, 1], [8, 16])
    assert model.stem.conv.kernel_size == (7, 7) and model.stem.conv.stride == (2, 2)
    assert all(isinstance(block, ResidualBlock) for stage in model.stages for block in stage)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 16)


def test_every_stage_after_the_first_halves_the_map():
    model = ResNetBase([2, 2, 2], [8, 16, 32], stem="cifar", first_kernel_size=3)
    sizes = [tuple(o.shape[1:]) for o in model.stage_outputs(torch.randn(1, 3, 32, 32))]
    assert sizes == [(8, 32, 32), (16, 16, 16), (32, 8, 8)]
    strides = [[block.conv1.stride[0] for block in stage] for stage in model.stages]
    assert strides == [[1, 1], [2, 1], [2, 1]]


@pytest.mark.parametrize(
    "stem, expected", [("seed", [32, 16, 8, 4]), ("cifar", [64, 32, 16, 8]), ("imagenet", [16, 8, 4, 2])]
)
def test_stems_set_the_first_stage_resolution(stem, expected):
    model = ResNetBase([1, 1, 1, 1], [4, 8, 8, 16], stem=stem, first_kernel_size=3)
    sizes = [o.shape[-1] for o in model.stage_outputs(torch.randn(1, 3, 64, 64))]
    assert sizes == expected
    assert model.total_stride == 64 // expected[-1]


@pytest.mark.parametrize(
    "preset, sizes",
    [
        ("resnet20", [32, 16, 8]),
        ("resnet56", [32, 16, 8]),
        ("resnet18", [56, 28, 14, 7]),
        ("resnet50", [56, 28, 14, 7]),
    ],
)
def test_preset_stage_sizes_follow_the_paper(preset, sizes):
    model = resnet.PRESETS[preset]()
    side = 32 if len(sizes) == 3 else 224
    with torch.device("meta"):
        model = model.to("meta")
        outputs = model.trunk.stage_outputs(torch.empty(1, 3, side, side))
    assert [o.shape[-1] for o in outputs] == sizes


def test_bottlenecks_build_bottleneck_blocks_and_stem_width_is_separate():
    model = ResNetBase([1, 2], [32, 64], [8, 16], stem_channels=16)
    blocks = [block for stage in model.stages for block in stage]
    assert all(isinstance(block, BottleneckResidualBlock) for block in blocks)
    assert model.stem.conv.out_channels == 16
    assert blocks[0].conv1.in_channels == 16 and blocks[0].conv2.out_channels == 8
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_stage_outputs_end_with_the_map_forward_pools():
    model = ResNetBase([1, 1], [4, 8], stem="cifar", first_kernel_size=3).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(model(x), model.stage_outputs(x)[-1].mean(dim=(2, 3)))


def test_zero_init_residual_makes_every_block_start_as_identity_plus_relu():
    model = ResNetBase([2], [4], stem="cifar", first_kernel_size=3, zero_init_residual=True).eval()
    assert all(torch.count_nonzero(block.last_norm().weight) == 0 for block in model.stages[0])
    x = torch.randn(1, 3, 8, 8)
    stem = model.stem(x)
    assert torch.allclose(model.stages[0](stem), stem)  # ReLU(0 + ReLU(...)) is the stem output itself


def test_kaiming_init_matches_he_et_al_scale():
    model = ResNetBase([1], [256], stem="cifar", first_kernel_size=3, conv_bias=True)
    conv = model.stages[0][0].conv1
    expected_std = (2 / (conv.out_channels * 9)) ** 0.5
    assert abs(conv.weight.std().item() / expected_std - 1) < 0.05
    assert torch.count_nonzero(conv.bias) == 0
    default = ResNetBase([1], [256], stem="cifar", first_kernel_size=3, kaiming_init=False)
    assert abs(default.stages[0][0].conv1.weight.std().item() / expected_std - 1) > 0.3


def test_gradients_reach_every_parameter():
    for model in (resnet.resnet20(), resnet.ResNetClassifier(ResNetBase([1, 1], [8, 16], [2, 4]), 5)):
        model(torch.randn(4, 3, 32, 32)).sum().backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert missing == []


def test_option_b_with_conv_bias_off_has_no_bias_anywhere():
    model = resnet.resnet18()
    assert not [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
