"""Our ImageNet presets and torchvision's ResNets are the same networks, weight for weight."""

import pytest
import torch
import torchvision

import resnet


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_weights_give_the_same_logits(name):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)(weights=None).eval()
    # Random running statistics, so batch norm's eval path is really exercised.
    for module in theirs.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    ours = resnet.PRESETS[name]().eval()
    ours.load_state_dict(resnet.from_torchvision(theirs.state_dict()), strict=True)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_our_weights_load_into_torchvision(name):
    torch.manual_seed(1)
    ours = resnet.PRESETS[name]().eval()
    theirs = getattr(torchvision.models, name)(weights=None).eval()
    theirs.load_state_dict(resnet.to_torchvision(ours.state_dict()), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max() <= 1e-4


def test_round_trip_keeps_every_tensor():
    state = resnet.resnet34().state_dict()
    back = resnet.from_torchvision(resnet.to_torchvision(state))
    assert list(back) == list(state)
    assert all(back[key] is state[key] for key in state)


def test_foreign_keys_are_rejected_with_their_names():
    state = torchvision.models.resnet18(weights=None).state_dict()
    wrapped = {f"module.{key}": value for key, value in state.items()}
    expected = r"not torchvision ResNet weights: module\.conv1\.weight.*strip any 'module\.'"
    with pytest.raises(ValueError, match=expected):
        resnet.from_torchvision(wrapped)
    with pytest.raises(ValueError, match="not this library's ResNet weights"):
        resnet.to_torchvision(state)
    with pytest.raises(TypeError, match="expected a state dict"):
        resnet.from_torchvision([1, 2])
