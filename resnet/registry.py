"""
# Networks by name

The tutorial builds each network with a function (`resnet.resnet56()`), which is what someone reading
the paper wants. A training configuration, `torch.hub` or a command line wants a name instead. This
module is the one table from names to networks, so every tool that takes a name takes the same ones:

| name | network |
|---|---|
| `resnet20` … `resnet1202`, `resnet18` … `resnet152` | the paper's eleven presets, `resnet.PRESETS` |
| `plain20` … `plain110` | a CIFAR preset with `shortcut="none"`: the plain baselines of Figure 6 |
| `resnet9` | the fast ResNet-9 of [`fast.py`](fast.py), which is not a network from the paper |
| `custom` | a CIFAR-style network from `n_blocks`, `n_channels` and `bottlenecks` |

`create_model(name, **kwargs)` passes the keyword arguments on to the network's builder, so
`create_model("resnet56", num_classes=100)` is `resnet56(num_classes=100)`.
"""

import difflib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from resnet.fast import ResNet9, resnet9
from resnet.features import FeatureExtractor
from resnet.model import PRESETS, ResNetBase, ResNetClassifier, Shortcut

Model = ResNetClassifier | ResNet9

# The plain networks of Figure 6 (and of the 110-layer comparison in §4.2), each named after its
# residual twin's depth.
PLAIN_NETWORKS: dict[str, str] = {f"plain{depth}": f"resnet{depth}" for depth in (20, 32, 44, 56, 110)}

# Only `custom` takes its stages from arguments; every other name fixes them.
_ARCHITECTURE = ("n_blocks", "n_channels", "bottlenecks")


def custom_resnet(
    n_blocks: list[int],
    n_channels: list[int],
    bottlenecks: list[int] | None = None,
    *,
    num_classes: int = 10,
    shortcut: Shortcut | None = None,
    **kwargs: Any,
) -> ResNetClassifier:
    """
    A network with any stages on the CIFAR stem (a $3 \\times 3$ convolution at full resolution, §4.2).
    Without a `shortcut`, it gets the paper's choice for its blocks: option A for basic blocks, as on
    CIFAR, option B for bottlenecks, whose projections the ImageNet networks use. Other keyword
    arguments go to `ResNetBase`.
    """
    if shortcut is None:
        shortcut = "A" if bottlenecks is None else "B"
    trunk = ResNetBase(
        n_blocks,
        n_channels,
        bottlenecks,
        first_kernel_size=3,
        stem="cifar",
        conv_bias=False,
        shortcut=shortcut,
        **kwargs,
    )
    return ResNetClassifier(trunk, num_classes)


def _plain_network(name: str) -> Callable[..., ResNetClassifier]:
    twin = PRESETS[PLAIN_NETWORKS[name]]

    def build(**kwargs: Any) -> ResNetClassifier:
        shortcut = kwargs.pop("shortcut", "none")
        if shortcut != "none":
            raise ValueError(
                f"{name} is a plain network without shortcuts, so shortcut={shortcut!r} does "
                f"not apply; use create_model({twin.__name__!r}, shortcut={shortcut!r})"
            )
        return twin(shortcut="none", **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{twin.__name__} without shortcuts, the plain network of Figure 6."
    return build


_BUILDERS: dict[str, Callable[..., Model]] = {
    **PRESETS,
    **{name: _plain_network(name) for name in PLAIN_NETWORKS},
    "resnet9": resnet9,
    "custom": custom_resnet,
}


def list_models() -> list[str]:
    """Every name `create_model` builds: the presets in the paper's order, then the others."""
    return list(_BUILDERS)


def model_builder(name: str) -> Callable[..., Model]:
    """The function behind `name`, whose docstring describes the network; unknown names are refused."""
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name.lower(), _BUILDERS, n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ValueError(
            f"unknown model {name!r}; {hint}resnet.list_models() gives the {len(_BUILDERS)} known names"
        )
    return _BUILDERS[name]


if TYPE_CHECKING:
    # For type checkers only: `features_only=True` gives a `FeatureExtractor`, anything else a network.
    # (Inside this block the docs site does not list the two signatures as definitions of their own.)
    @overload
    def create_model(
        name: str, *, features_only: Literal[False] = False, out_indices: None = None, **kwargs: Any
    ) -> Model: ...

    @overload
    def create_model(
        name: str, *, features_only: Literal[True], out_indices: Sequence[int] | None = None, **kwargs: Any
    ) -> FeatureExtractor: ...


def create_model(
    name: str, *, features_only: bool = False, out_indices: Sequence[int] | None = None, **kwargs: Any
) -> Model | FeatureExtractor:
    """
    The network called `name` (see [`list_models`](#list_models)), built with `kwargs`. `custom` needs
    `n_blocks` and `n_channels`, and takes `bottlenecks`; the other names fix their own stages.

    `features_only=True` returns the network without its classifier, giving the maps of the stages in
    `out_indices` (all by default), as timm's argument of the same name does; see
    [`FeatureExtractor`](features.py#FeatureExtractor).
    """
    build = model_builder(name)
    if name == "custom":
        missing = [key for key in ("n_blocks", "n_channels") if key not in kwargs]
        if missing:
            raise TypeError(
                f"create_model('custom') needs {' and '.join(missing)}, e.g. "
                f"create_model('custom', n_blocks=[3, 3, 3], n_channels=[16, 32, 64])"
            )
    elif given := [key for key in _ARCHITECTURE if key in kwargs]:
        raise ValueError(f"{', '.join(given)} only apply to 'custom'; {name} fixes its own stages")
    if out_indices is not None and not features_only:
        raise ValueError(f"out_indices={list(out_indices)} only applies with features_only=True")
    model = build(**kwargs)
    return FeatureExtractor(model, out_indices) if features_only else model
