"""
# torch.hub entry points

`torch.hub.load("<owner>/<repo>", "resnet56")` (or `torch.hub.load(checkout, "resnet56",
source="local")`) imports this file and calls the function named after the network. There is one per
name in `resnet.list_models()`, each calling `resnet.create_model` with the keyword arguments given to
`torch.hub.load`. Nothing is downloaded: every network starts from its initialisation, except with
`weights="cifar10"` (or `pretrained=True`) for a network whose trained weights ship inside the
repository (`resnet/weights/`; `resnet.list_models(pretrained=True)` names them), which loads those.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import resnet as _resnet

if TYPE_CHECKING:
    # Only for annotations: torch.hub lists every public callable of this module as a network.
    from collections.abc import Callable
    from typing import Any

# What torch.hub checks is importable before it imports the networks. The models are labml-helpers
# modules, and the trained weights are safetensors files, so those two packages are needed too.
dependencies = ["torch", "labml_helpers", "safetensors"]


def _entry(name: str) -> Callable[..., _resnet.registry.Model]:
    def build(**kwargs: Any) -> _resnet.registry.Model:
        return _resnet.create_model(name, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = _resnet.model_builder(name).__doc__
    return build


# torch.hub finds an entry by its module-level name, so each network becomes one here.
globals().update({_name: _entry(_name) for _name in _resnet.list_models()})
