"""
# Argument and input checks

A mistake in a network's configuration usually surfaces much later as a shape error deep inside a
convolution, far from the argument that caused it. These checks run where the mistake is made and name
the argument, what it should be, and what was given.

`check_image_batch` is the one check that runs on every forward pass, and the only one that looks at
tensors. `torch.fx` traces a network by running `forward` on placeholder values whose shape is not yet
known, so a Python `if x.dim() != 4` cannot be decided while tracing. `torch.fx.wrap` marks the check
as a *leaf*: the tracer records one call to it instead of stepping inside, and the traced graph (a
feature extractor from `torchvision.models.feature_extraction`, say) runs the same checks when it is
called. The check hands its input back, so the rest of the network depends on it and graph clean-ups
that drop unused nodes keep it. TorchScript, `torch.export` and `torch.compile` ignore the mark and see
the plain function.

The check refuses, in one line each, anything a convolution would fail on later with an error from
inside `conv.py`: something that is not a tensor (a numpy array, a list, `None`), an image in the
channels-last layout of PNGs and numpy, an integer tensor, and a float tensor of another precision than
the model's weights, unless `torch.autocast` is on, which casts for the convolutions itself.

`check_hwc_uint8_images` is the same kind of check for the other end of the pipeline: decoded images
before they are normalised into a batch.
"""

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

# torch's type stubs do not re-export these three from `torch.jit`.
_is_scripting: Callable[[], bool] = torch.jit.is_scripting  # type: ignore[attr-defined]
_is_tracing: Callable[[], bool] = torch.jit.is_tracing  # type: ignore[attr-defined]
_TracerWarning: type[Warning] = torch.jit.TracerWarning  # type: ignore[attr-defined]


def check_positive(**values: Any) -> None:
    """Every value must be an `int` greater than zero (booleans are not counts)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
        if value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value}")


def check_non_negative(**values: Any) -> None:
    """Every value must be an `int` of zero or more (booleans are not counts)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int of 0 or more, got {value!r} ({type(value).__name__})")
        if value < 0:
            raise ValueError(f"{name} must be an int of 0 or more, got {value}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, choices))}")


def check_same_length(**sequences: Any) -> None:
    """Per-stage lists must be lists (or tuples) of the same, non-zero length."""
    for name, value in sequences.items():
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be a list with one entry per stage, got {value!r}")
        if len(value) == 0:
            raise ValueError(f"{name} must have at least one stage, got an empty list")
    lengths = {name: len(value) for name, value in sequences.items()}
    if len(set(lengths.values())) > 1:
        described = " but ".join(f"len({name}) == {n}" for name, n in lengths.items())
        raise ValueError(f"one entry per stage is needed in each list, {described}")


def check_image_batch(x: torch.Tensor, img_channels: int, min_size: int, dtype: torch.dtype) -> torch.Tensor:
    """
    The trunk takes a batch `[batch_size, img_channels, height, width]` of the model's own floating-point
    `dtype`, at least `min_size` pixels on each side: smaller images would leave the last stages with
    nothing but padding to look at. Under `torch.autocast` any floating-point batch is fine, because
    autocast casts each convolution's input itself. Returns `x` unchanged.
    """
    # TorchScript can compile neither the `warnings` module nor the autocast queries, and drops this
    # branch unseen. A scripted model needs less: its annotations already guarantee a tensor. It checks
    # shape and dtype, without the autocast exception (scripted models are run without autocast).
    if not _is_scripting():
        _check_from_python(x, img_channels, min_size, dtype)
    else:
        _check_tensor(x, img_channels, min_size, dtype, False)
    return x


def _check_from_python(x: torch.Tensor, img_channels: int, min_size: int, dtype: torch.dtype) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"expected a torch.Tensor image batch [batch, {img_channels}, height, width] of dtype "
            f"{dtype}, got {_describe(x)}; convert it with torch.as_tensor(images, dtype={dtype})"
        )
    # Autocast knows no `meta` tensors (shape inference without data), and asking about them is an error.
    device = x.device.type
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    if _is_tracing():
        # A trace (`torch.jit.trace`, the TorchScript-based ONNX exporter) records tensor operations
        # only, so these Python checks look at the example input once and stay out of the traced graph.
        # With a dynamic batch the tracer hands out sizes as tensors and warns on each comparison; the
        # warning tells the user nothing they can act on, so we hold it back here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", _TracerWarning)
            _check_tensor(x, img_channels, min_size, dtype, autocast)
    else:
        _check_tensor(x, img_channels, min_size, dtype, autocast)


def _check_tensor(
    x: torch.Tensor, img_channels: int, min_size: int, dtype: torch.dtype, autocast: bool
) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"expected a 4-d image batch [batch, {img_channels}, height, width], "
            f"got a tensor of shape {list(x.shape)}; use x.unsqueeze(0) for a single image"
        )
    if x.shape[1] != img_channels:
        if x.shape[3] == img_channels:
            # The layout of a PNG, of PIL and numpy images and of CIFAR-10's own arrays.
            raise ValueError(
                f"expected {img_channels} input channels in dimension 1, got shape {list(x.shape)}, "
                f"which looks like channels-last [batch, height, width, {img_channels}]; permute it "
                f"to [batch, {img_channels}, height, width] with x.permute(0, 3, 1, 2)"
            )
        raise ValueError(
            f"expected {img_channels} input channels, got shape {list(x.shape)} with "
            f"{x.shape[1]}; set img_channels={x.shape[1]} or convert the images "
            f"(channels go in dimension 1)"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"expected a floating-point image batch of dtype {dtype}, got dtype {x.dtype}; "
            f"convert it with x.to({dtype}) (and scale uint8 images to [0, 1])"
        )
    if x.dtype != dtype and not autocast:
        raise TypeError(
            f"expected an image batch of dtype {dtype}, the dtype of the model's weights, got "
            f"{x.dtype}; convert the batch with x.to({dtype}), the model with model.to({x.dtype}), "
            f"or run the model under torch.autocast"
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"images of {x.shape[2]}x{x.shape[3]} pixels are too small for this network, "
            f"which downsamples by {min_size}; use images of at least "
            f"{min_size}x{min_size}"
        )


def _describe(value: object) -> str:
    """A value's type the way its user would write it: `numpy.ndarray`, `list`, `None`."""
    if value is None:
        return "None"
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module.split('.')[0]}.{kind.__qualname__}"


def check_hwc_uint8_images(images: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """
    `uint8` images `[height, width, channels]` or `[batch, height, width, channels]` (the layout of a PNG,
    of PIL and of CIFAR-10's arrays) as a 4-d batch. A refusal reports the shape the caller passed, not
    the batch made from it.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"expected a uint8 tensor of images [height, width, {channels}], got {_describe(images)}; "
            f"convert it with torch.as_tensor(images)"
        )
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images with values 0..255, got dtype {images.dtype}")
    if images.dim() not in (3, 4) or images.shape[-1] != channels:
        hint = (
            f"; it looks channels-first, permute it to channels-last with "
            f"images.permute({'1, 2, 0' if images.dim() == 3 else '0, 2, 3, 1'})"
            if images.dim() in (3, 4) and images.shape[-3] == channels
            else ""
        )
        raise ValueError(
            f"expected [height, width, {channels}] or [batch, height, width, {channels}] uint8 images, "
            f"got shape {list(images.shape)}{hint}"
        )
    return images if images.dim() == 4 else images.unsqueeze(0)
