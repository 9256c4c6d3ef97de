"""Every misuse gets an error that names what was expected and what was given."""

import numpy as np
import pytest
import torch

import resnet
from resnet import BottleneckResidualBlock, ResidualBlock, ResNetBase, ShortcutProjection, ZeroPadShortcut
from resnet.checks import check_hwc_uint8_images

MODEL = resnet.resnet20()


def batch(dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(2, 3, 32, 32, dtype=dtype)


@pytest.mark.parametrize(
    "x, error, message",
    [
        (torch.randn(3, 32, 32), ValueError, r"4-d image batch \[batch, 3, height, width\].*\[3, 32, 32\]"),
        (torch.randn(2, 1, 32, 32), ValueError, "expected 3 input channels.*with 1"),
        (batch(torch.uint8), TypeError, "floating-point.*torch.float32.*torch.uint8"),
        (torch.randn(2, 3, 2, 32), ValueError, "2x32 pixels are too small.*downsamples by 4"),
    ],
)
def test_bad_images_are_rejected_with_a_clear_message(x, error, message):
    with pytest.raises(error, match=message):
        MODEL(x)


def test_channels_last_images_are_told_to_permute():
    message = r"\[1, 32, 32, 3\].*channels-last.*x\.permute\(0, 3, 1, 2\)"
    with pytest.raises(ValueError, match=message) as error:
        MODEL(torch.randn(1, 32, 32, 3))
    assert "img_channels" not in str(error.value)


FLOAT32_MODELS = {"resnet20": MODEL, "resnet9": resnet.resnet9(widths=(8, 8, 8, 8))}
NOT_FLOAT32 = {
    "float64": (batch(torch.float64), TypeError, "dtype torch.float32.*torch.float64"),
    "float16": (batch(torch.float16), TypeError, "dtype torch.float32.*torch.float16"),
    "bfloat16": (batch(torch.bfloat16), TypeError, "torch.float32.*torch.bfloat16"),
    "int64": (batch(torch.int64), TypeError, "floating-point.*torch.int64"),
    "bool": (batch(torch.bool), TypeError, "floating-point.*torch.bool"),
    "complex": (batch(torch.complex64), TypeError, "floating-point.*complex64"),
    "numpy array": (np.zeros((2, 3, 32, 32), np.float32), TypeError, r"torch.Tensor.*got numpy.ndarray"),
    "list": ([[[[0.0] * 32] * 32] * 3] * 2, TypeError, r"torch.Tensor.*got list.*torch.as_tensor"),
    "None": (None, TypeError, r"torch.Tensor.*float32, got None"),
}


@pytest.mark.parametrize("network", FLOAT32_MODELS)
@pytest.mark.parametrize("case", NOT_FLOAT32)
def test_every_input_a_float32_model_cannot_take_is_refused_in_one_line(network, case):
    x, error, message = NOT_FLOAT32[case]
    with pytest.raises(error, match=message) as raised:
        FLOAT32_MODELS[network](x)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_a_converted_model_takes_its_own_dtype_and_refuses_float32(dtype):
    torch.manual_seed(0)
    model = resnet.resnet20().eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    model = model.to(dtype)
    got = model(x.to(dtype))
    assert got.dtype == dtype
    assert torch.allclose(got.float(), expected, atol=0.2 if dtype != torch.float64 else 1e-5)
    with pytest.raises(TypeError, match=f"dtype {dtype}.*got torch.float32"):
        model(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_autocast_takes_float32_and_its_own_dtype(dtype):
    model = resnet.resnet20().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(2, 3, 32, 32, dtype=dtype)).dtype == torch.bfloat16


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
        (
            lambda: resnet.resnet20(num_classes=-1),
            ValueError,
            "num_classes must be an int of 0 or more, got -1$",
        ),
        (lambda: resnet.resnet9(num_classes=2.0), TypeError, "num_classes must be an int of 0 or more"),
        (lambda: resnet.resnet56(shortcut="plain"), ValueError, "unknown shortcut 'plain'"),
    ],
)
def test_inconsistent_configurations_are_rejected(build, error, message):
    with pytest.raises(error, match=message):
        build()


@pytest.mark.parametrize(
    "images, error, message",
    [
        (torch.zeros(32, 32, 3, dtype=torch.float32), TypeError, "uint8.*torch.float32"),
        (
            torch.zeros(3, 32, 32, dtype=torch.uint8),
            ValueError,
            r"got shape \[3, 32, 32\].*permute\(1, 2, 0\)",
        ),
        (
            torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
            ValueError,
            r"shape \[2, 3, 32, 32\].*permute\(0, 2, 3, 1\)",
        ),
        (torch.zeros(32, 3, dtype=torch.uint8), ValueError, r"got shape \[32, 3\]$"),
        (np.zeros((32, 32, 3), np.uint8), TypeError, "got numpy.ndarray"),
    ],
)
def test_image_checks_report_the_shape_the_caller_passed(images, error, message):
    with pytest.raises(error, match=message):
        check_hwc_uint8_images(images)


def test_image_checks_make_a_batch_of_one_image():
    assert check_hwc_uint8_images(torch.zeros(32, 32, 3, dtype=torch.uint8)).shape == (1, 32, 32, 3)
