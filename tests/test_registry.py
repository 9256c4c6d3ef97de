"""Every network the trainer trains is built by name from the library, and a misspelt name gets a hint."""

from typing import Any

import pytest
import torch
from synthetic_main import TINY_STAGES

import resnet
from experiments import models
from resnet import registry

# The plain networks of Figure 6 and the residual networks they are compared with.
DEPTHS = [20, 32, 44, 56, 110]


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_names_are_the_presets_then_plain_networks_then_resnet9_and_custom() -> None:
    assert resnet.list_models() == [*resnet.PRESETS, *(f"plain{d}" for d in DEPTHS), "resnet9", "custom"]


def test_list_models_hands_out_a_copy() -> None:
    resnet.list_models().clear()
    assert "resnet20" in resnet.list_models()


@pytest.mark.parametrize("name", [n for n in resnet.list_models() if n != "custom"])
def test_every_listed_name_builds_its_network(name: str) -> None:
    with torch.device("meta"):
        model = resnet.create_model(name)
    if name in resnet.PRESETS:
        with torch.device("meta"):
            assert count(model) == count(resnet.PRESETS[name]())
    expected = resnet.ResNet9 if name == "resnet9" else resnet.ResNetClassifier
    assert type(model) is expected


@pytest.mark.parametrize("depth", DEPTHS)
def test_plain_networks_have_exactly_the_parameters_of_their_option_a_twins(depth: int) -> None:
    plain, residual = resnet.create_model(f"plain{depth}"), resnet.create_model(f"resnet{depth}")
    assert count(plain) == count(residual)
    blocks = [block for stage in residual.trunk.stages for block in stage]
    # Option A costs nothing: identities and zero-padding only, so the count above is not a coincidence.
    assert sum(count(block.shortcut) for block in blocks) == 0
    assert any(isinstance(block.shortcut, resnet.ZeroPadShortcut) for block in blocks)
    assert all(block.shortcut is None for stage in plain.trunk.stages for block in stage)


def test_the_counts_are_those_of_table_6() -> None:
    assert count(resnet.create_model("plain20")) == 269_722
    assert count(resnet.create_model("plain56")) == 853_018


def test_keyword_arguments_reach_the_builder() -> None:
    model = resnet.create_model("resnet56", num_classes=100, shortcut="B")
    assert model.head.out_features == 100
    assert any(
        isinstance(block.shortcut, resnet.ShortcutProjection)
        for stage in model.trunk.stages
        for block in stage
    )
    assert resnet.create_model("resnet9", num_classes=7).head.out_features == 7


def test_a_plain_network_refuses_a_shortcut_and_names_its_twin() -> None:
    twin = r"create_model\('resnet56', shortcut='B'\)"
    with pytest.raises(ValueError, match=rf"plain56 is a plain network without shortcuts.*{twin}"):
        resnet.create_model("plain56", shortcut="B")
    assert resnet.create_model("plain56", shortcut="none").trunk.stages[0][0].shortcut is None


@pytest.mark.parametrize(
    "name, suggestion",
    [
        ("resnt56", "'resnet56'"),
        ("Plain20", "'plain20'"),
        ("resnet-9", "'resnet9'"),
    ],
)
def test_a_misspelt_name_gets_a_did_you_mean(name: str, suggestion: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown model '{name}'; did you mean {suggestion}"):
        resnet.create_model(name)


def test_a_name_like_no_other_points_to_list_models() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'vgg16'; resnet.list_models\(\) gives the 18 known"):
        resnet.create_model("vgg16")


def test_custom_needs_its_stages() -> None:
    with pytest.raises(TypeError, match="create_model\\('custom'\\) needs n_blocks and n_channels"):
        resnet.create_model("custom")


def test_only_custom_takes_stages() -> None:
    with pytest.raises(ValueError, match="n_blocks only apply to 'custom'; resnet20 fixes its own stages"):
        resnet.create_model("resnet20", n_blocks=[1, 1, 1])


def test_custom_with_the_paper_stages_is_resnet20() -> None:
    torch.manual_seed(0)
    custom = resnet.create_model("custom", n_blocks=[3, 3, 3], n_channels=[16, 32, 64])
    torch.manual_seed(0)
    preset = resnet.resnet20()
    assert {k: v.shape for k, v in custom.state_dict().items()} == {
        k: v.shape for k, v in preset.state_dict().items()
    }
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(custom.eval()(x), preset.eval()(x))


def test_custom_bottlenecks_default_to_projection_shortcuts() -> None:
    model = resnet.create_model("custom", n_blocks=[1, 1], n_channels=[16, 32], bottlenecks=[4, 8])
    assert isinstance(model.trunk.stages[1][0].shortcut, resnet.ShortcutProjection)
    assert isinstance(model.trunk.stages[0][0], resnet.BottleneckResidualBlock)


def test_the_trainer_takes_the_library_names_with_resnet20_first() -> None:
    assert models.MODEL_NAMES[0] == "resnet20"
    assert sorted(models.MODEL_NAMES) == sorted(resnet.list_models())
    assert models.PLAIN_NETWORKS is resnet.PLAIN_NETWORKS


@pytest.mark.parametrize("name", ["plain20", "resnet20", "resnet9", "custom"])
def test_the_trainer_builds_what_create_model_builds(name: str) -> None:
    settings = dict(
        num_classes=10,
        shortcut="preset",
        **TINY_STAGES,
        bottlenecks=None,
        zero_init_residual=False,
    )
    stages = TINY_STAGES if name == "custom" else {}
    torch.manual_seed(0)
    trained = models.build_model(name, **settings)
    torch.manual_seed(0)
    library = resnet.create_model(name, **stages)
    assert {k: v.shape for k, v in trained.state_dict().items()} == {
        k: v.shape for k, v in library.state_dict().items()
    }
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(trained.eval()(x), library.eval()(x))


def test_the_custom_network_check_still_names_the_bad_argument() -> None:
    # What the command line builds to check `model=custom`'s three lists (`models.check_model_settings`).
    def custom(**stages: Any) -> torch.nn.Module:
        return models.build_model(
            "custom", num_classes=10, shortcut="preset", zero_init_residual=False, **stages
        )

    with pytest.raises(ValueError, match=r"n_blocks\[1\] must be a positive int, got 0"):
        custom(n_blocks=[1, 0], n_channels=[8, 16], bottlenecks=None)
    network = custom(n_blocks=[1, 1], n_channels=[8, 16], bottlenecks=[])
    assert network.trunk.stages[0][0].shortcut is not None


# ## Keyword arguments, filters and weights by name


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: resnet.resnet20(num_class=100),
            "resnet20() got an unexpected keyword argument 'num_class'; ",
        ),
        (
            lambda: resnet.create_model("resnet20", num_class=100),
            "resnet20() got an unexpected keyword argument",
        ),
        (lambda: resnet.resnet9(num_clases=3), "resnet9() got an unexpected keyword argument 'num_clases'; "),
        (lambda: resnet.create_model("plain56", shortcutt="none"), "plain56() got an unexpected keyword"),
    ],
)
def test_an_unknown_keyword_names_the_public_builder_and_the_close_option(call, message: str) -> None:
    with pytest.raises(TypeError) as caught:
        call()
    assert str(caught.value).startswith(message)
    assert str(caught.value).endswith(("did you mean 'num_classes'?", "did you mean 'shortcut'?"))


def test_a_keyword_like_no_option_lists_them_all() -> None:
    with pytest.raises(TypeError, match=r"^resnet50\(\) got an unexpected keyword argument 'zzz'; it takes "):
        resnet.resnet50(zzz=1)


def test_the_options_come_from_the_builders_signatures() -> None:
    assert set(registry.network_options("resnet20")) == {
        "num_classes",
        "shortcut",
        "img_channels",
        "stem_channels",
        "zero_init_residual",
        "kaiming_init",
    }
    # The ImageNet presets choose their stem's width themselves.
    assert "stem_channels" not in registry.network_options("resnet50")
    assert {"n_blocks", "n_channels", "bottlenecks"} <= set(registry.network_options("custom"))
    assert {"widths", "residual", "logit_scale"} <= set(registry.network_options("resnet9"))


@pytest.mark.parametrize("name", resnet.list_models())
def test_every_declared_option_reaches_the_builder(name: str) -> None:
    # Each option at its default builds: none is one the builder sets itself ("multiple values").
    required = {"n_blocks": [1, 1], "n_channels": [8, 16]} if name == "custom" else {}
    for option, (_, default) in registry.network_options(name).items():
        if option not in required:
            with torch.device("meta"):
                resnet.create_model(name, **required, **{option: default})


def test_list_models_filters_by_pattern_and_by_weights() -> None:
    assert resnet.list_models("plain*") == [f"plain{d}" for d in DEPTHS]
    assert resnet.list_models("resnet*") == [*resnet.PRESETS, "resnet9"]
    assert resnet.list_models("RESNET1?") == ["resnet18"]
    assert resnet.list_models("vgg*") == []
    with_weights = resnet.list_models(pretrained=True)
    assert "resnet20" in with_weights and set(with_weights) <= set(resnet.list_models())
    assert resnet.list_models("plain*", pretrained=True) == [n for n in with_weights if n.startswith("plain")]


def test_pretrained_true_is_the_default_weights() -> None:
    a = resnet.create_model("resnet20", pretrained=True)
    b = resnet.resnet20(weights=resnet.ResNet20_Weights.DEFAULT)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    with pytest.raises(ValueError, match="either pretrained=True or weights=, not both"):
        resnet.create_model("resnet20", pretrained=True, weights="cifar10")


def test_the_public_builders_are_the_tutorials_with_weights() -> None:
    assert resnet.resnet56.__wrapped__ is resnet.PRESETS["resnet56"]
    assert resnet.model_builder("resnet56") is resnet.resnet56
    assert "`weights=` loads trained weights" in resnet.resnet56.__doc__
    assert resnet.resnet56().network_config == {"network": "resnet56", "options": {}}
