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
"""

from collections.abc import Sequence
from typing import Any

import torch


def check_positive(**values: Any) -> None:
    """Every value must be an `int` greater than zero (booleans are not counts)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
        if value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value}")


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


def check_image_batch(x: torch.Tensor, img_channels: int, min_size: int) -> torch.Tensor:
    """
    The trunk takes a float batch `[batch_size, img_channels, height, width]` at least `min_size` pixels
    on each side: smaller images would leave the last stages with nothing but padding to look at.
    Returns `x` unchanged.
    """
    if x.dim() != 4:
        raise ValueError(
            f"expected a 4-d image batch [batch, {img_channels}, height, width], "
            f"got a tensor of shape {list(x.shape)}; use x.unsqueeze(0) for a single image"
        )
    if x.shape[1] != img_channels:
        raise ValueError(
            f"expected {img_channels} input channels, got shape {list(x.shape)} with "
            f"{x.shape[1]}; set img_channels={x.shape[1]} or convert the images "
            f"(channels go in dimension 1)"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"expected a floating-point image batch, got dtype {x.dtype}; "
            f"convert it with x.float() (and scale uint8 images to [0, 1])"
        )
    if x.shape[2] < min_size or x.shape[3] < min_size:
        raise ValueError(
            f"images of {x.shape[2]}x{x.shape[3]} pixels are too small for this network, "
            f"which downsamples by {min_size}; use images of at least "
            f"{min_size}x{min_size}"
        )
    return x
