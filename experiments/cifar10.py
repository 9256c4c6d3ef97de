"""
# Training a ResNet on CIFAR-10

```
python experiments/cifar10.py                    # ResNet-20, §4.2
python experiments/cifar10.py --model resnet56 --valid-split
python experiments/cifar10.py --recipe cpu       # 39 epochs; recipes.py lists how it departs from §4.2
python experiments/cifar10.py --resume <run>
python experiments/cifar10.py --eval <ckpt.pt>
```

The [model tutorial](../resnet/model.html) builds the networks; this one trains them as §4.2 does.
[`Configs`](#Configs) holds every setting with the paper's value as default, `@option` functions build
the parts on first use, and `key=value` on the command line changes any setting. Then come [one
epoch](#train_epoch), [an evaluation](#evaluate) and [the run](#fit); the rest of a real run (processes,
checkpoints, exact resumption, the console) is [`trainer.py`](trainer.html)'s.
"""

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python experiments/cifar10.py` puts `experiments/` on the path, not the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn as nn
import torch.nn.functional as F
from labml.configs import option
from torch.optim.lr_scheduler import LambdaLR

from experiments import cli, launch, run_configs
from experiments.distributed import world_from_environment
from experiments.launch import Results
from experiments.loader import CifarDataConfigs, TensorBatches
from experiments.models import MODEL_NAMES, build_model
from experiments.recipes import RECIPES, SGDConfigs, StepSchedule, WarmupCosineSchedule, WarmupLinearSchedule
from experiments.trainer import Run


class Configs(CifarDataConfigs):
    """
    ## Configurations

    The defaults are §4.2's recipe for ResNet-20: mini-batches of 128, SGD with learning rate 0.1,
    momentum 0.9 and weight decay $10^{-4}$ ([`SGDConfigs`](recipes.html#SGDConfigs)), the rate divided
    by 10 at 32k and 48k iterations, and the end at 64k. The data ([`CifarDataConfigs`](loader.html)):
    50k training images (45k with `valid_split=5000`, the paper's split for choosing settings), 10k test
    images, and §4.2's augmentation, 4 pixels of padding, a random 32×32 crop and a random flip.
    """

    # A name from `resnet.list_models()` (`plainN` drops the shortcuts), or `custom`, built from the
    # three lists. `preset` keeps each network's own shortcut option (A for the CIFAR networks).
    model: nn.Module
    num_classes: int = 10
    shortcut: str = "preset"
    n_blocks: list[int] = [3, 3, 3]
    n_channels: list[int] = [16, 32, 64]
    bottlenecks: list[int] | None = None
    zero_init_residual: bool = False

    # How long: whichever of `iterations` and `epochs` ends first; the paper states 64k iterations.
    iterations: int = 64_000
    epochs: int
    optimizer: torch.optim.SGD
    scheduler: LambdaLR
    # Where the rate drops by `lr_decay`, as fractions of the run: 32k and 48k of 64k are 50% and 75%,
    # and fractions keep that shape for a run of any length.
    lr_milestones: list[float] = [0.5, 0.75]
    lr_decay: float = 0.1
    # A warm-up of `lr_warmup_steps` (`from_fraction`: `lr_warmup_fraction` of the run) at `lr_warmup_factor`
    # times the rate (§4.2's ResNet-110: 400 steps at 0.01); cosine and linear schedules ramp up from it.
    lr_warmup_steps: int = 0
    lr_warmup_fraction: float = 0.0
    lr_warmup_factor: float = 0.1
    label_smoothing: float = 0.0
    # Test-time views averaged with the image: its mirror image, and it moved `shift_tta` pixels each way.
    flip_tta: bool = False
    shift_tta: int = 0
    # Evaluate after every epoch (on the validation split if there is one, else the test set).
    eval_every_epoch: bool = True
    recipe: str = "paper"


# ### The network, the optimizer and the schedule
#
# The network is the library's, head included (global average pooling, a 10-way layer). The paper counts
# its schedule in *iterations* (mini-batch steps), so the scheduler moves once per step: an epoch is 391
# steps with 50k images and 352 with 45k, and either way the rate drops at steps 32,000 and 48,000.
@option(Configs.epochs, "from_iterations")
def _epochs_from_iterations(c: Configs) -> int:
    return math.ceil(c.iterations / c.steps_per_epoch)


@option(Configs.iterations, "from_epochs")
def _iterations_from_epochs(c: Configs) -> int:
    return c.epochs * c.steps_per_epoch


# One option per network name; the first registered, ResNet-20, is the default.
def _register_model(name: str) -> None:
    @option(Configs.model, name)
    def make(c: Configs) -> nn.Module:
        return build_model(
            name, num_classes=c.num_classes, shortcut=c.shortcut, n_blocks=c.n_blocks,
            n_channels=c.n_channels, bottlenecks=c.bottlenecks, zero_init_residual=c.zero_init_residual,
        )  # fmt: skip


for _name in MODEL_NAMES:
    _register_model(_name)


@option(Configs.optimizer, "SGD")
def _optimizer(c: Configs) -> SGDConfigs:
    conf = SGDConfigs()
    conf.parameters = c.model.parameters()
    return conf


@option(Configs.lr_warmup_steps, "from_fraction")
def _warmup_from_fraction(c: Configs) -> int:
    return round(c.lr_warmup_fraction * c.iterations)


# §4.2's drops by steps; the warm-up and the cosine or linear decays serve [`recipes.py`](recipes.html).
@option(Configs.scheduler, "step")
def _step_schedule(c: Configs) -> LambdaLR:
    milestones = [round(fraction * c.iterations) for fraction in c.lr_milestones]
    return LambdaLR(c.optimizer, StepSchedule(milestones, c.lr_decay, c.lr_warmup_steps, c.lr_warmup_factor))


@option(Configs.scheduler, "warmup_cosine")
def _cosine_schedule(c: Configs) -> LambdaLR:
    return LambdaLR(c.optimizer, WarmupCosineSchedule(c.iterations, c.lr_warmup_steps, c.lr_warmup_factor))


@option(Configs.scheduler, "warmup_linear")
def _linear_schedule(c: Configs) -> LambdaLR:
    return LambdaLR(c.optimizer, WarmupLinearSchedule(c.iterations, c.lr_warmup_steps, c.lr_warmup_factor))


NESTED_CONFIGS = {**run_configs.NESTED_CONFIGS, "optimizer": SGDConfigs}  # `optimizer.*=` on the command line


def train_epoch(c: Configs, run: Run) -> None:
    """
    ## One epoch

    A *step* is one mini-batch of 128 images (§4.2): the prediction, the cross-entropy loss, its gradient
    by back-propagation, one SGD update, and the schedule one step on. In training mode batch norm uses
    each mini-batch's own statistics (§3.4). `run.batches` yields the batches not yet trained and stops
    the run between steps when asked to or when the loss is not finite; `run.after_step` counts the step.
    With fp16 the `scaler` scales the loss so small gradients do not underflow, unscales before the update
    and skips a step whose gradients overflowed; in other formats its lines are a plain backward and step.
    """
    run.model.train()
    for images, labels in run.batches(c.train_loader):
        # Autocast runs the forward pass in bf16 or fp16 when the run asks for it, and is a no-op otherwise.
        with run.autocast():
            logits = run.model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=c.label_smoothing)
        c.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(c.optimizer)
        run.scaler.update()
        c.scheduler.step()
        run.after_step(loss, logits, labels)


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: TensorBatches, *, amp_dtype: torch.dtype | None, flip_tta: bool,
    shift_tta: int = 0, before_batch: Callable[[], None] | None = None,
) -> dict[str, float]:  # fmt: skip
    """
    ## Evaluation

    Mean cross-entropy (without label smoothing, so runs with and without it compare) and accuracy of
    `model` over every image of `loader`. In evaluation mode batch norm uses its running statistics, so
    the result does not depend on the batching. `loss` and `accuracy` are the paper's protocol, "the
    single view of the original 32×32 image" (§4.2); test-time views are reported beside them as
    `loss_tta` and `accuracy_tta`: the mirror image with `flip_tta`, and with `shift_tta=k` the image
    moved $k$ pixels diagonally each way, crops training showed. `before_batch` runs before each batch.
    """
    model.eval()
    tta = flip_tta or shift_tta > 0
    sums: dict[str, torch.Tensor] = {}
    for x, y in loader.epoch(0):
        if before_batch is not None:
            before_batch()
        views = loader.views(x, flip=flip_tta, shift=shift_tta)
        with torch.autocast(loader.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(views[0]).float()
            # Scored before the next forward pass, and summed into a copy: a compiled network may hand
            # back the same output buffer on every call.
            _add_scores(sums, "", logits, y)
            if tta:
                total = logits.clone()
                for view in views[1:]:
                    total += model(view).float()
                _add_scores(sums, "_tta", total / len(views), y)
    return {key: value.item() / loader.images_per_epoch for key, value in sums.items()}


def _add_scores(
    sums: dict[str, torch.Tensor], suffix: str, logits: torch.Tensor, labels: torch.Tensor
) -> None:
    loss = F.cross_entropy(logits, labels, reduction="sum").double()
    correct = (logits.argmax(dim=1) == labels).sum().double()
    for key, value in ((f"loss{suffix}", loss), (f"accuracy{suffix}", correct)):
        sums[key] = sums[key] + value if key in sums else value


def fit(c: Configs, run: Run) -> dict[str, float]:
    """
    ## The run

    Epochs of training until the schedule ends, each followed by an evaluation on the validation images
    if there are some, else on the test set, only to watch the curve as Figure 6 does. The test set never
    chooses anything: the result is the final network, never the best epoch's. Returns its test scores,
    or nothing (`{}`) for a run with a validation split: such a run is for choosing settings, so it never
    reads the test set (`--eval` scores its checkpoint there when asked).
    """

    def score(loader: TensorBatches) -> dict[str, float]:
        return evaluate(
            run.eval_model, loader, amp_dtype=run.amp.dtype, flip_tta=c.flip_tta, shift_tta=c.shift_tta,
            before_batch=run.check_stop,
        )  # fmt: skip

    name, loader = ("valid", c.valid_loader) if c.valid_loader is not None else ("test", c.test_loader)
    test: dict[str, float] | None = None
    for _ in range(run.progress.epoch, c.epochs):
        if run.done:
            break
        train_epoch(c, run)
        scores: dict[str, float] = {}
        if c.eval_every_epoch or run.finishing:
            scores = score(loader)
            test = scores if name == "test" else None
        run.end_epoch({f"{name}_{key}": value for key, value in scores.items()})
    if c.valid_loader is not None:
        return {}
    return test if test is not None else score(c.test_loader)


# ## Running it
#
# Three ways in, each checking its settings as the command line does ([`launch.py`](launch.html) runs).


def train(*, recipe: str | None = None, device: str | None = None, **settings: Any) -> Results:
    """
    `train(model="resnet56", epochs=30, data_dir="data")` runs what the command line runs, checks
    included; the flags go by name (`logs_dir`, `resume`, `threads`, `time_limit_s`, ...). Returns the
    run's [`Results`](launch.html#Results) (`summary` is `None` when the run stopped early).
    """
    if "eval" in settings:
        raise cli.UsageError("train() trains; to measure a checkpoint use evaluate_checkpoint(path, ...)")
    request = launch.checked(settings, Configs, NESTED_CONFIGS, RECIPES, recipe=recipe, device=device)
    return launch.run_training(Configs, NESTED_CONFIGS, fit, request)


def evaluate_checkpoint(path: str | Path, **settings: Any) -> dict[str, Any]:
    """What `--eval PATH` does: the checkpoint's network on the whole test set (or `test_subset=`)."""
    request = launch.checked({**settings, "eval": str(path)}, Configs, NESTED_CONFIGS, RECIPES)
    return launch.run_evaluation(Configs, NESTED_CONFIGS, evaluate, request)


def main(argv: list[str] | None = None) -> int:
    """The command line: parse and check it (exit 2 on bad input), then train or evaluate."""
    request = cli.parse(argv, Configs, nested=NESTED_CONFIGS, recipes=RECIPES, world=world_from_environment())
    return launch.command(request, Configs, NESTED_CONFIGS, fit, evaluate)


if __name__ == "__main__":
    sys.exit(main())
