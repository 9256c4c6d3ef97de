"""
# Networks by name, with their trained weights

The tutorial builds each network with a function (`resnet.model.resnet56()`), which is what someone
reading the paper wants. A training configuration, `torch.hub` or a command line wants a name instead,
and a user coming from torchvision or timm wants its habits: `weights=`, `pretrained=True`, a clear
error for a misspelt argument. This module is the one table from names to networks, so every tool that
takes a name takes the same ones:

| name | network |
|---|---|
| `resnet20` … `resnet1202`, `resnet18` … `resnet152` | the paper's eleven presets, `resnet.PRESETS` |
| `plain20` … `plain110` | a CIFAR preset with `shortcut="none"`: the plain baselines of Figure 6 |
| `resnet9` | the fast ResNet-9 of [`fast.py`](fast.py), which is not a network from the paper |
| `custom` | a CIFAR-style network from `n_blocks`, `n_channels` and `bottlenecks` |

`create_model(name, **kwargs)` and the public builders `resnet.resnet56(**kwargs)` check the keyword
arguments against the network's options (its builder's signature; a misspelt one is told the close
name) and pass them on, so `create_model("resnet56", num_classes=100)` is `resnet56(num_classes=100)`.

**Weights.** Every network with trained weights in `resnet/weights/` (see
[`pretrained.py`](pretrained.py)) has an enum of them, `resnet.ResNet20_Weights`, in torchvision's shape:
members named after the data set (`CIFAR10`) and `DEFAULT` (the most accurate), each with `.meta` and
`.transforms()`. `weights=` takes a member or its name; the enums are made from the records found on
disk, so a network whose files land there gets its enum with no code change here.
"""

import dataclasses
import difflib
import fnmatch
import inspect
import sys
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from enum import Enum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints, overload

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from resnet import fast
from resnet import pretrained as weight_files
from resnet.fast import ResNet9
from resnet.features import FeatureExtractor
from resnet.model import PRESETS, ResNetBase, ResNetClassifier, Shortcut, cifar_resnet, imagenet_resnet

Model = ResNetClassifier | ResNet9
M = TypeVar("M", bound=nn.Module)

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
    "resnet9": fast.resnet9,
    "custom": custom_resnet,
}

# ## Each network's options
#
# What a name accepts is read from the signatures of the functions that build it, so an option added
# there is accepted here with no second list to keep. The presets pass everything that fixes their
# shape (stages, stem, kernel size, bias) to `ResNetBase` themselves; the rest of its keyword arguments
# reach it through theirs. The ImageNet presets also fix the stem's width.
_FIXED_BY_PRESETS = ("n_blocks", "n_channels", "bottlenecks", "first_kernel_size", "stem", "conv_bias")
# Options that only choose initial values, which trained weights replace.
_INITIALISATION = ("zero_init_residual", "kaiming_init")
_IMAGENET_PRESETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class Option(typing.NamedTuple):
    """One keyword argument a network takes: its type (an annotation) and its default."""

    annotation: Any
    default: Any


def _keywords(function: Callable[..., Any], leave_out: Sequence[str] = ()) -> dict[str, Option]:
    hints = get_type_hints(function)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        p.name: Option(hints.get(p.name, Any), p.default)
        for p in inspect.signature(function).parameters.values()
        if p.kind in kinds and p.name not in ("self", *leave_out)
    }


@cache
def network_options(name: str) -> dict[str, Option]:
    """The keyword arguments `create_model(name, ...)` takes (besides `weights=`), with types and defaults."""
    model_builder(name)  # refuses an unknown name
    trunk = _keywords(ResNetBase.__init__, _FIXED_BY_PRESETS)
    if name == "resnet9":
        return _keywords(ResNet9.__init__)
    if name == "custom":
        return {**_keywords(custom_resnet), **trunk}
    if name in _IMAGENET_PRESETS:
        options = {**_keywords(imagenet_resnet, ("n_blocks", "bottleneck")), **trunk}
        del options["stem_channels"]
        return options
    options = {**_keywords(cifar_resnet, ("n",)), **trunk}
    if name in PLAIN_NETWORKS:
        options["shortcut"] = Option(Literal["none"], "none")
    return options


def _fits(value: Any, annotation: Any) -> bool:
    """Whether `value` (as parsed from JSON or a checkpoint) has the type `annotation` says, exactly."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if origin in (Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if annotation in (bool, int, str):
        return type(value) is annotation
    if annotation is float:
        return type(value) in (int, float)
    if origin in (list, tuple, Sequence) and args:
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    return False  # Any, callables, modules: nothing a file may set


def _describe(annotation: Any) -> str:
    if isinstance(annotation, type) and get_origin(annotation) is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("collections.abc.", "")


def check_keywords(name: str, given: Sequence[str], caller: str) -> None:
    """Refuse a keyword argument `name` does not take, naming `caller` and the closest option."""
    options = [*network_options(name), "weights"]
    for key in given:
        if key in options:
            continue
        if name != "custom" and key in _ARCHITECTURE:
            raise ValueError(f"{key} only apply to 'custom'; {name} fixes its own stages")
        close = difflib.get_close_matches(key, options, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"it takes {', '.join(options)}"
        raise TypeError(f"{caller} got an unexpected keyword argument {key!r}; {hint}")


def check_untrusted_options(name: str, options: Any, source: str) -> dict[str, Any]:
    """
    Options read from a file (`config.json`, a checkpoint's settings): they may only be `name`'s own,
    each of its declared type. Anything else is one line naming `source`.
    """
    if not isinstance(options, dict):
        raise ValueError(f"{source}: the options of {name} must be a JSON object, got {options!r}")
    accepted = network_options(name)
    for key, value in options.items():
        if key not in accepted:
            raise ValueError(f"{source}: {name} has no option {key!r}; it takes {', '.join(accepted)}")
        if not _fits(value, accepted[key].annotation):
            raise ValueError(
                f"{source}: option {key}={value!r} of {name} must be {_describe(accepted[key].annotation)}"
            )
    return dict(options)


def list_models(filter: str = "", *, pretrained: bool = False) -> list[str]:
    """
    Every name `create_model` builds, the presets in the paper's order, then the others. `filter` is a
    shell-style pattern (`"resnet*"`, `"plain?0"`); `pretrained=True` keeps the networks with trained
    weights.
    """
    names = list(_BUILDERS)
    if filter:
        names = [name for name in names if fnmatch.fnmatchcase(name, filter.lower())]
    if pretrained:
        with_weights = pretrained_networks()
        names = [name for name in names if name in with_weights]
    return names


def tutorial_builder(name: str) -> Callable[..., Model]:
    """The function from the tutorial (or `fast.py`) behind `name`, without argument checks or weights."""
    model_builder(name)
    return _BUILDERS[name]


def model_builder(name: str) -> Callable[..., Model]:
    """
    The public builder behind `name` (`resnet.resnet56` for `"resnet56"`), whose docstring describes the
    network; unknown names are refused.
    """
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name.lower(), _BUILDERS, n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ValueError(
            f"unknown model {name!r}; {hint}resnet.list_models() gives the {len(_BUILDERS)} known names"
        )
    return _PUBLIC[name]


# ## Weights as torchvision has them


def pretrained_networks() -> dict[str, list[str]]:
    """The networks with trained weights on disk, and the data sets of each, found by file name."""
    return weight_files.shipped_weights(list(_BUILDERS))


def weights_class_name(network: str) -> str:
    """`ResNet20_Weights` for `resnet20`, `Plain56_Weights` for `plain56`: torchvision's spelling."""
    if network.startswith("resnet"):
        return f"ResNet{network[len('resnet') :]}_Weights"
    return f"{network[:1].upper()}{network[1:]}_Weights"


class WeightsEnum(Enum):
    """
    The trained weights of one network: one member per data set (`CIFAR10`), and `DEFAULT`, the one with
    the best single-view test accuracy. A member's value is `(network, dataset)`.

    * `.meta`: what the record says (accuracies, recipe, seed, command, machine, file size, SHA-256), the
      class names, and the network's parameter count and multiply-adds for one image, computed
    * `.transforms()`: the [`ImageTransform`](pretrained.html#ImageTransform) that makes input for them
    """

    @property
    def network(self) -> str:
        return str(self.value[0])

    @property
    def dataset(self) -> str:
        return str(self.value[1])

    @property
    def record(self) -> weight_files.WeightRecord:
        return weight_files.read_record(self.network, self.dataset)

    @property
    def meta(self) -> dict[str, Any]:
        record = self.record
        form = weight_files.DATASETS[self.dataset]
        params, mult_adds = _counts(self.network, len(form.classes), form.transform.size)
        return {
            "classes": list(form.classes),
            "num_params": params,
            "mult_adds": mult_adds,
            "image_size": [form.transform.size, form.transform.size],
            **{f.name: getattr(record, f.name) for f in dataclasses.fields(record)},
        }

    def transforms(self) -> weight_files.ImageTransform:
        return weight_files.DATASETS[self.dataset].transform

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


@cache
def _counts(network: str, num_classes: int, size: int) -> tuple[int, int]:
    """Parameters, and multiply-adds of one `size` x `size` image (convolutions and the head), counted."""
    model = _BUILDERS[network](num_classes=num_classes).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    # A multiply-add is two floating-point operations.
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


@cache
def _weights_enum(network: str, datasets: tuple[str, ...]) -> type[WeightsEnum]:
    # Made once per network and set of files, so the class (and its members) keep their identity and
    # `pickle` finds them again as `resnet.<Name>_Weights`.
    members: list[tuple[str, tuple[str, str]]] = [(d.upper(), (network, d)) for d in datasets]

    def accuracy(dataset: str) -> float:
        try:
            return weight_files.read_record(network, dataset).test_accuracy_single_view
        except weight_files.WeightsError:
            return -1.0  # refused when it is used; never the default while another can load

    best = max(datasets, key=accuracy)
    # An equal value makes `DEFAULT` an alias of that member, as in torchvision.
    members.append(("DEFAULT", (network, best)))
    functional: Any = WeightsEnum
    enum: type[WeightsEnum] = functional(weights_class_name(network), members, module="resnet")
    return enum


def get_model_weights(name: str | Callable[..., Any]) -> type[WeightsEnum]:
    """The weights enum of a network (`"resnet20"` or `resnet.resnet20`); refused for one without weights."""
    network = name if isinstance(name, str) else getattr(name, "__name__", repr(name))
    model_builder(network)
    shipped = pretrained_networks()
    if network not in shipped:
        raise ValueError(f"{network} has no trained weights; {_with_weights(shipped)}")
    return _weights_enum(network, tuple(shipped[network]))


def get_weight(name: str) -> WeightsEnum:
    """A member by its full name, as torchvision spells it: `get_weight("ResNet20_Weights.CIFAR10")`."""
    class_name, _, member = name.partition(".")
    for network in pretrained_networks():
        if weights_class_name(network) == class_name:
            return _member(get_model_weights(network), member, network)
    raise ValueError(f"no weights called {name!r}; {_with_weights(pretrained_networks())}")


def _with_weights(shipped: dict[str, list[str]]) -> str:
    if not shipped:
        return "no network has trained weights in this installation"
    named = ", ".join(f"{n}(weights={d!r})" for n, datasets in shipped.items() for d in datasets)
    return f"networks with weights: {named}"


def _member(enum: type[WeightsEnum], key: str, network: str) -> WeightsEnum:
    for member_name, member in enum.__members__.items():
        if member_name == key.upper():
            return member
    names = ", ".join(repr(d.lower()) for d in enum.__members__ if d != "DEFAULT")
    raise ValueError(f"no {key!r} weights for {network}; it has {names} (or 'DEFAULT')")


def resolve_weights(network: str, weights: Any) -> WeightsEnum | None:
    """What `weights=` names for `network`: `None`, a member of its enum, or a member's name."""
    if weights is None:
        return None
    if isinstance(weights, WeightsEnum):
        if weights.network != network:
            raise ValueError(
                f"{weights!r} are weights for {weights.network}, not {network}; use "
                f"resnet.{weights.network}(weights={weights!r})"
            )
        return weights
    if not isinstance(weights, str):
        raise TypeError(
            f"weights= takes a member of resnet.{weights_class_name(network)} or its name "
            f"(e.g. 'cifar10' or 'DEFAULT'), got {type(weights).__name__}"
        )
    enum = get_model_weights(network)
    class_name, dot, member = weights.partition(".")
    return _member(enum, member if dot and class_name == enum.__name__ else weights, network)


# ## Loading trained tensors into a network


# Every network here ends in a linear layer called `head`: the part made anew for another number of
# classes.
HEAD = "head."


def first_difference(own: dict[str, tuple[int, ...]], theirs: dict[str, tuple[int, ...]]) -> str:
    """The first tensor (by name) whose presence or shape differs, in words; "" if none does."""
    for key in sorted(set(own) | set(theirs)):
        if key not in theirs:
            return f"{key} is missing from the weights"
        if key not in own:
            return f"the weights have {key}, which the network lacks"
        if own[key] != theirs[key]:
            return f"{key} is {list(theirs[key])} in the weights and {list(own[key])} in the network"
    return ""


def _outside_library() -> int:
    """The `stacklevel` that points a warning at the user's line: the first caller outside `resnet`."""
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] == "resnet":
        frame, level = frame.f_back, level + 1
    return level


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], what: str, network: str) -> None:
    """
    Strictly load `state` (`what`: the weights' description for messages) into `model`, built as
    `network`. If only the classifier's shape differs (another `num_classes`), the trunk is loaded, the
    new head keeps its initialisation, and a warning says so. Anything else that does not fit is one
    line naming the network, instead of torch's list of every missing key.
    """
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    differs = [k for k in set(own) | set(theirs) if own.get(k) != theirs.get(k)]
    if differs and all(k.startswith(HEAD) for k in differs):
        saved, now = theirs.get(f"{HEAD}weight"), own.get(f"{HEAD}weight")
        trunk = {k: v for k, v in state.items() if not k.startswith(HEAD)}
        new_head = {k: v for k, v in model.state_dict().items() if k.startswith(HEAD)}
        model.load_state_dict({**trunk, **new_head})
        warnings.warn(
            f"{what} have {saved[0] if saved else 'no'} classes: loaded the trunk into {network} and "
            f"left it {f'a new {now[0]}-class' if now else 'no'} head, untrained; fine-tune it before use",
            stacklevel=_outside_library(),
        )
        return
    if differs:
        raise ValueError(
            f"{what} do not fit {network} as built ({len(differs)} tensors differ; first: "
            f"{first_difference(own, theirs)}); build the network they were trained as"
        )
    model.load_state_dict(state)


# ## Building


def build_named(name: str, kwargs: dict[str, Any], weights: Any, caller: str) -> Model:
    """
    What `create_model` and every public builder do: check `kwargs` (errors name `caller`), build the
    tutorial's network, remember how, and load `weights` (see [`resolve_weights`](#resolve_weights)).
    """
    check_keywords(name, list(kwargs), caller)
    if name == "custom":
        missing = [key for key in ("n_blocks", "n_channels") if key not in kwargs]
        if missing:
            raise TypeError(
                f"create_model('custom') needs {' and '.join(missing)}, e.g. "
                f"create_model('custom', n_blocks=[3, 3, 3], n_channels=[16, 32, 64])"
            )
    chosen = resolve_weights(name, weights)
    if chosen is not None:
        # The weights decide the number of classes unless the caller asks for another head.
        kwargs = {"num_classes": len(weight_files.DATASETS[chosen.dataset].classes), **kwargs}
    model = _BUILDERS[name](**kwargs)
    # Which network this is and how it was built, for `save_pretrained` and for messages that name it.
    # (TorchScript skips the attribute: the network's code never reads it.)
    model.__dict__["network_config"] = {"network": name, "options": dict(kwargs)}
    if chosen is not None:
        state = weight_files.read_weights(chosen.record)
        what = f"the {chosen.dataset} weights of {name}"
        try:
            load_weights_into(model, state, what, name)
        except ValueError as e:
            # Options that only change the initialisation are overwritten by the weights; others change
            # the tensors, and are the likely cause.
            shaping = [
                f"{k}={v!r}" for k, v in kwargs.items() if k not in _INITIALISATION and k != "num_classes"
            ]
            hint = f"; leave out {', '.join(shaping)}" if shaping else ""
            raise ValueError(f"{e}{hint}") from None
    return model


if TYPE_CHECKING:
    # For type checkers only: `features_only=True` gives a `FeatureExtractor`, anything else a network.
    # (Inside this block the docs site does not list the two signatures as definitions of their own.)
    @overload
    def create_model(
        name: str,
        *,
        pretrained: bool = False,
        checkpoint_path: str | Path | None = None,
        features_only: Literal[False] = False,
        out_indices: None = None,
        **kwargs: Any,
    ) -> Model: ...

    @overload
    def create_model(
        name: str,
        *,
        pretrained: bool = False,
        checkpoint_path: str | Path | None = None,
        features_only: Literal[True],
        out_indices: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> FeatureExtractor: ...


def create_model(
    name: str, *, pretrained: bool = False, checkpoint_path: str | Path | None = None,
    features_only: bool = False, out_indices: Sequence[int] | None = None, **kwargs: Any,
) -> Model | FeatureExtractor:  # fmt: skip
    """
    The network called `name` (see [`list_models`](#list_models)), built with `kwargs`. `custom` needs
    `n_blocks` and `n_channels`, and takes `bottlenecks`; the other names fix their own stages.

    * `pretrained=True` loads the network's `DEFAULT` weights (`weights=` picks others)
    * `checkpoint_path` loads a weight file, a trainer checkpoint or a `save_pretrained` folder into the
      network (see [`load_checkpoint`](loading.html#load_checkpoint)), which must have been trained as
      this network

    * `features_only=True` returns the network without its classifier, giving the maps of the stages in
      `out_indices` (all by default), as timm's argument of the same name does; see
      [`FeatureExtractor`](features.html#FeatureExtractor)

    With weights and another `num_classes`, the trunk is loaded and the head is new (a warning says so).
    """
    model_builder(name)
    if out_indices is not None and not features_only:
        raise ValueError(f"out_indices={list(out_indices)} only applies with features_only=True")
    weights = kwargs.pop("weights", None)
    if pretrained:
        if weights is not None:
            raise ValueError("pass either pretrained=True or weights=, not both")
        weights = "DEFAULT"
    model = build_named(name, kwargs, weights, f"{name}()")
    if checkpoint_path is not None:
        # Imported here: `loading` builds networks by name, so it imports this module.
        from resnet.loading import load_checkpoint

        load_checkpoint(checkpoint_path, model)
    return FeatureExtractor(model, out_indices) if features_only else model


def _public(name: str, builder: Callable[..., M]) -> Callable[..., M]:
    """
    The function users call for `name`: the tutorial's `builder`, with its arguments checked by name and
    `weights=` loading trained weights.
    """

    def build(*, weights: Any = None, **kwargs: Any) -> M:
        return typing.cast(M, build_named(name, kwargs, weights, f"{name}()"))

    build.__name__ = build.__qualname__ = name
    build.__module__ = "resnet"
    build.__doc__ = (
        f"{builder.__doc__}\n\n`weights=` loads trained weights (a member of "
        f"`resnet.{weights_class_name(name)}` or its name, e.g. `'cifar10'`) where `resnet/weights/` "
        f"has them (`resnet.list_models(pretrained=True)`)."
    )
    build.__wrapped__ = builder  # type: ignore[attr-defined]
    return build


resnet20 = _public("resnet20", PRESETS["resnet20"])
resnet32 = _public("resnet32", PRESETS["resnet32"])
resnet44 = _public("resnet44", PRESETS["resnet44"])
resnet56 = _public("resnet56", PRESETS["resnet56"])
resnet110 = _public("resnet110", PRESETS["resnet110"])
resnet1202 = _public("resnet1202", PRESETS["resnet1202"])
resnet18 = _public("resnet18", PRESETS["resnet18"])
resnet34 = _public("resnet34", PRESETS["resnet34"])
resnet50 = _public("resnet50", PRESETS["resnet50"])
resnet101 = _public("resnet101", PRESETS["resnet101"])
resnet152 = _public("resnet152", PRESETS["resnet152"])
resnet9 = _public("resnet9", fast.resnet9)

_PUBLIC: dict[str, Callable[..., Model]] = {
    **{n: globals()[n] for n in PRESETS},
    **{n: _public(n, _BUILDERS[n]) for n in PLAIN_NETWORKS},
    "resnet9": resnet9,
    "custom": custom_resnet,
}
