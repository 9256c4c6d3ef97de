"""
The networks trace with `torch.fx`, so torchvision's feature extraction works on them, and
`feature_info()` describes their maps without running them.
"""

import pytest
import torch
import torch.fx
from torchvision.models.feature_extraction import create_feature_extractor

import resnet


def test_symbolic_trace_computes_what_the_model_computes() -> None:
    model = resnet.resnet18().eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(traced(x), model(x))


def test_the_traced_graph_still_checks_its_input() -> None:
    traced = torch.fx.symbolic_trace(resnet.resnet20())
    with pytest.raises(ValueError, match="expected 3 input channels"):
        traced(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="4-d image batch"):
        traced(torch.randn(3, 32, 32))


@pytest.mark.parametrize("name, size", [("resnet50", 64), ("resnet20", 32)])
def test_feature_extractor_maps_equal_stage_outputs(name: str, size: int) -> None:
    model = resnet.PRESETS[name]().eval()
    n_stages = len(model.trunk.stages)
    extractor = create_feature_extractor(model, {f"trunk.stages.{i}": f"c{i + 2}" for i in range(n_stages)})
    x = torch.randn(2, 3, size, size)
    maps = extractor(x)
    assert list(maps) == [f"c{i + 2}" for i in range(n_stages)]
    for extracted, expected in zip(maps.values(), model.trunk.stage_outputs(x), strict=True):
        assert torch.equal(extracted, expected)


def test_feature_extractor_keeps_the_input_check() -> None:
    extractor = create_feature_extractor(resnet.resnet50(), {"trunk.stages.3": "c5"})
    with pytest.raises(ValueError, match="too small for this network"):
        extractor(torch.randn(1, 3, 16, 16))


NETWORKS = {
    "resnet20": lambda: resnet.resnet20(),
    "resnet18": lambda: resnet.resnet18(),
    "resnet50": lambda: resnet.resnet50(),
    "custom, bottlenecks": lambda: resnet.create_model(
        "custom", n_blocks=[1, 1], n_channels=[16, 32], bottlenecks=[4, 8]
    ),
    "seed stem": lambda: resnet.ResNetClassifier(resnet.ResNetBase([1, 1, 1], [8, 16, 32]), 10),
}


@pytest.mark.parametrize("name", NETWORKS)
def test_feature_info_gives_the_width_and_scale_of_every_stage_output(name: str) -> None:
    model = NETWORKS[name]().eval()
    size = 64
    maps = model.trunk.stage_outputs(torch.randn(1, 3, size, size))
    info = model.feature_info()
    assert [tuple(m.shape[1:]) for m in maps] == [
        (i.channels, size // i.reduction, size // i.reduction) for i in info
    ]
    assert [i.module for i in info] == [f"trunk.stages.{s}" for s in range(len(maps))]
    assert [i.module for i in model.trunk.feature_info()] == [f"stages.{s}" for s in range(len(maps))]


def test_paper_feature_info_reads_like_table_1() -> None:
    info = resnet.resnet50().feature_info()
    assert [(i.channels, i.reduction) for i in info] == [(256, 4), (512, 8), (1024, 16), (2048, 32)]
    info = resnet.resnet56().feature_info()
    assert [(i.channels, i.reduction) for i in info] == [(16, 1), (32, 2), (64, 4)]


@pytest.mark.parametrize("name", ["resnet9", "resnet20", "resnet50"])
def test_feature_info_modules_are_return_nodes_for_create_feature_extractor(name: str) -> None:
    model = resnet.create_model(name).eval()
    info = model.feature_info()
    extractor = create_feature_extractor(model, [i.module for i in info])
    size = 64
    maps = extractor(torch.randn(1, 3, size, size))
    assert [tuple(m.shape[1:]) for m in maps.values()] == [
        (i.channels, size // i.reduction, size // i.reduction) for i in info
    ]


def test_resnet9_feature_info_follows_its_table() -> None:
    info = resnet.resnet9().feature_info()
    assert [(i.channels, 32 // i.reduction) for i in info] == [(128, 16), (256, 8), (512, 4)]
    # Layers 1 and 3 end in their residual block, layer 2 in its pooling.
    assert [i.module for i in info] == ["layers.1", "layers.2", "layers.4"]
