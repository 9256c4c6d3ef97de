"""
What `resnet.fast` promises: the DAWNBench ResNet-9 has exactly the layers its table lists (checked by
counting parameters from the layer shapes and by matching an independent re-implementation logit for
logit), takes any image of at least 8x8 pixels, refuses bad configurations and inputs with a clear
error, and honours the library's shortcut options and zero-initialised residual branches.
"""

from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resnet
from resnet.fast import ConvPool, ResNet9

DEFAULT_WIDTHS = (64, 128, 256, 512)
DEFAULT_RESIDUAL = (True, False, True)
# Narrow widths keep the tests that do not need the real network fast.
SMALL_WIDTHS = (4, 8, 12, 16)


def expected_parameters(
    widths: Sequence[int],
    num_classes: int,
    residual: Sequence[bool] = DEFAULT_RESIDUAL,
    *,
    img_channels: int = 3,
    projection_shortcuts: bool = False,
) -> int:
    """The parameter count, from the layer shapes: bias-free 3x3 convolutions, BN scale and shift."""

    def conv3x3_bn(in_channels: int, out_channels: int) -> int:
        return 3 * 3 * in_channels * out_channels + 2 * out_channels

    total = conv3x3_bn(img_channels, widths[0])  # stem
    for in_channels, out_channels, has_block in zip(widths[:-1], widths[1:], residual, strict=True):
        total += conv3x3_bn(in_channels, out_channels)  # the widening convolution before the pool
        if has_block:
            total += 2 * conv3x3_bn(out_channels, out_channels)
            if projection_shortcuts:
                # Option C: a bias-free 1x1 convolution and its batch norm.
                total += out_channels * out_channels + 2 * out_channels
    return total + widths[-1] * num_classes  # bias-free linear head


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def residual_blocks(model: ResNet9) -> list[resnet.ResidualBlock]:
    return [m for m in model.modules() if isinstance(m, resnet.ResidualBlock)]


# An independent re-implementation from the architecture's description, for the parity tests. Its
# modules are registered in the same order as ResNet9's, so the state dicts line up by position.


def reference_conv_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)]


class ReferenceResidual(nn.Module):
    def __init__(self, channels: int, with_shortcut: bool):
        super().__init__()
        self.branch = nn.Sequential(
            *reference_conv_bn(channels, channels), nn.ReLU(), *reference_conv_bn(channels, channels)
        )
        self.with_shortcut = with_shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        return F.relu(out + x if self.with_shortcut else out)


class ReferenceResNet9(nn.Module):
    def __init__(
        self, widths: Sequence[int], num_classes: int, residual: Sequence[bool], with_shortcut: bool = True
    ):
        super().__init__()
        body: list[nn.Module] = [*reference_conv_bn(3, widths[0]), nn.ReLU()]
        for i in range(3):
            body += [*reference_conv_bn(widths[i], widths[i + 1]), nn.ReLU(), nn.MaxPool2d(2)]
            if residual[i]:
                body.append(ReferenceResidual(widths[i + 1], with_shortcut))
        self.body = nn.Sequential(*body)
        self.fc = nn.Linear(widths[-1], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_max_pool2d(self.body(x), 1).flatten(1)
        return self.fc(pooled) * 0.125


def randomise_batch_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Give every BN non-trivial statistics and affine parameters, so eval mode tests all of them."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)


def copy_by_position(source: nn.Module, target: nn.Module) -> None:
    source_values = list(source.state_dict().values())
    target_state = target.state_dict()
    assert len(source_values) == len(target_state), "the two networks must have the same tensors"
    for (name, target_value), value in zip(target_state.items(), source_values, strict=True):
        assert target_value.shape == value.shape, name
        target_value.copy_(value)


# ## Parameter count


def test_the_default_network_has_the_parameters_its_layer_table_implies() -> None:
    model = resnet.resnet9()
    assert count(model) == expected_parameters(DEFAULT_WIDTHS, 10)
    # The docstrings' "about 6.6M" is that number, rounded.
    assert round(count(model) / 1e5) == 66


@pytest.mark.parametrize(
    ("widths", "num_classes", "residual"),
    [
        (SMALL_WIDTHS, 7, DEFAULT_RESIDUAL),
        ((8, 8, 16, 32), 100, (False, True, False)),
        ((3, 5, 7, 9), 2, (False, False, False)),
        ((16, 32, 64, 128), 10, (True, True, True)),
    ],
)
def test_the_parameter_count_follows_widths_classes_and_residual_flags(
    widths: tuple[int, ...], num_classes: int, residual: tuple[bool, ...]
) -> None:
    model = ResNet9(num_classes, widths, residual)
    assert count(model) == expected_parameters(widths, num_classes, residual)
    assert len(residual_blocks(model)) == sum(residual)


def test_more_image_channels_widen_only_the_stem() -> None:
    assert count(ResNet9(10, SMALL_WIDTHS, img_channels=1)) == expected_parameters(
        SMALL_WIDTHS, 10, img_channels=1
    )


def test_the_builder_passes_its_options_through_and_is_not_a_paper_preset() -> None:
    model = resnet.resnet9(num_classes=5, widths=SMALL_WIDTHS)
    assert isinstance(model, ResNet9)
    assert count(model) == expected_parameters(SMALL_WIDTHS, 5)
    assert "resnet9" not in resnet.PRESETS


# ## Parity with an independent implementation


@pytest.mark.parametrize(
    ("widths", "residual"),
    [
        (DEFAULT_WIDTHS, DEFAULT_RESIDUAL),
        (SMALL_WIDTHS, (False, True, True)),
    ],
)
def test_logits_match_an_independent_implementation_of_the_architecture(
    widths: tuple[int, ...], residual: tuple[bool, ...]
) -> None:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = ResNet9(10, widths, residual)
    randomise_batch_norms(model, generator)
    reference = ReferenceResNet9(widths, 10, residual)
    copy_by_position(model, reference)
    model.eval()
    reference.eval()
    x = torch.randn(2, 3, 32, 32, generator=generator)
    with torch.no_grad():
        expected = reference(x)
        actual = model(x)
    assert expected.abs().max() > 0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_without_shortcuts_logits_match_a_network_of_relu_of_the_branch() -> None:
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = ResNet9(10, SMALL_WIDTHS, shortcut="none")
    randomise_batch_norms(model, generator)
    reference = ReferenceResNet9(SMALL_WIDTHS, 10, DEFAULT_RESIDUAL, with_shortcut=False)
    copy_by_position(model, reference)
    x = torch.randn(2, 3, 16, 24, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=1e-5, atol=1e-6)
        # And the shortcut matters: the same weights with shortcuts give other logits.
        with_shortcuts = ReferenceResNet9(SMALL_WIDTHS, 10, DEFAULT_RESIDUAL, with_shortcut=True)
        copy_by_position(model, with_shortcuts)
        assert not torch.allclose(with_shortcuts.eval()(x), reference(x))


def test_the_logits_are_the_linear_head_of_the_max_pooled_features_scaled_by_an_eighth() -> None:
    torch.manual_seed(2)
    model = ResNet9(3, SMALL_WIDTHS, logit_scale=0.125).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = model.layers(model.stem(x))
        expected = features.flatten(2).max(dim=2).values @ model.head.weight.T * 0.125
        torch.testing.assert_close(model(x), expected)
        unscaled = ResNet9(3, SMALL_WIDTHS, logit_scale=1.0).eval()
        unscaled.load_state_dict(model.state_dict())
        torch.testing.assert_close(unscaled(x) * 0.125, model(x))


# ## Shapes and bad input


@pytest.mark.parametrize(("height", "width"), [(32, 32), (40, 48), (8, 8), (9, 15)])
def test_any_image_of_at_least_8_pixels_gives_one_logit_per_class(height: int, width: int) -> None:
    model = ResNet9(7, SMALL_WIDTHS).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, height, width)).shape == (2, 7)


def test_the_layers_follow_the_table_64_128_256_512_at_32_16_8_4_pixels() -> None:
    model = resnet.resnet9().eval()
    x = torch.randn(1, 3, 32, 32)
    shapes = []
    with torch.no_grad():
        x = model.stem(x)
        shapes.append(tuple(x.shape[1:]))
        for layer in model.layers:
            x = layer(x)
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [(64, 32, 32), (128, 16, 16), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4)]
    assert [type(layer) for layer in model.layers] == [
        ConvPool,
        resnet.ResidualBlock,
        ConvPool,
        ConvPool,
        resnet.ResidualBlock,
    ]


def test_conv_pool_widens_and_halves_the_map() -> None:
    layer = ConvPool(3, 6)
    assert layer(torch.randn(2, 3, 10, 7)).shape == (2, 6, 5, 3)
    assert layer.conv.bias is None and layer.conv.kernel_size == (3, 3)
    with pytest.raises(ValueError, match="out_channels"):
        ConvPool(3, 0)


@pytest.mark.parametrize(("height", "width"), [(7, 32), (32, 7), (4, 4)])
def test_images_smaller_than_8_pixels_are_refused(height: int, width: int) -> None:
    with pytest.raises(ValueError, match="too small.*at least 8x8"):
        ResNet9(10, SMALL_WIDTHS)(torch.randn(1, 3, height, width))


def test_the_wrong_number_of_channels_is_refused() -> None:
    with pytest.raises(ValueError, match="3 input channels"):
        ResNet9(10, SMALL_WIDTHS)(torch.randn(1, 1, 32, 32))
    assert ResNet9(10, SMALL_WIDTHS, img_channels=1).eval()(torch.randn(1, 1, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(widths=(64, 128, 256)), "4 widths"),
        (dict(widths=(8, 16, 32, 64, 128)), "4 widths"),
        (dict(residual=(True, True)), "3 residual flags"),
        (dict(residual=(True, False, True, False)), "3 residual flags"),
        (dict(widths=(8, 0, 16, 32)), r"widths\[1\]"),
        (dict(widths=(8, 16, 32, -4)), r"widths\[3\]"),
        (dict(num_classes=-1), "num_classes"),
        (dict(img_channels=0), "img_channels"),
        (dict(shortcut="D"), "shortcut"),
    ],
)
def test_bad_configurations_are_refused(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResNet9(**{"widths": SMALL_WIDTHS, **arguments})


def test_a_width_that_is_not_an_int_is_refused() -> None:
    with pytest.raises(TypeError, match=r"widths\[0\]"):
        ResNet9(widths=(8.0, 16, 32, 64))


# ## Shortcut options and zero-initialised branches


def test_zero_init_residual_zeroes_the_last_norm_of_every_block_and_nothing_else() -> None:
    model = ResNet9(10, SMALL_WIDTHS, zero_init_residual=True)
    blocks = residual_blocks(model)
    assert len(blocks) == 2
    last_norms = {id(block.bn2) for block in blocks}
    for block in blocks:
        assert torch.count_nonzero(block.bn2.weight) == 0
    others = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and id(m) not in last_norms]
    assert others and all(torch.all(m.weight != 0) for m in others)
    # The default leaves them at one.
    assert all(torch.all(block.bn2.weight == 1) for block in residual_blocks(ResNet9(10, SMALL_WIDTHS)))


def test_a_zero_initialised_block_starts_as_the_identity_on_non_negative_maps() -> None:
    torch.manual_seed(3)
    block = residual_blocks(ResNet9(10, SMALL_WIDTHS, zero_init_residual=True))[0].eval()
    x = torch.rand(2, SMALL_WIDTHS[1], 6, 6)  # what the ReLU before the block hands it
    with torch.no_grad():
        assert torch.equal(block(x), x)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_option_a_and_b_are_identity_shortcuts(shortcut: str) -> None:
    model = ResNet9(10, SMALL_WIDTHS, shortcut=shortcut)
    assert all(isinstance(block.shortcut, nn.Identity) for block in residual_blocks(model))
    assert count(model) == expected_parameters(SMALL_WIDTHS, 10)


def test_option_c_adds_a_projection_to_every_block() -> None:
    model = ResNet9(10, SMALL_WIDTHS, shortcut="C")
    assert all(isinstance(block.shortcut, resnet.ShortcutProjection) for block in residual_blocks(model))
    assert count(model) == expected_parameters(SMALL_WIDTHS, 10, projection_shortcuts=True)
    assert count(model) > count(ResNet9(10, SMALL_WIDTHS))


def test_option_none_removes_the_shortcut_so_the_block_is_relu_of_its_branch() -> None:
    torch.manual_seed(4)
    model = ResNet9(10, SMALL_WIDTHS, shortcut="none").eval()
    assert count(model) == expected_parameters(SMALL_WIDTHS, 10)
    for block in residual_blocks(model):
        assert block.shortcut is None
        x = torch.randn(2, block.conv1.in_channels, 6, 6)
        with torch.no_grad():
            branch = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
            assert torch.equal(block(x), F.relu(branch))


# ## Compilation


def test_torchscript_matches_eager_and_keeps_the_input_checks() -> None:
    torch.manual_seed(5)
    model = ResNet9(10, SMALL_WIDTHS).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="input channels"):
        scripted(torch.randn(2, 1, 32, 32))


def test_torch_compile_traces_the_whole_network_without_graph_breaks() -> None:
    torch.manual_seed(6)
    model = ResNet9(10, SMALL_WIDTHS).eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
