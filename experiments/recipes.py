"""
# Training recipes and learning-rate schedules

A *recipe* is everything about training that is not the network (`resnet9` also picks its network).
Its `cuda` entry applies on a GPU only (bf16 is slow on most CPUs), and anything typed beats it. The
README lists each recipe's settings; RESULTS.md has what each reaches and the runs that chose it.

**`paper`** (§4.2) is the [configuration's](cifar10.html#Configs) defaults. Its drops of the rate, at
32k and 48k of 64k iterations, are fractions of the run (`lr_milestones=[0.5, 0.75]`), so that a
shortened run keeps the paper's shape instead of staying at 0.1. ResNet-110's warm-up at 0.01 "until
the training error is below 80% (about 400 iterations), and then go back to 0.1" is
`lr_warmup_steps=400`; [`StepSchedule`](#StepSchedule) does go back (a popular reproduction forgets
to), and refuses a warm-up that would reach the first drop and so never train at the full rate.

**`fast`** (batch 512 to keep a GPU busy, the rate scaled to 0.4) and **`cpu`** (the paper's ResNet-20
at batch 128 and rate 0.2, sized for half an hour on two CPU cores with native bf16, its settings
chosen on the 45k/5k validation split only) train 30 and 39 epochs, respectively, instead of about 164, the
time budget, and depart from §4.2 in the same ways, all for a short run:

* **a linear warm-up, then a cosine decay to 0**: no epochs wasted at a rate too high or too low, and
  the larger rate cannot blow up the first steps. A warm-up that fills half a shortened run is warned
  about once ([`WarmupThenDecay`](#WarmupThenDecay)), not rescaled behind the user's back;
* **Nesterov momentum**, which tolerates the larger rate a little better;
* **weight decay $5 \\times 10^{-4}$ and label smoothing 0.1**: a short run wants stronger
  regularisation, and softened targets discourage over-confident logits;
* **test-time augmentation** over each image and its mirror image; `cpu` adds one-pixel shifts (six
  views, each one training could have drawn), scores the test set only after the last epoch, and
  takes bf16 where the CPU has it natively and a timed step is faster (`amp=auto`).

**`resnet9`** is the ResNet-9 of [`resnet/fast.py`](../resnet/fast.py) with the 24-epoch schedule
David Page trained it with to 94%: the rate climbs linearly from 0 over the first 5/24 of the run
(`lr_warmup_fraction`, so it stretches with `--epochs`), then falls linearly to 0; $8 \\times 8$
Cutout. Label smoothing 0.2 and flip TTA come from his later runs; his rate and weight decay, given for
a summed loss, are converted for our mean. Crops pad with black, as the ResNet paper's do; Cutout
squares may be clipped at the edges, as DeVries & Taylor's are; the epoch's last, smaller batch is
trained on too. The weight average (`ema_decay`) is off in every recipe: a decay to 0 already ends
with tiny steps.
"""

import math
import warnings
from collections.abc import Callable, Collection
from typing import Any

import torch
from labml.configs import option

from experiments.errors import UsageError
from experiments.options import RecordedOptions, Rule, at_least, within

# What a short run changes in §4.2, the same for `fast` and `cpu` (the docstring says why).
SHORT_RUN = {
    "iterations": "from_epochs",
    "optimizer.nesterov": True,
    "optimizer.weight_decay": 5e-4,
    "scheduler": "warmup_cosine",
    "lr_warmup_steps": 200,
    "lr_warmup_factor": 0.1,
    "label_smoothing": 0.1,
    "flip_tta": True,
}
ON_GPU = {"amp": "bf16", "channels_last": True}
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    "fast": {"batch_size": 512, "epochs": 30, "optimizer.learning_rate": 0.4, **SHORT_RUN, "cuda": ON_GPU},
    "cpu": {
        "batch_size": 128,
        # What half an hour holds, evaluation and all, on two cores with AMX (~1,190 images/s); a slower
        # CPU takes longer rather than training less (RESULTS.md has the runs that chose it).
        "epochs": 39,
        "optimizer.learning_rate": 0.2,
        **SHORT_RUN,
        "shift_tta": 1,
        "amp": "auto",
        # Scoring the test set after every epoch would cost the half hour a minute or more.
        "eval_every_epoch": False,
    },
    "resnet9": {
        "model": "resnet9",
        "batch_size": 512,
        "epochs": 24,
        "iterations": "from_epochs",
        "optimizer.learning_rate": 0.4,
        "optimizer.nesterov": True,
        "optimizer.weight_decay": 5e-4,
        "scheduler": "warmup_linear",
        "lr_warmup_steps": "from_fraction",
        "lr_warmup_fraction": 5 / 24,
        "lr_warmup_factor": 0.0,
        "label_smoothing": 0.2,
        "cutout": 8,
        "flip_tta": True,
        "cuda": ON_GPU,
    },
}

# What each recipe is for, one line each in `--help`; `--help-recipes` reads the settings from `RECIPES`.
RECIPE_PURPOSES = {
    "paper": "He et al. §4.2, the configuration's defaults",
    "fast": f"a short schedule for a GPU ({RECIPES['fast']['epochs']} epochs)",
    "cpu": f"the paper's ResNet-20 in a run short enough for a small CPU ({RECIPES['cpu']['epochs']} epochs)",
    "resnet9": "the DAWNBench ResNet-9 with its 24-epoch schedule",
}
# The defaults `--help-recipes` lists for the paper's recipe, read from the configuration classes.
PAPER_SETTINGS = (
    "batch_size", "optimizer.learning_rate", "optimizer.momentum", "optimizer.weight_decay", "lr_milestones",
    "lr_decay", "iterations",
)  # fmt: skip


def recipe_values(recipe: dict[str, Any], typed: dict[str, Any], *, on_cuda: bool) -> dict[str, Any]:
    """The settings a recipe gives a run, before what was `typed` (which beats them all) is laid over."""
    values = dict(recipe)
    cuda_values = values.pop("cuda", {})
    if on_cuda:
        values.update(cuda_values)
    if typed.get("iterations", "from_epochs") != "from_epochs":
        # An explicit iteration count beats the recipe's epoch count.
        values.pop("iterations", None)
        values.pop("epochs", None)
    return values


def recipe_summary(recipes: dict[str, dict[str, Any]]) -> list[str]:
    """One line per recipe: its name and what it is for."""
    width = max(map(len, recipes))
    return [f"{name:<{width}}  {RECIPE_PURPOSES.get(name, '')}".rstrip() for name in recipes]


def recipe_settings(recipes: dict[str, dict[str, Any]], paper: dict[str, Any]) -> str:
    """Every recipe with the settings it changes and adds on CUDA; the paper's keeps `paper`'s defaults."""

    def listed(settings: dict[str, Any]) -> str:
        return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items())

    parts = []
    for name, recipe in recipes.items():
        plain = {key: value for key, value in recipe.items() if key != "cuda"}
        keeps = f"\n  keeps {listed(paper)}" if name == "paper" else ""
        sets = f"\n  sets {listed(plain)}" if plain else ""
        cuda = f"\n  and on CUDA {listed(recipe['cuda'])}" if "cuda" in recipe else ""
        parts.append(f"{name}: {RECIPE_PURPOSES.get(name, '')}{keeps}{sets}{cuda}")
    return "\n".join(parts)


# What the length, schedule and optimizer settings may be, checked by the command line.
SCHEDULE_RULES: dict[str, Rule] = {
    **dict.fromkeys(("epochs", "iterations"), at_least(1)),
    "lr_warmup_steps": at_least(0),
    "lr_warmup_fraction": within(0, 1),
    "lr_warmup_factor": within(0, 1, high_inclusive=True),
    "lr_decay": within(0, 1, high_inclusive=True),
    "lr_milestones": lambda v: (
        None
        if all(0 < x < 1 for x in v)
        else "must hold fractions of the run between 0 and 1, e.g. [0.5,0.75] (32k and 48k of 64k)"
    ),
    "label_smoothing": within(0, 1),
    "optimizer.learning_rate": lambda v: None if v > 0 else "must be positive",
    "optimizer.momentum": within(0, 1),
    "optimizer.weight_decay": at_least(0),
}


def check_schedule_settings(get: Callable[[str], Any], typed: Collection[str]) -> None:
    """The schedule's and optimizer's settings together; `typed` are the keys the user gave."""
    if get("optimizer.nesterov") and get("optimizer.momentum") <= 0:
        raise UsageError("optimizer.nesterov needs a positive optimizer.momentum")
    # A typed fraction the schedule would silently ignore (a recipe's own gives way to typed steps).
    if "lr_warmup_fraction" in typed and get("lr_warmup_steps") != "from_fraction":
        raise UsageError(
            "lr_warmup_fraction only applies with lr_warmup_steps=from_fraction; set both, or give "
            "lr_warmup_steps a number of steps"
        )


class SGDConfigs(RecordedOptions):
    """
    ## The optimizer

    SGD with momentum 0.9 and weight decay $10^{-4}$ (§3.4, §4.2), set as `optimizer.*`
    (`optimizer.learning_rate=0.05`). On a GPU a fused kernel does the same arithmetic in one launch.
    """

    optimizer: torch.optim.SGD
    parameters: Any
    # The base learning rate, before the schedule's multiplier.
    learning_rate: float = 0.1
    # Momentum of the update (§4.2: 0.9).
    momentum: float = 0.9
    # L2 penalty on the weights (§4.2: 0.0001).
    weight_decay: float = 1e-4
    # Nesterov's form of momentum (the fast recipes use it).
    nesterov: bool = False

    def __init__(self) -> None:
        super().__init__(_primary="optimizer")


@option(SGDConfigs.optimizer, "SGD")
def _sgd(c: SGDConfigs) -> torch.optim.SGD:
    parameters = list(c.parameters)
    return torch.optim.SGD(
        parameters,
        lr=c.learning_rate,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        nesterov=c.nesterov,
        fused=parameters[0].is_cuda or None,
    )


class ScheduleError(UsageError):
    """A learning-rate schedule whose settings contradict each other: a bad setting, exit status 2."""


class ScheduleWarning(UserWarning):
    """A schedule that runs as asked but probably not as meant (a warm-up that fills most of the run)."""


class StepSchedule:
    """
    ## Step decay (the paper's schedule)

    A multiplier for the base learning rate: `decay` to the power of the `milestones` passed, and
    `warmup_factor` for the first `warmup_steps` (the ResNet-110 warm-up of §4.2). A plain object, not a
    lambda, so that `LambdaLR.state_dict()` stores its numbers and checkpoints load with `weights_only`.
    """

    def __init__(
        self, milestones: list[int], decay: float, warmup_steps: int = 0, warmup_factor: float = 0.1
    ):
        self.milestones = sorted(int(m) for m in milestones)
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        # A warm-up reaching the first drop would go straight into the decayed rate, never the full one.
        hidden = self.milestones and self.decay != 1.0 and self.warmup_steps >= self.milestones[0]
        if self.warmup_steps and hidden:
            raise ScheduleError(
                f"lr_warmup_steps={self.warmup_steps} does not end before the first drop of the rate, at "
                f"step {self.milestones[0]} (lr_milestones are fractions of the run's iterations): give "
                f"fewer warm-up steps, or more epochs so that the drop comes later"
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_factor
        return self.decay ** sum(step >= milestone for milestone in self.milestones)


class WarmupThenDecay:
    """
    ## Linear warm-up, then a decay to zero

    The multiplier climbs linearly from `warmup_factor` to 1 over `warmup_steps`, then a subclass's
    `decay(progress)` (progress from 0 to 1) takes it down to 0 at `total_steps`, where it stays.
    """

    decay: Callable[[float], float]

    def __init__(self, total_steps: int, warmup_steps: int = 0, warmup_factor: float = 0.1):
        self.total_steps = int(total_steps)
        self.warmup_steps = min(int(warmup_steps), self.total_steps)
        self.warmup_factor = float(warmup_factor)
        if warmup_steps and 2 * warmup_steps >= total_steps:
            # Warned, not rescaled: the schedule stays what was asked for, and the warning says what fits.
            decay = "never decays" if warmup_steps >= total_steps else "decays only in the second half"
            warnings.warn(
                f"lr_warmup_steps={warmup_steps} is at least half of this run's {total_steps} steps, so the "
                f"learning rate {decay}; give fewer warm-up steps (e.g. lr_warmup_steps={total_steps // 20}) "
                "or train for longer",
                ScheduleWarning,
                stacklevel=2,
            )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        return self.decay(min(1.0, (step - self.warmup_steps) / decay_steps))


class WarmupCosineSchedule(WarmupThenDecay):
    """Half a cosine down to 0 after the warm-up: most of the run at a high rate, then a smooth anneal."""

    def decay(self, progress: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupLinearSchedule(WarmupThenDecay):
    """The DAWNBench recipes' triangle: a straight line down to 0, after a warm-up from 0 by default."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, warmup_factor: float = 0.0):
        super().__init__(total_steps, warmup_steps, warmup_factor)

    def decay(self, progress: float) -> float:
        return 1.0 - progress
