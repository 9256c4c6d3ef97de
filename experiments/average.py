"""
# Averaged weights

Two ways of averaging the weights along the run, both updated by [`trainer.py`](trainer.html) after
each step and saved in its checkpoints: an exponential moving average that a run evaluates and saves
instead of the trained weights (`ema_decay` > 0), and [Lookahead](#Lookahead), whose average the
trained weights are pulled back to every few steps (`lookahead_every` > 0).
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


class Lookahead:
    r"""
    ## Lookahead

    Zhang et al.'s Lookahead (2019) in the form the fastest CIFAR-10 trainers use (Keller Jordan's
    airbench): besides the network's *fast* weights $\theta$, which SGD trains, it keeps *slow* weights
    $\phi$. Every `every` steps the slow weights move part of the way towards the fast ones,
    $\phi \leftarrow \beta_t \phi + (1 - \beta_t) \theta$, and the fast ones start again from there,
    $\theta \leftarrow \phi$. After the last step the network takes the slow weights (as airbench does:
    steps since the last pull are dropped, not blended in). The pull smooths SGD's jitter inside the run,
    not only at its end as a weight average does, and the network evaluated and saved is the ordinary one.

    $\beta_t = \beta (t / T)^3$ at step $t$ of $T$: no pull while the rate is high and the weights must
    travel, and a growing one as the schedule decays (airbench's $\beta = 0.95^5$ every 5 steps).
    Batch norm's running statistics are pulled with the weights; its integer batch counter is left alone.
    """

    def __init__(self, network: nn.Module, every: int, decay: float, total_steps: int) -> None:
        if every < 1 or not 0.0 <= decay < 1.0:
            raise ValueError(f"every must be at least 1 and decay in [0, 1), got {every} and {decay}")
        self.every, self.decay, self.total_steps = int(every), float(decay), int(total_steps)
        self.slow = {k: v.detach().clone() for k, v in network.state_dict().items() if v.is_floating_point()}

    def decay_at(self, step: int) -> float:
        """$\\beta_t$ after step number `step` (counted from 1)."""
        return self.decay * min(step / self.total_steps, 1.0) ** 3

    @torch.no_grad()
    def after_step(self, network: nn.Module, step: int) -> None:
        """Pull on every `every`-th step (from 1); after the last, the network takes the slow weights."""
        pull, last = step % self.every == 0, step >= self.total_steps
        if not (pull or last):
            return
        weight = 1.0 - self.decay_at(step)
        state = network.state_dict()
        for name, slow in self.slow.items():
            if pull:
                slow.lerp_(state[name], weight)
            state[name].copy_(slow)

    def state_dict(self) -> dict[str, Any]:
        # Only the slow weights: `every` and `decay` are the run's settings, which the checkpoint keeps.
        return {"slow": dict(self.slow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["slow"].keys() != self.slow.keys():
            raise ValueError("the slow weights saved are not this network's")
        for name, value in state["slow"].items():
            self.slow[name].copy_(value)
