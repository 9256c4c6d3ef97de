r"""
# An exponential moving average of the weights

Near the end of training SGD does not settle on one point: every mini-batch pushes the weights a little
in its own direction, so the last iterate sits somewhere on a noisy path around a good region. An
exponential moving average (EMA) of the iterates,

$$\bar\theta_t = \beta_t \, \bar\theta_{t-1} + (1 - \beta_t) \, \theta_t,$$

averages that noise out, and evaluating $\bar\theta$ instead of $\theta$ is a common, almost free gain
in fast CIFAR-10 training, where the run is short and the learning rate is still large when it ends.
The paper does not use it; the trainer turns it on with `ema_decay` > 0 and then reports, checkpoints
and `--eval`s the averaged network. Training itself always steps the raw weights $\theta$.

**Batch-norm statistics** are buffers, not parameters, but they belong to the weights they were
measured with, so they are averaged the same way. Integer buffers (the batch counter) are copied.

**Warm-up.** With $\beta = 0.999$ the average would remember the random initial weights for thousands
of steps, longer than a short run. Like TensorFlow's `ExponentialMovingAverage` with `num_updates`, the
decay of update $t = 1, 2, \dots$ is
$$\beta_t = \min\left(\beta, \frac{t}{9 + t}\right),$$
so the first update keeps a tenth of the initial weights and the average forgets the start quickly.

The update runs on the training device, in place, with one fused `torch._foreach_lerp_` over all
floating-point tensors: $\bar\theta \leftarrow \bar\theta + (1 - \beta_t)(\theta - \bar\theta)$ is the
same average written as a linear interpolation.
"""

import copy
from typing import Any

import torch
import torch.nn as nn


class WeightAverage:
    """
    The averaged copy of a network.

    * `model`: the network being trained; the average starts as a copy of its current weights, on the
      same device and in the same memory layout.
    * `decay`: $\\beta$, the largest fraction of the old average kept per update, in $(0, 1)$.

    `self.model` is the averaged network, ready to evaluate (its parameters do not require gradients).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}; 0.999 is a common choice")
        self.decay = float(decay)
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self.updates = 0

    def decay_at(self, update: int) -> float:
        """$\\beta_t$ for update number `update` (1 for the first update)."""
        return min(self.decay, update / (9.0 + update))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights; call once after every optimizer step."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        averaged, current, averaged_int, current_int = [], [], [], []
        # The two modules have the same structure, so their tensors pair up in order.
        for mine, theirs in zip(_tensors(self.model), _tensors(model), strict=True):
            if mine.is_floating_point():
                averaged.append(mine)
                current.append(theirs)
            else:
                averaged_int.append(mine)
                current_int.append(theirs)
        if averaged:
            torch._foreach_lerp_(averaged, current, weight)
        for mine, theirs in zip(averaged_int, current_int, strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and the update count (tensors and an int: weights-only loadable)."""
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]
