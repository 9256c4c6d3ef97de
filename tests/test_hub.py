"""`torch.hub.load` on a checkout builds every network by name, offline."""

import importlib.util
import socket
from pathlib import Path

import pytest
import torch

import resnet

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test instead of reaching the network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.hub tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def load_hubconf():
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hubconf_has_one_entry_per_model_name() -> None:
    hubconf = load_hubconf()
    # What torch.hub.list reports: the public callables of the module.
    entries = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")]
    assert sorted(entries) == sorted(resnet.list_models())
    assert hubconf.resnet56.__doc__ == resnet.resnet56.__doc__
    assert all(importlib.util.find_spec(package) for package in hubconf.dependencies)


def test_torch_hub_load_builds_resnet56_offline(offline: None) -> None:
    torch.manual_seed(0)
    model = torch.hub.load(str(REPO), "resnet56", source="local")
    torch.manual_seed(0)
    expected = resnet.resnet56()
    assert isinstance(model, resnet.ResNetClassifier)
    assert sum(p.numel() for p in model.parameters()) == 853_018
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), expected.eval()(x))


def test_torch_hub_load_passes_keyword_arguments_on(offline: None) -> None:
    model = torch.hub.load(str(REPO), "plain20", source="local", num_classes=100)
    assert model.head.out_features == 100
    assert all(block.shortcut is None for stage in model.trunk.stages for block in stage)
    custom = torch.hub.load(str(REPO), "custom", source="local", n_blocks=[1, 1], n_channels=[8, 16])
    assert [len(stage) for stage in custom.trunk.stages] == [1, 1]


@pytest.mark.parametrize("name", resnet.list_models(pretrained=True))
def test_torch_hub_loads_every_network_with_weights_offline(offline: None, name: str) -> None:
    expected = resnet.create_model(name, weights="DEFAULT").state_dict()
    for kwargs in ({"weights": "cifar10"}, {"pretrained": True}):
        model = torch.hub.load(str(REPO), name, source="local", **kwargs)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in expected.items())


def test_torch_hub_refuses_weights_where_there_are_none(offline: None) -> None:
    with pytest.raises(
        ValueError, match="resnet1202 has no trained weights; networks with weights: resnet20"
    ):
        torch.hub.load(str(REPO), "resnet1202", source="local", weights="cifar10")
