"""The presets are the paper's networks: exact parameter counts and torchvision's multiply-adds."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import resnet

PARAMETERS = {
    # Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M.
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
    # torchvision's resnet18 ... resnet152.
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}

# torchvision's published GFLOPS (multiply-adds) at 224x224.
MULTIPLY_ADDS = {
    "resnet18": 1.81e9,
    "resnet34": 3.66e9,
    "resnet50": 4.09e9,
    "resnet101": 7.80e9,
    "resnet152": 11.51e9,
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", PARAMETERS)
def test_parameter_counts_are_exact(name):
    with torch.device("meta"):
        assert count(resnet.PRESETS[name]()) == PARAMETERS[name]


def test_presets_cover_every_listed_depth():
    assert set(resnet.PRESETS) == set(PARAMETERS)


@pytest.mark.parametrize("name", MULTIPLY_ADDS)
def test_imagenet_multiply_adds_match_torchvision(name):
    with torch.device("meta"):
        model = resnet.PRESETS[name]().eval()
        counter = FlopCounterMode(display=False)
        with counter:
            model(torch.empty(1, 3, 224, 224))
    multiply_adds = counter.get_total_flops() / 2
    assert abs(multiply_adds / MULTIPLY_ADDS[name] - 1) < 0.02


@pytest.mark.parametrize("name", ["resnet20", "resnet56"])
def test_plain_networks_have_the_same_parameters_and_no_shortcuts(name):
    residual, plain = resnet.PRESETS[name](), resnet.PRESETS[name](shortcut="none")
    assert count(plain) == count(residual)
    assert all(block.shortcut is None for stage in plain.trunk.stages for block in stage)


def test_cifar_presets_use_option_a_and_imagenet_presets_option_b():
    kinds = {type(block.shortcut).__name__ for stage in resnet.resnet20().trunk.stages for block in stage}
    assert kinds == {"Identity", "ZeroPadShortcut"}
    kinds = {type(block.shortcut).__name__ for stage in resnet.resnet50().trunk.stages for block in stage}
    assert kinds == {"Identity", "ShortcutProjection"}


def test_presets_accept_num_classes_shortcut_and_base_options():
    model = resnet.resnet32(num_classes=100, shortcut="B", zero_init_residual=True)
    assert model.head.out_features == 100
    assert isinstance(model.trunk, resnet.ResNetBase)
    blocks = [block for stage in model.trunk.stages for block in stage]
    # The options reach every block: option B projects where the shape changes, and every residual
    # branch ends in a zeroed batch norm.
    assert any(isinstance(block.shortcut, resnet.ShortcutProjection) for block in blocks)
    assert not any(isinstance(block.shortcut, resnet.ZeroPadShortcut) for block in blocks)
    assert all(torch.count_nonzero(block.last_norm().weight) == 0 for block in blocks)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    assert resnet.resnet18(num_classes=7)(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_cifar_layer_count_is_6n_plus_2():
    for n, name in [(3, "resnet20"), (9, "resnet56"), (18, "resnet110")]:
        model = resnet.PRESETS[name]()
        weighted = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        assert len(weighted) == 6 * n + 2
