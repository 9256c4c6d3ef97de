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
with the package (`resnet20(weights="cifar10")`).

The package ships type information (`py.typed`), and `resnet.__version__` is the installed version.
"""

from importlib.metadata import PackageNotFoundError, version

from resnet.fast import ConvPool, ResNet9, resnet9
from resnet.features import FeatureExtractor, FeatureInfo
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
    zero_init_residual_branches,
)
from resnet.pretrained import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, normalize_cifar10
from resnet.quantize import quantize_int8
from resnet.registry import PLAIN_NETWORKS, create_model, custom_resnet, list_models, model_builder
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
    "__version__",
]
