"""
# The settings of how a run computes

The device, number format, compilation, logging and seed, which the data's and the tutorial's
configurations extend; apart, so that every layer of the trainer can import it.
"""

import platform
from typing import Any

import torch
from labml.configs import option
from labml_helpers.device import DeviceConfigs

from experiments.distributed import World
from experiments.options import RecordedOptions


class RunConfigs(RecordedOptions):
    """Apart from `seed` and the averages, these change how fast and where a run computes, not what."""

    device: torch.device
    # Mixed precision: none, bf16, fp16, or auto (`experiments/precision.py`).
    amp: str = "none"
    # NHWC memory layout; `auto` turns it on where it was measured to win (CUDA, x86 CPUs: BENCHMARKS.md).
    channels_last: bool
    compile: bool = False
    # `torch.compile`'s mode, one of `COMPILE_MODES`.
    compile_mode: str = "default"
    # Batch-norm statistics over all processes (GPUs only).
    sync_bn: bool = False
    # Evaluate (and checkpoint, and report) an exponential moving average of the weights with this
    # decay per step, e.g. 0.999 (`average.WeightAverage`); 0 turns it off.
    ema_decay: float = 0.0
    # Lookahead (`average.Lookahead`): every `lookahead_every` steps (0 turns it off) the weights are
    # pulled back to a slow average of themselves.
    lookahead_every: int = 0
    # How much of its past the slow average keeps at the end of the run (airbench's 0.95**5).
    lookahead_decay: float = 0.95**5
    # The console's status line every this many steps (a GPU would otherwise wait for the host every
    # step); when the output is not a terminal, at most once every `progress_every_s` seconds.
    log_every: int = 20
    progress_every_s: float = 30.0
    # Data order, augmentation and initial weights.
    seed: int = 5
    # Set by the trainer, not by users: this process's place among data-parallel processes.
    world: Any = World()


# `torch.compile`'s modes; `CUDA_GRAPHS_MODE` records each step as CUDA graphs to replay.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPHS_MODE = "reduce-overhead"


def uses_cuda_graphs(compile: bool, compile_mode: str) -> bool:
    """Whether a run with these settings replays CUDA graphs (the command line and the trainer ask)."""
    return bool(compile) and compile_mode == CUDA_GRAPHS_MODE


@option(RunConfigs.device)
def _device(c: RunConfigs) -> DeviceConfigs:
    # A fresh sub-configuration per run; a class-level default would be shared between runs.
    return DeviceConfigs()


@option(RunConfigs.channels_last, "auto")
def _channels_last_auto(c: RunConfigs) -> bool:
    # On CUDA the tensor-core convolutions want NHWC; on x86 CPUs oneDNN's NHWC kernels were measured
    # faster for training and evaluation. Other CPUs were not measured, so they keep PyTorch's layout.
    if c.device.type == "cuda":
        return True
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
    return c.device.type == "cpu" and x86 and torch.backends.mkldnn.is_available()


# The sub-configuration reachable as `device.*` on the command line.
NESTED_CONFIGS: dict[str, type] = {"device": DeviceConfigs}
