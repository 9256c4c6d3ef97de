"""
# The weight average

An exponential moving average of the weights, which a run evaluates and saves instead of the trained
weights when `ema_decay` > 0 ([`trainer.py`](trainer.html) updates it after each step).
"""

from typing import Any

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

Tensors = list[torch.Tensor] | tuple[torch.Tensor, ...]


class WeightAverage(AveragedModel):
    r"""
    An exponential moving average of the weights, $\bar\theta_t = \beta_t \bar\theta_{t-1} + (1 - \beta_t)
    \theta_t$, evaluated, checkpointed and `--eval`ed instead of the trained weights when `ema_decay` > 0:
    near the end of a short schedule SGD's last iterate still jitters, and the average smooths that out.
    PyTorch's `AveragedModel` keeps the copy; we add a **warm-up**, $\beta_t = \min(\beta, t / (9 + t))$,
    since with $\beta = 0.999$ the average would remember early weights longer than a short run lasts, and
    average batch norm's **buffers** with their weights (its integer batch counter is copied).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}; 0.999 is a common choice")
        super().__init__(model, multi_avg_fn=self._average, use_buffers=True)
        self.module.requires_grad_(False)
        self.decay, self.updates = float(decay), 0

    def decay_at(self, update: int) -> float:
        """$\\beta_t$ for update number `update` (the first, `update=1`, copies)."""
        return 0.0 if update <= 1 else min(self.decay, update / (9.0 + update))

    def _average(self, averaged: Tensors, current: Tensors, count: torch.Tensor | int) -> None:
        if averaged[0].is_floating_point():
            get_ema_multi_avg_fn(self.decay_at(self.updates))(averaged, current, count)
        else:
            for mine, theirs in zip(averaged, current, strict=True):
                mine.copy_(theirs)

    def update(self, model: nn.Module) -> None:
        self.updates += 1
        self.update_parameters(model)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The averaged network's own state (loadable into a bare network) and the update count."""
        return {"model": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])
        self.n_averaged.fill_(self.updates)
