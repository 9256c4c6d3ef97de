"""
# Choosing the number format: `amp=auto`

Whether mixed precision pays depends on the hardware: a CPU without native bf16 instructions (AMX,
AVX512-BF16) emulates it through float32 and trains several times *slower*. So `amp=auto` decides once,
before training (the README's "Number format"): bf16 on a GPU that supports it, float32 on a CPU without
native bf16, and on a CPU with it whichever format a few timed steps of the actual network found faster.
"""

import copy
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

# The values `amp` may take; `auto` is resolved to one of the others by `choose_amp`.
AMP_CHOICES = ("none", "auto", "bf16", "fp16")
AMP_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Seconds per training step in a format (`None`: float32).
Measure = Callable[[torch.dtype | None], float]


@dataclass(frozen=True)
class AmpChoice:
    """What was asked for, what a run uses, why, and the seconds per step of each format if measured."""

    requested: str
    chosen: str
    reason: str
    measured_s: dict[str, float] | None = None

    @property
    def dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.chosen]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of Linux's `/proc/cpuinfo` (empty elsewhere)."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return {}
    return {
        key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first.splitlines())
    }


def cpu_bf16_units() -> list[str]:
    """The native bf16 instruction sets Linux reports for this CPU (elsewhere none: `auto` keeps float32)."""
    flags = _cpuinfo().get("flags", "").split()
    return [name for flag, name in (("amx_tile", "AMX"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]


def machine(device: torch.device) -> dict[str, str | int]:
    """The one description of where a run computes, for the console and every results file."""
    threads = torch.get_num_threads()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "device": f"{device} ({gpu})" if gpu else f"cpu ({threads} threads)",
        "cpu": _cpuinfo().get("model name") or platform.processor() or platform.machine(),
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def choose_amp(requested: str, device: torch.device, measure: Measure | None = None) -> AmpChoice:
    """
    Resolve `amp=auto` for `device`; any other value is returned as chosen. Without a `measure` a CPU
    with native bf16 keeps float32: an unmeasured guess is not a choice we want to report.
    """
    if requested != "auto":
        return AmpChoice(requested, requested, "set explicitly")
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return AmpChoice("auto", "bf16", f"{gpu} supports bf16")
        return AmpChoice("auto", "none", f"{gpu} has no bf16 support")
    if device.type != "cpu":
        return AmpChoice("auto", "none", f"no automatic choice for {device.type} devices")
    cpu, units = machine(device)["cpu"], "+".join(cpu_bf16_units())
    if not units:
        emulated = "bf16 would be emulated and slower than float32"
        return AmpChoice("auto", "none", f"{cpu} has no native bf16 (no AMX, no AVX512-BF16): {emulated}")
    if measure is None:
        return AmpChoice("auto", "none", f"{cpu} has {units}, but no measurement was made")
    measured = {"none": measure(None), "bf16": measure(torch.bfloat16)}
    chosen = min(measured, key=measured.__getitem__)
    ms = {name: f"{seconds * 1e3:.1f} ms" for name, seconds in measured.items()}
    reason = f"{cpu} has {units}; a training step took {ms['bf16']} in bf16 and {ms['none']} in float32"
    return AmpChoice("auto", chosen, reason, measured)


def step_timer(
    model: nn.Module, batch_shape: tuple[int, ...], num_classes: int, device: torch.device,
    channels_last: bool, *, warmup: int = 2, repeats: int = 4,
) -> Measure:  # fmt: skip
    """
    A `measure` for `choose_amp`: seconds per forward + backward step of a *copy* of `model` on random
    images from a private generator, so that `amp=auto` changes nothing the run computes.
    """

    def measure(dtype: torch.dtype | None) -> float:
        probe = copy.deepcopy(model).train()
        generator = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(batch_shape, generator=generator).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (batch_shape[0],), generator=generator).to(device)
        times = []
        for i in range(warmup + repeats):
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = nn.functional.cross_entropy(probe(x), y)
            loss.backward()
            probe.zero_grad(set_to_none=True)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        return min(times)

    return measure
