"""
# ResNet, annotated

`resnet.model` is the tutorial: it walks through *Deep Residual Learning for Image Recognition* and
builds every module on the way. This package re-exports what users import, and adds
`resnet.torchvision_interop`, to move weights between these models and torchvision's; `resnet.fast`, a
fast DAWNBench-style ResNet-9 for CIFAR-10 that is not one of the paper's networks; `resnet.registry`,
which builds every network by name (`create_model("plain56")`, `list_models()`); and
`resnet.features`, which describes the feature maps a detection or segmentation head attaches to and
returns them (`FeatureExtractor`, timm's `features_only`); `resnet.quantize`, int8 inference on the CPU
(`quantize_int8`, with the `[int8]` extra); and
`resnet.pretrained`, the CIFAR-10 input format (`normalize_cifar10`) and the trained weights that ship
with the package (`resnet20(weights="cifar10")`); and `resnet.loading`, which builds a network from a
trainer checkpoint, a weight file or a Hugging Face-style folder (`load_checkpoint`, `save_pretrained`,
`from_pretrained`).

The builders exported here (`resnet.resnet56`) are the tutorial's (`resnet.model.resnet56`) with their
keyword arguments checked by name and `weights=` added (see `resnet/registry.py`). Each network with
trained weights has an enum of them, `resnet.ResNet20_Weights`; these are made from the files in
`resnet/weights/` when first asked for, so they are attributes of the package without being listed here.

The package ships type information (`py.typed`), and `resnet.__version__` is the installed version.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from resnet.fast import ConvPool, ResNet9
from resnet.features import FeatureExtractor, FeatureInfo
from resnet.loading import LoadError, from_pretrained, load_checkpoint, save_pretrained
from resnet.model import (
    PRESETS,
    SHORTCUTS,
    STEMS,
    BottleneckResidualBlock,
    ResidualBlock,
    ResNetBase,
    ResNetClassifier,
    ResNetStem,
    ShortcutProjection,
    ZeroPadShortcut,
    cifar_resnet,
    imagenet_resnet,
    make_shortcut,
    zero_init_residual_branches,
)
from resnet.pretrained import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    ImageTransform,
    WeightsError,
    normalize_cifar10,
)
from resnet.quantize import quantize_int8
from resnet.registry import (
    PLAIN_NETWORKS,
    WeightsEnum,
    create_model,
    custom_resnet,
    get_model_weights,
    get_weight,
    list_models,
    model_builder,
    resnet9,
    resnet18,
    resnet20,
    resnet32,
    resnet34,
    resnet44,
    resnet50,
    resnet56,
    resnet101,
    resnet110,
    resnet152,
    resnet1202,
    weights_class_name,
)
from resnet.torchvision_interop import from_torchvision, to_torchvision

try:
    __version__ = version("resnet-annotated")
except PackageNotFoundError:
    # Imported from a checkout that was never installed (torch.hub does this): no metadata to read.
    __version__ = "0+unknown"

__all__ = [
    "PRESETS",
    "SHORTCUTS",
    "STEMS",
    "BottleneckResidualBlock",
    "ResidualBlock",
    "ResNetBase",
    "ResNetClassifier",
    "ResNetStem",
    "ShortcutProjection",
    "ZeroPadShortcut",
    "cifar_resnet",
    "imagenet_resnet",
    "make_shortcut",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet101",
    "resnet110",
    "resnet152",
    "resnet1202",
    "from_torchvision",
    "to_torchvision",
    "ConvPool",
    "ResNet9",
    "resnet9",
    "zero_init_residual_branches",
    "FeatureInfo",
    "FeatureExtractor",
    "quantize_int8",
    "PLAIN_NETWORKS",
    "create_model",
    "custom_resnet",
    "list_models",
    "model_builder",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "normalize_cifar10",
    "ImageTransform",
    "WeightsError",
    "WeightsEnum",
    "get_model_weights",
    "get_weight",
    "LoadError",
    "load_checkpoint",
    "save_pretrained",
    "from_pretrained",
    "__version__",
]


def _weights_enums() -> dict[str, str]:
    """`ResNet20_Weights` -> `resnet20`, for every network with weights on disk now."""
    from resnet.registry import pretrained_networks

    return {weights_class_name(network): network for network in pretrained_networks()}


def __getattr__(name: str) -> Any:
    # PEP 562: `resnet.ResNet56_Weights` exists as soon as resnet56's weights are in resnet/weights/.
    network = _weights_enums().get(name)
    if network is None:
        raise AttributeError(f"module 'resnet' has no attribute {name!r}")
    return get_model_weights(network)


def __dir__() -> list[str]:
    return sorted({*globals(), *_weights_enums()})
