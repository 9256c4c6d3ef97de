"""
# The common base class

Every module of the library is a labml-helpers `Module`, as in labml's original implementation, so that
the networks fit into labml experiments that expect one. This file keeps that plumbing out of the
tutorial in [`model.py`](model.py).
"""

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    # labml-helpers ships no type information. Its `Module` is an `nn.Module` with one more property,
    # so type checkers are told it is one, and our classes keep `nn.Module`'s types.
    LabmlModule = nn.Module
else:
    from labml_helpers.module import Module as LabmlModule


class Module(LabmlModule):
    """
    labml-helpers adds a `device` property whose body uses a `try` block and raises when a module has no
    parameters. TorchScript compiles every property it finds, and it can compile neither, so we tell it
    to leave `device` alone and give a version that never raises while the scripting code looks at the
    module.
    """

    __jit_unused_properties__ = ["device"]

    @property
    def device(self) -> torch.device | None:
        """The device of the first parameter or buffer; `None` for a module that holds neither."""
        for parameter in self.parameters():
            return parameter.device
        for buffer in self.buffers():
            return buffer.device
        return None
