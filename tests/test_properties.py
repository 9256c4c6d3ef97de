"""
Property-based checks over random configurations: any valid ResNetBase gives the documented output shape
and finite values; any invalid one fails at construction with an error that names the argument.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnet import SHORTCUTS, STEMS, BottleneckResidualBlock, ResidualBlock, ResNetBase

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configurations(draw):
    n_stages = draw(st.integers(1, 3))
    n_blocks = draw(st.lists(st.integers(1, 2), min_size=n_stages, max_size=n_stages))
    n_channels = draw(st.lists(st.integers(1, 12), min_size=n_stages, max_size=n_stages))
    bottlenecks = draw(st.none() | st.lists(st.integers(1, 6), min_size=n_stages, max_size=n_stages))
    shortcut = draw(st.sampled_from(SHORTCUTS))
    if shortcut == "A":
        # Option A can only add channels, so the widths must not shrink from stage to stage.
        n_channels = sorted(n_channels)
    stem = draw(st.sampled_from(STEMS))
    kwargs = dict(
        shortcut=shortcut,
        stem=stem,
        img_channels=draw(st.integers(1, 4)),
        first_kernel_size=draw(st.sampled_from([1, 3, 5, 7])),
        stem_channels=draw(st.none() | st.integers(1, 8)) if shortcut != "A" else None,
        conv_bias=draw(st.booleans()),
        zero_init_residual=draw(st.booleans()),
    )
    return n_blocks, n_channels, bottlenecks, kwargs


@SETTINGS
@given(configurations(), st.integers(1, 3), st.integers(0, 2), st.integers(0, 9))
def test_valid_configurations_give_documented_shapes_and_finite_outputs(config, batch, extra_h, extra_w):
    n_blocks, n_channels, bottlenecks, kwargs = config
    model = ResNetBase(n_blocks, n_channels, bottlenecks, **kwargs).eval()
    height, width = model.total_stride + extra_h, model.total_stride + extra_w
    x = torch.randn(batch, kwargs["img_channels"], height, width)
    with torch.no_grad():
        out = model(x)
        maps = model.stage_outputs(x)
    assert out.shape == (batch, n_channels[-1])
    assert torch.isfinite(out).all()
    assert [m.shape[1] for m in maps] == n_channels
    # Each later stage halves (rounding up) the map of the stage before.
    for before, after in zip(maps, maps[1:], strict=False):
        assert after.shape[-1] == (before.shape[-1] + 1) // 2


@SETTINGS
@given(st.integers(1, 8), st.integers(1, 8), st.integers(1, 3), st.sampled_from(SHORTCUTS), st.integers(1, 4))
def test_blocks_map_shapes_as_documented(in_channels, out_channels, stride, shortcut, bottleneck):
    if shortcut == "A" and out_channels < in_channels:
        with pytest.raises(ValueError, match="out_channels"):
            ResidualBlock(in_channels, out_channels, stride, shortcut=shortcut)
        return
    x = torch.randn(2, in_channels, 7, 7)
    side = (7 - 1) // stride + 1
    assert ResidualBlock(in_channels, out_channels, stride, shortcut=shortcut)(x).shape == (
        2,
        out_channels,
        side,
        side,
    )
    block = BottleneckResidualBlock(in_channels, bottleneck, out_channels, stride, shortcut=shortcut)
    assert block(x).shape == (2, out_channels, side, side)


BAD_VALUES = st.sampled_from([0, -1, -7, 2.5, "3", None, True])


@SETTINGS
@given(
    st.sampled_from(
        ["n_blocks", "n_channels", "bottlenecks", "img_channels", "first_kernel_size", "stem_channels"]
    ),
    BAD_VALUES,
    st.integers(0, 1),
)
def test_invalid_configurations_name_the_argument(argument, bad, position):
    args = {"n_blocks": [1, 1], "n_channels": [4, 8], "bottlenecks": [2, 2]}
    kwargs = {}
    if argument in args:
        if bad is None:
            return  # bottlenecks=None is valid, and None for a list is caught as "must be a list" below
        args[argument][position] = bad
        expected = rf"{argument}\[{position}\]"
    else:
        if bad is None:
            return  # None means "use the default" for the optional sizes
        kwargs[argument] = bad
        expected = argument
    with pytest.raises((ValueError, TypeError), match=expected):
        ResNetBase(args["n_blocks"], args["n_channels"], args["bottlenecks"], **kwargs)


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3))
def test_mismatched_stage_lists_name_both_lists(n_blocks_len, n_channels_len):
    if n_blocks_len == n_channels_len:
        return
    with pytest.raises(ValueError, match=rf"len\(n_blocks\) == {n_blocks_len} but len\(n_channels\)"):
        ResNetBase([1] * n_blocks_len, [4] * n_channels_len)
