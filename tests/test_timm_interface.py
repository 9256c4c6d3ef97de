"""
timm's model interface on every registered network, tested the way timm tests its own: one parametrized
test over `resnet.list_models()`. `forward_features` gives the last unpooled map, `forward_head` pools and
classifies, `num_classes=0` and `reset_classifier` change the head, `get_classifier` returns it, and a
feature extractor returns the maps `feature_info()` describes.
"""

import pytest
import torch
from torch import nn

import resnet
from resnet.features import FeatureExtractor

# `custom` has no stages of its own; everything else builds from its name alone.
# resnet1202's 600 fresh residual branches, with batch norm still at its initial statistics, add up to
# inf; starting each branch at zero keeps the numbers finite, so that comparisons mean something.
ARGUMENTS = {
    "custom": {"n_blocks": [1, 1], "n_channels": [8, 16], "bottlenecks": [4, 8]},
    "resnet1202": {"zero_init_residual": True},
}


@pytest.mark.parametrize("name", resnet.list_models())
@torch.no_grad()
def test_every_network_has_timms_model_interface(name: str) -> None:
    arguments = ARGUMENTS.get(name, {})
    torch.manual_seed(0)
    model = resnet.create_model(name, **arguments).eval()
    info = model.feature_info()
    # Twice the largest reduction: the last map is 2x2, so average- and max-pooling differ from a copy.
    size = 2 * info[-1].reduction
    x = torch.randn(2, 3, size, size)

    features = model.forward_features(x)
    assert features.shape == (2, model.num_features, 2, 2)
    assert model.num_features == info[-1].channels
    logits = model(x)
    classes = 1000 if info[-1].reduction == 32 else 10  # ImageNet networks downsample 32 times
    assert logits.shape == (2, model.num_classes) == (2, classes)
    assert logits.isfinite().all()
    assert torch.equal(logits, model.forward_head(features))
    pooled = model.forward_head(features, pre_logits=True)
    assert pooled.shape == (2, model.num_features)

    head = model.get_classifier()
    assert isinstance(head, nn.Linear) and head.out_features == classes and head is model.head

    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7
    assert model(x).shape == (2, 7)
    # The trunk is untouched: only the head is new.
    assert torch.equal(model.forward_features(x), features)

    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    assert torch.equal(model(x), pooled)

    torch.manual_seed(0)
    headless = resnet.create_model(name, num_classes=0, **arguments).eval()
    assert isinstance(headless.get_classifier(), nn.Identity)
    assert headless.num_classes == 0
    assert torch.equal(headless(x), pooled), "the same seed builds the same trunk, so the same features"

    extractor = resnet.create_model(name, features_only=True, **arguments).eval()
    extractor.network.load_state_dict(headless.state_dict())
    maps = extractor(x)
    assert [(m.shape[1], size // m.shape[2], size // m.shape[3]) for m in maps] == [
        (i.channels, i.reduction, i.reduction) for i in info
    ]
    assert [i.module for i in extractor.feature_info()] == [f"network.{i.module}" for i in info]
    for extracted, expected in zip(maps, headless.stage_outputs(x), strict=True):
        assert torch.equal(extracted, expected)
    assert torch.equal(maps[-1], features)

    last = FeatureExtractor(headless, out_indices=[-1])
    assert resnet.create_model(name, features_only=True, out_indices=[-1], **arguments).out_indices == [
        len(info) - 1
    ]
    assert [m.shape for m in last(x)] == [features.shape]
    assert [(i.channels, i.reduction) for i in last.feature_info()] == [
        (info[-1].channels, info[-1].reduction)
    ]


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"out_indices": [0]}, r"out_indices=\[0\] only applies with features_only=True"),
        (
            {"features_only": True, "out_indices": [3]},
            r"from -3 to 2 \(this network has 3 stages\), got \[3\]",
        ),
        ({"features_only": True, "out_indices": [0, -3]}, "names a stage twice"),
        ({"features_only": True, "out_indices": []}, "at least one of the 3 stages"),
    ],
)
def test_wrong_feature_requests_are_refused(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resnet.create_model("resnet20", **arguments)


def test_out_indices_pick_and_order_the_maps() -> None:
    extractor = resnet.create_model("resnet50", features_only=True, out_indices=(1, 3)).eval()
    assert [(i.channels, i.reduction) for i in extractor.feature_info()] == [(512, 8), (2048, 32)]
    with torch.no_grad():
        maps = extractor(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 512, 8, 8), (1, 2048, 2, 2)]


@pytest.mark.parametrize("name", ["resnet20", "resnet9"])
def test_headless_networks_script_and_export(name: str) -> None:
    model = resnet.create_model(name, num_classes=0).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(torch.jit.script(model)(x), expected)
        assert torch.allclose(torch.export.export(model, (x,)).module()(x), expected, atol=1e-6)
