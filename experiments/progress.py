"""
# Where a run is, and what it has measured so far

A run must be able to stop after any step and later continue as if it never had. Besides the weights
and the optimizer that needs one small record: the position (the next step is batch `batch` of epoch
`epoch`, and `step` steps have been taken in all), the sums of the epoch in progress (so a resumed epoch
reports the same mean loss as an uninterrupted one), the per-epoch history and the clocks. This object
holds exactly that and nothing else, and saves and restores it like any PyTorch module does
(`state_dict`/`load_state_dict`); [`checkpoint.py`](checkpoint.html) puts it into the checkpoint.

**The clocks.** `train_time_s` counts only the time spent in training steps: it stops while the model
is evaluated and while a checkpoint is written, and an epoch that was interrupted and resumed counts the
part trained before the stop too. `elapsed_s` is wall time since the run first started, across
resumptions. `train_images` counts images trained on by all processes together.
"""

import time
from typing import Any

import torch


class Progress:
    """The position, the partial epoch's sums, the history and the clocks of one run."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.step = 0
        self.epoch = 0
        self.batch = 0
        self.sums = self._zero_sums()
        # One record per finished epoch, as written to `metrics.jsonl`.
        self.history: list[dict[str, Any]] = []
        self.train_time_s = 0.0
        self.train_images = 0
        self._elapsed_before = 0.0
        self._started = time.perf_counter()

    def _zero_sums(self) -> dict[str, torch.Tensor]:
        # Summed on the device as float64/int64: the epoch's mean is exact, and no step waits for the host.
        return {
            "loss": torch.zeros((), dtype=torch.float64, device=self.device),
            "correct": torch.zeros((), dtype=torch.int64, device=self.device),
            "seen": torch.zeros((), dtype=torch.int64, device=self.device),
        }

    def add_step(
        self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, world_size: int
    ) -> None:
        """Count one finished training step of `labels.shape[0]` images on this process."""
        n = labels.shape[0]
        self.sums["loss"] += loss.double() * n
        self.sums["correct"] += (logits.detach().argmax(dim=1) == labels).sum()
        self.sums["seen"] += n
        self.train_images += n * world_size
        self.step += 1
        self.batch += 1

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Keep the finished epoch's record and start the next epoch at its first batch."""
        self.history.append(record)
        self.epoch += 1
        self.batch = 0
        self.sums = self._zero_sums()

    @property
    def elapsed_s(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._started

    @property
    def train_images_per_s(self) -> float:
        return self.train_images / max(self.train_time_s, 1e-9)

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": {"step": self.step, "epoch": self.epoch, "batch": self.batch},
            "epoch_sums": {k: v.detach().cpu() for k, v in self.sums.items()},
            "history": list(self.history),
            "timing": {
                "elapsed_s": self.elapsed_s,
                "train_time_s": self.train_time_s,
                "train_images": self.train_images,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        position, timing = state["position"], state["timing"]
        self.step, self.epoch, self.batch = (
            int(position["step"]),
            int(position["epoch"]),
            int(position["batch"]),
        )
        self.sums = {k: v.to(self.device) for k, v in state["epoch_sums"].items()}
        self.history = list(state["history"])
        self.train_time_s = float(timing["train_time_s"])
        self.train_images = int(timing["train_images"])
        # The wall clock continues from where the stopped run left it.
        self._elapsed_before = float(timing["elapsed_s"])
        self._started = time.perf_counter()
