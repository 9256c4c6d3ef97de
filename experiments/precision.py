"""
# Choosing the number format: `amp=auto`

Mixed precision trades accuracy of the arithmetic for speed, and whether the trade pays depends on
the hardware more than on anything else:

* on a GPU with bf16 units it is nearly always faster, and bf16 keeps float32's exponent range, so no
  loss scaling is needed;
* on a CPU with native bf16 instructions (Intel's AMX tiles or AVX512-BF16) oneDNN runs bf16
  convolutions much faster than float32;
* on a CPU without them, autocast still works but every bf16 operation is emulated through float32
  conversions, which makes training several times *slower*.

So `amp=auto` decides per machine, once, before training: on CUDA it takes bf16 where the GPU supports
it; on a CPU without native bf16 it keeps float32 without measuring anything (there is nothing to win);
on a CPU with native bf16 it times a few training steps of the actual network in both formats and keeps
the faster one. The decision and its reason go into `results.json` (`amp_choice`), so a reported speed
always says which format produced it. `amp=none`, `bf16` or `fp16` skip the decision.
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


@dataclass(frozen=True)
class AmpChoice:
    """What was asked for, what a run uses, and why."""

    requested: str
    chosen: str
    reason: str
    # Seconds per timed step in each format, when the choice was measured.
    measured_s: dict[str, float] | None = None

    @property
    def dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.chosen]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of Linux's `/proc/cpuinfo` (empty elsewhere)."""
    entries: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            entries[key.strip()] = value.strip()
    except OSError:
        pass
    return entries


def cpu_bf16_units() -> list[str]:
    """
    The native bf16 instruction sets this CPU has (empty when bf16 would be emulated), from the flags
    the kernel reports. Where there are none to read (not Linux) the answer is none, and `auto` keeps
    float32: the safe side, since it is never slower than emulated bf16.
    """
    flags = _cpuinfo().get("flags", "").split()
    return [name for flag, name in (("amx_tile", "AMX"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]


def machine(device: torch.device) -> dict[str, str | int]:
    """
    The one description of where a run computes, for the console and every results file: the device
    (with the GPU's name, or the CPU threads), the CPU's model name, the thread count and the software.
    """
    cpu = _cpuinfo().get("model name") or platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    name = (
        f"{device} ({torch.cuda.get_device_name(device)})"
        if device.type == "cuda"
        else f"cpu ({threads} threads)"
    )
    return {
        "device": name,
        "cpu": cpu,
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def choose_amp(requested: str, device: torch.device, measure: "Measure | None" = None) -> AmpChoice:
    """
    Resolve `amp=auto` for `device`; any other value is returned as chosen. `measure(dtype)` returns
    seconds per training step in that format (`None` is float32); without it a CPU with native bf16
    keeps float32, because an unmeasured guess is not a choice we want to report.
    """
    if requested != "auto":
        return AmpChoice(requested, requested, "set explicitly")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return AmpChoice("auto", "bf16", f"{torch.cuda.get_device_name(device)} supports bf16")
        return AmpChoice("auto", "none", f"{torch.cuda.get_device_name(device)} has no bf16 support")
    if device.type != "cpu":
        return AmpChoice("auto", "none", f"no automatic choice for {device.type} devices")
    units = cpu_bf16_units()
    if not units:
        return AmpChoice(
            "auto",
            "none",
            f"{machine(device)['cpu']} has no native bf16 (no AMX, no AVX512-BF16): "
            f"bf16 would be emulated and slower than float32",
        )
    if measure is None:
        return AmpChoice(
            "auto", "none", f"{machine(device)['cpu']} has {'+'.join(units)}, but no measurement was made"
        )
    fp32_s, bf16_s = measure(None), measure(torch.bfloat16)
    measured = {"none": fp32_s, "bf16": bf16_s}
    chosen = "bf16" if bf16_s < fp32_s else "none"
    return AmpChoice(
        "auto",
        chosen,
        f"{machine(device)['cpu']} has {'+'.join(units)}; a training step took "
        f"{bf16_s * 1e3:.1f} ms in bf16 and {fp32_s * 1e3:.1f} ms in float32",
        measured,
    )


Measure = Callable[[torch.dtype | None], float]


def step_timer(
    model: nn.Module, batch_shape: tuple[int, ...], num_classes: int, device: torch.device,
    channels_last: bool, *, warmup: int = 2, repeats: int = 4,
) -> Measure:  # fmt: skip
    """
    A `measure` for `choose_amp`: seconds per forward + backward step of a *copy* of `model` on random
    images. The copy and a private random generator leave the run's weights, batch-norm statistics and
    random streams exactly as they were, so `amp=auto` does not change what the run computes.
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
