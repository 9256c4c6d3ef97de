"""
# Training recipes and learning-rate schedules

A *recipe* is everything about training that is not the network: batch size, optimizer settings, how
the learning rate moves, how long to train. The trainer ships four; `resnet9` also picks its network.
A recipe's `cuda` entry holds the settings it adds when the run is on a GPU (bf16 autocast and
`channels_last`; bf16 is slow on most CPUs). Anything set on the command line beats the recipe.

## `paper`: §4.2 of He et al. (2015)

SGD with momentum 0.9 and weight decay $10^{-4}$, mini-batches of 128, learning rate 0.1 divided by
10 at 32k and 48k iterations, training stopped at 64k iterations. These are the defaults of
`experiments.cifar10.Configs`, so the recipe itself changes nothing. The schedule is written in
iterations, not epochs, because that is how the paper states it: with the 45k/5k split an epoch is
352 iterations, with all 50k images it is 391, and the drops land on the same iteration either way.

The drops are stored as fractions of the run, `lr_milestones=[0.5, 0.75]`, which is what 32k and 48k
are of 64k. The paper's run is unchanged by this, and a shortened one (`--epochs 30`) keeps the
paper's shape: half the run at 0.1, a quarter at 0.01, a quarter at 0.001. Absolute milestones would
leave a 30-epoch run at 0.1 from start to end, which is a different recipe.

For ResNet-110 the paper warms up: "we use 0.01 to warm up the training until the training error is
below 80% (about 400 iterations), and then go back to 0.1". Set `lr_warmup_steps=400`
(`lr_warmup_factor` defaults to 0.1, so $0.1 \\times 0.1 = 0.01$). A popular reproduction forgets the
"go back" part and trains at 0.01 until the first drop; [`StepSchedule`](#StepSchedule) returns to the
full rate at step 400, and a test checks it. A warm-up that would last until the first drop (in a run
shortened to a few epochs, say) is refused with an error before anything is written, because the run
would then never train at the full rate.

## `fast`: a shorter schedule for people who want a good model soon

Larger batches (512) keep a GPU busy; Nesterov momentum and a linear warm-up keep the large learning
rate (0.4, the paper's 0.1 scaled with the batch) from blowing up the first steps; a cosine decay to
zero replaces the step drops, so no epoch is wasted at a rate that is too high or too low; label
smoothing 0.1 and weight decay $5 \\times 10^{-4}$ regularise the shorter run; the test-time
prediction averages the image and its mirror image (flip TTA). 30 epochs instead of about 164.

Its 200 warm-up steps (the `cpu` recipe's too) are a count, not a fraction of the run: a run cut to
fewer than 400 steps, a few epochs of a `train_subset` say, would spend half of itself or more warming
up and hardly decay. [`WarmupThenDecay`](#WarmupThenDecay) then warns once (`ScheduleWarning`, with the
numbers and a warm-up that would fit) and keeps the schedule as asked, rather than rescaling it behind
the user's back.

An exponential moving average of the weights (`ema_decay=0.999`, see `experiments/trainer.py`) can be
added to any recipe; it is **off** in all of them, after a comparison on the 45k/5k validation split
(RESULTS.md): the cosine decay already ends with tiny steps, which leaves the average less noise to
remove than a schedule that stops at a large rate would.

## `resnet9`: the DAWNBench recipe, with its network

The fast residual network of [`resnet/fast.py`](../resnet/fast.py) (about 6.6M parameters, eight
convolutions) with the 24-epoch schedule David Page trained it with to 94% (in 79 s on a V100): batch
512, Nesterov momentum, weight decay $5 \\times 10^{-4}$, a learning rate that climbs linearly from 0
to 0.4 over the first 5 epochs and falls linearly to 0 at the end (`warmup_linear`), and $8 \\times 8$
Cutout on top of the crops and flips. Label smoothing 0.2 and flip TTA come from his later, shorter runs
(26 s with 10 epochs and several more tricks); we add them because each is nearly free. (Page states
his rate per image, with a summed loss, and his weight decay multiplied by the batch size; for our
averaged loss both come out as the numbers above.) Three smaller departures: his crops pad by
reflecting the image where ours pad with black, as the ResNet paper does; his Cutout squares always lie
inside the image, while ours are centred anywhere and clipped at the edges (DeVries & Taylor's
version); and we train on the last, smaller batch of an epoch too.

The warm-up is given as a fraction of the run, 5/24 (`lr_warmup_fraction`), so
that `--epochs` or another batch size stretch or shrink it with the run instead of leaving a run that
never gets past its warm-up. This recipe sets `model=resnet9`; `--model` picks another network for it.

## `cpu`: the paper's ResNet-20 on two CPU cores

The paper's network, unchanged (ResNet-20, option A shortcuts, He initialisation, batch norm), with
the goal of the paper's ResNet-20 accuracy within half an hour of training on two CPU cores that have
native bf16 (AMX or AVX512-BF16): 25 epochs, 9,775 iterations of 128 images, 1.25M images against the
paper's 64k × 128 = 8.2M. Its settings were chosen on the 45k/5k validation split (`--valid-split`),
then the recipe was trained on all 50k images and tested once; RESULTS.md has the runs, their
commands, their times and how they compare with Table 6. A CPU without native bf16 trains in float32,
several times slower: shorten the run with `--epochs` (the schedule shrinks with it) and expect less
accuracy (RESULTS.md has such a run). Each departure from §4.2, and why:

* **25 epochs instead of 64k iterations.** The budget: 0.15× the paper's images.
* **lr 0.2 with a cosine decay to 0, after 200 warm-up steps from 0.02**, instead of 0.1 divided by 10
  at 50% and 75%. A short run has no epochs to waste at a rate that is too high or too low; the cosine
  spends most of the run at a high rate and ends with tiny steps, and the warm-up keeps the doubled
  rate from blowing up the first steps.
* **Nesterov momentum** (still 0.9), which tolerates the larger rate a little better.
* **Weight decay $5 \times 10^{-4}$** instead of $10^{-4}$: a short run is regularised more strongly.
* **Label smoothing 0.1**: the targets keep 10% of their mass spread over the other classes, which
  discourages over-confident logits on a run too short to need the last bit of training fit.
* **Flip test-time augmentation**: the prediction averages the image and its mirror image (CIFAR's
  classes look the same mirrored, and training already flips); kept after a measurement on the
  validation split (RESULTS.md).
* **Shift test-time augmentation, one pixel** (`shift_tta=1`): the average also covers the image moved
  one pixel down-right and one up-left, both crops training could have drawn, so six views in all;
  chosen over two pixels on the validation split (RESULTS.md).
* **`amp=auto`**: bf16 autocast on CPUs with native bf16 (AMX, AVX512-BF16) when a timed step says it
  is faster, float32 elsewhere (see `experiments/precision.py`). Where bf16 is chosen it is a change
  of number format the paper did not have; the network and the recipe stay the same.
* `channels_last` (the default on x86 CPUs) changes only the memory layout, not the arithmetic.

The fast and resnet9 recipes were written for GPUs; what each reaches is in RESULTS.md.
"""

import math
import warnings
from collections.abc import Callable, Collection
from typing import Any

import torch
from labml.configs import option

from experiments.errors import UsageError
from experiments.options import RecordedOptions, Rule, at_least, within

RECIPES: dict[str, dict[str, Any]] = {
    # The paper's recipe is the configuration's defaults.
    "paper": {},
    "fast": {
        "batch_size": 512,
        "epochs": 30,
        "iterations": "from_epochs",
        "optimizer.learning_rate": 0.4,
        "optimizer.nesterov": True,
        "optimizer.weight_decay": 5e-4,
        "scheduler": "warmup_cosine",
        "lr_warmup_steps": 200,
        "lr_warmup_factor": 0.1,
        "label_smoothing": 0.1,
        "flip_tta": True,
        "cuda": {"amp": "bf16", "channels_last": True},
    },
    "cpu": {
        "batch_size": 128,
        "epochs": 30,
        "iterations": "from_epochs",
        "optimizer.learning_rate": 0.2,
        "optimizer.nesterov": True,
        "optimizer.weight_decay": 5e-4,
        "scheduler": "warmup_cosine",
        "lr_warmup_steps": 200,
        "lr_warmup_factor": 0.1,
        "label_smoothing": 0.1,
        "flip_tta": True,
        "shift_tta": 1,
        "amp": "auto",
        # The test set is scored once, after the last epoch: per-epoch scoring would cost the half hour
        # a minute or more.
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
        "cuda": {"amp": "bf16", "channels_last": True},
    },
}

# What each recipe is for, one line each in `--help`; `--help-recipes` lists the settings straight from
# `RECIPES`, so the help and the recipes cannot disagree.
RECIPE_PURPOSES = {
    "paper": "He et al. §4.2, the configuration's defaults",
    "fast": "a short schedule for a GPU (30 epochs)",
    "cpu": "the paper's ResNet-20 in a run short enough for a small CPU (30 epochs)",
    "resnet9": "the DAWNBench ResNet-9 with its 24-epoch schedule",
}
# The defaults `--help-recipes` lists for the paper's recipe, read from the configuration classes.
PAPER_SETTINGS = (
    "batch_size", "optimizer.learning_rate", "optimizer.momentum", "optimizer.weight_decay", "lr_milestones",
    "lr_decay", "iterations",
)  # fmt: skip


def _settings_text(settings: dict[str, Any]) -> str:
    return " ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in settings.items()
    )


def recipe_values(recipe: dict[str, Any], typed: dict[str, Any], *, on_cuda: bool) -> dict[str, Any]:
    """The settings a recipe gives a run, before what was `typed` (which beats them all) is laid over."""
    values = dict(recipe)
    # A recipe's hardware settings (its "cuda" entry) only pay off on a GPU: bf16 is slow on most CPUs.
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
    """
    Every recipe with the settings it changes and those it adds on CUDA; `paper` holds the defaults of
    `PAPER_SETTINGS`, which the paper's recipe keeps.
    """
    parts = []
    for name, recipe in recipes.items():
        text = f"{name}: {RECIPE_PURPOSES.get(name, '')}"
        if name == "paper":
            text += f"\n  keeps {_settings_text(paper)}"
        plain = {key: value for key, value in recipe.items() if key != "cuda"}
        if plain:
            text += f"\n  sets {_settings_text(plain)}"
        if "cuda" in recipe:
            text += f"\n  and on CUDA {_settings_text(recipe['cuda'])}"
        parts.append(text)
    return "\n".join(parts)


def _fractions_of_the_run(v: Any) -> str | None:
    ok = all(0 < x < 1 for x in v)
    return (
        None if ok else "must hold fractions of the run between 0 and 1, e.g. [0.5,0.75] (32k and 48k of 64k)"
    )


# What the length, schedule and optimizer settings may be, checked by the command line.
SCHEDULE_RULES: dict[str, Rule] = {
    **dict.fromkeys(("epochs", "iterations"), at_least(1)),
    "lr_warmup_steps": at_least(0),
    "lr_warmup_fraction": within(0, 1),
    "lr_warmup_factor": within(0, 1, high_inclusive=True),
    "lr_decay": within(0, 1, high_inclusive=True),
    "lr_milestones": _fractions_of_the_run,
    "label_smoothing": within(0, 1),
    "optimizer.learning_rate": lambda v: None if v > 0 else "must be positive",
    "optimizer.momentum": within(0, 1),
    "optimizer.weight_decay": at_least(0),
}


def check_schedule_settings(get: Callable[[str], Any], typed: Collection[str]) -> None:
    """
    The schedule's and optimizer's settings together; raises `UsageError`. `typed` are the keys the user
    gave, so a recipe's own warm-up fraction may give way to typed warm-up steps.
    """
    if get("optimizer.nesterov") and get("optimizer.momentum") <= 0:
        raise UsageError("optimizer.nesterov needs a positive optimizer.momentum")
    if "lr_warmup_fraction" in typed and get("lr_warmup_steps") != "from_fraction":
        # A fraction the schedule would silently ignore.
        raise UsageError(
            "lr_warmup_fraction only applies with lr_warmup_steps=from_fraction; set both, or give "
            "lr_warmup_steps a number of steps"
        )


class SGDConfigs(RecordedOptions):
    """
    ## The optimizer

    SGD with momentum 0.9 and weight decay $10^{-4}$ (§3.4, §4.2): the trainer's `optimizer.*` settings,
    e.g. `optimizer.learning_rate=0.05`. On a GPU PyTorch's fused kernel updates all parameters at once;
    the arithmetic is the same.
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

    A multiplier for the base learning rate: `decay` to the power of the number of `milestones`
    passed. During the first `warmup_steps` steps the multiplier is `warmup_factor`, and from step
    `warmup_steps` on it is back to the step schedule (the ResNet-110 warm-up of §4.2).

    It is a plain object rather than a lambda so that `LambdaLR.state_dict()` stores its settings
    (a list and three numbers) and checkpoints stay loadable with `weights_only=True`.
    """

    def __init__(
        self, milestones: list[int], decay: float, warmup_steps: int = 0, warmup_factor: float = 0.1
    ):
        self.milestones = sorted(int(m) for m in milestones)
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        # A warm-up that reaches the first drop would hold the low rate straight into the decayed one, so
        # the run would never train at its full rate; with no decay there is nothing to hide.
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

    The shape both fast recipes share: the multiplier climbs linearly from `warmup_factor` to 1 over
    `warmup_steps`, then a decay curve takes it from 1 down to 0 at `total_steps` and keeps it there.
    Subclasses give the curve as a function of the decay's progress, from 0 to 1.
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, warmup_factor: float = 0.1):
        self.total_steps = int(total_steps)
        self.warmup_steps = min(int(warmup_steps), self.total_steps)
        self.warmup_factor = float(warmup_factor)
        if warmup_steps and 2 * warmup_steps >= total_steps:
            # A recipe's warm-up is counted in steps, so a run shortened far enough (fewer epochs, a
            # `train_subset`) spends most or all of itself warming up and barely decays. We warn rather
            # than rescale: the schedule stays what was asked for, and the warning says how to change it.
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

    def decay(self, progress: float) -> float:
        raise NotImplementedError


class WarmupCosineSchedule(WarmupThenDecay):
    """
    ## Linear warm-up, then cosine decay

    After the warm-up the multiplier follows half a cosine down to 0. Like the one-cycle policy it
    spends most of the run at a high rate and anneals smoothly at the end, with one setting fewer to
    tune.
    """

    def decay(self, progress: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupLinearSchedule(WarmupThenDecay):
    """
    ## Linear warm-up, then linear decay

    The triangular "one-cycle" shape of the DAWNBench recipes: after the warm-up the multiplier falls
    in a straight line to 0. Its warm-up starts from 0 unless `warmup_factor` says otherwise.
    """

    def __init__(self, total_steps: int, warmup_steps: int = 0, warmup_factor: float = 0.0):
        super().__init__(total_steps, warmup_steps, warmup_factor)

    def decay(self, progress: float) -> float:
        return 1.0 - progress
