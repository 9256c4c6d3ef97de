"""
# Training a ResNet on CIFAR-10

```
python experiments/cifar10.py                       # ResNet-20, the paper's recipe (§4.2)
python experiments/cifar10.py --model resnet56 --valid-split
python experiments/cifar10.py --recipe fast --amp bf16 --channels-last
python experiments/cifar10.py --recipe fast ema_decay=0.999   # evaluate an average of the weights
python experiments/cifar10.py train_subset=5000 test_subset=1000 --threads 1   # a quick CPU look
python experiments/cifar10.py --resume <run uuid or folder>
python experiments/cifar10.py --eval logs/cifar10/<uuid>/checkpoints/last.pt
torchrun --nproc_per_node=4 experiments/cifar10.py --sync-bn
```

This is the second half of the project: the `resnet` package builds the networks, this script trains
them. Everything a run depends on is a labml configuration in [`Configs`](#Configs); options
(`@option`) build the data, the model, the optimizer and the schedule on demand, and any of them can be
set from the command line as `key=value` (see `experiments/cli.py`, which also checks them before
anything is read or written).

## Why our own loop

labml-helpers has a ready train/validate loop (`TrainValidConfigs`). We write ours because a run here
promises three things that loop cannot give:

* **exact resumption mid-epoch.** The loop must be able to stop after any step, write down *where* it
  is (epoch, batch, step, the partial epoch sums), and later continue with the same batches. The loader
  makes batches a pure function of (seed, epoch, batch index), so continuing is
  `loader.epoch(e, start_batch=k)`; the rest is in the checkpoint.
* **DistributedDataParallel**, with rank 0 alone writing files, and with the decisions to stop (a
  signal, a diverged loss) agreed on by all ranks.
* **a stop at the first non-finite loss** that names the step and never overwrites the last good
  checkpoint with the diverged weights.

## Settings for quick runs and for speed

* `train_subset=N`, `test_subset=N`: a class-balanced random subset (fixed by the seed) of N training
  or test images, 0 for all. With `--valid-split` the validation images are held out first.
* `--threads N`: PyTorch's CPU threads for this run. On a shared machine fewer threads can be far
  faster; on the two busy cores this was written on, 1 thread trained 6 to 10 times faster than 2.
* `channels_last` is `auto` by default: on for CUDA and for x86 CPUs, where it was measured faster;
  `--no-channels-last` turns it off. bf16 autocast is never a CPU default.
* `ema_decay=0.999`: evaluate, report and checkpoint an exponential moving average of the weights
  ([`experiments/ema.py`](ema.py)); training still steps the raw weights.
* `--compile` wraps the model in `torch.compile`; `compile_mode=` passes one of its modes through.
  `--cuda-graphs` is `--compile` with `compile_mode=reduce-overhead`, which records each step's kernels
  once as a CUDA graph and replays them, so the CPU no longer launches them one by one; it pays off
  for small networks whose steps are short. CUDA only; it has not run on a GPU yet (none was available
  while this was written).
* `cutout=8`: Cutout augmentation (see [`experiments/loader.py`](loader.py)), used by the ResNet-9 recipe.

## What a run leaves behind

A run folder `logs/cifar10/<uuid>/` (labml's layout) with `configs.yaml`, our `metrics.jsonl` (one
line per epoch, with the training time of the epoch and of the run so far: `epoch_train_time_s`,
`train_time_s`; the clock stops during evaluation, and an epoch that was interrupted and resumed
counts the time trained before the stop too), `checkpoints/last.pt` (rewritten atomically after every
epoch and on SIGINT/SIGTERM) and, at the end, `results.json`. The last line printed is
`test accuracy: 0.XXXX`.

The test set never chooses anything: we report the final epoch's model. With `--valid-split` the
per-epoch evaluation uses 5,000 held-out training images, as the paper does for its hyper-parameter
choices; without it the per-epoch curve is measured on the test set (as the paper's Figure 6 does),
for watching only.
"""

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # `python experiments/cifar10.py` puts `experiments/` on the path; we need the project root.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn as nn
import torch.nn.functional as F
from labml import experiment, lab, monit, tracker
from labml.configs import BaseConfigs, option
from labml_helpers.device import DeviceConfigs
from torch.optim.lr_scheduler import LambdaLR

from experiments import cli, console
from experiments import data as cifar_data
from experiments.checkpoint import (
    CHECKPOINT_DIR,
    FORMAT,
    LAST,
    VERSION,
    CheckpointError,
    check_signature,
    find_checkpoint,
    load_checkpoint,
    model_signature,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from experiments.distributed import (
    World,
    any_rank,
    destroy_process_group,
    init_process_group,
    state_hashes,
    sum_over_ranks,
    world_from_environment,
)
from experiments.ema import WeightAverage
from experiments.loader import TensorBatches
from experiments.models import MODEL_NAMES, build_model
from experiments.precision import choose_amp, cpu_model_name, step_timer
from experiments.recipes import RECIPES, StepSchedule, WarmupCosineSchedule, WarmupLinearSchedule

EXPERIMENT_NAME = "cifar10"


class SGDConfigs(BaseConfigs):
    """
    ## The optimizer

    Stochastic gradient descent with momentum, as in §3.4 and §4.2. Settable as
    `optimizer.learning_rate=...` etc. On CUDA we use PyTorch's fused kernel, which updates all
    parameters in a few launches instead of several per tensor; the arithmetic is the same.
    """

    optimizer: torch.optim.SGD
    parameters: Any
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False

    def __init__(self) -> None:
        super().__init__(_primary="optimizer")


@option(SGDConfigs.optimizer, "SGD")
def _sgd(c: SGDConfigs) -> torch.optim.SGD:
    parameters = list(c.parameters)
    fused = parameters[0].is_cuda
    return torch.optim.SGD(
        parameters,
        lr=c.learning_rate,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        nesterov=c.nesterov,
        fused=fused or None,
    )


class Configs(BaseConfigs):
    """
    ## Configurations

    The defaults are the paper's CIFAR-10 recipe (§4.2) for ResNet-20.
    """

    # ### The network
    # A preset name from `resnet.PRESETS`, a `plainN` network, or `custom` (built from the three lists).
    model: nn.Module
    num_classes: int = 10
    # `preset` keeps each preset's own shortcut option (A for the CIFAR networks); A/B/C/none override it.
    shortcut: str = "preset"
    n_blocks: list[int] = [3, 3, 3]
    n_channels: list[int] = [16, 32, 64]
    bottlenecks: list[int] | None = None
    zero_init_residual: bool = False

    # ### The data
    data_dir: str
    download: bool = True
    # Check the files against the official md5 sums; off only for data in CIFAR-10's format that is
    # meant to differ from it (a synthetic stand-in).
    verify_checksums: bool = True
    # Hold out this many training images for validation (the paper uses 5,000); 0 trains on all 50,000.
    valid_split: int = 0
    # Train on / evaluate on a class-balanced random subset of this many images (fixed by `seed`); 0
    # uses all. For quick experiments; the validation images are held out before the subset is drawn.
    train_subset: int = 0
    test_subset: int = 0
    augment: bool = True
    # Side of the square Cutout blanks in every training image; 0 is off (the paper has no Cutout).
    cutout: int = 0
    dataset: Any
    train_loader: TensorBatches
    valid_loader: TensorBatches | None
    test_loader: TensorBatches
    # The global batch: with several processes each gets `batch_size / world_size` images per step.
    batch_size: int = 128
    eval_batch_size: int = 1000
    steps_per_epoch: int

    # ### How long and how fast
    # Training stops at whichever comes first; by default `epochs` follows from the paper's 64k iterations.
    iterations: int = 64_000
    epochs: int
    optimizer: torch.optim.SGD
    scheduler: LambdaLR
    # Where the rate drops, as fractions of `iterations`: the paper's 32k and 48k of 64k are 50% and 75%,
    # and fractions keep that shape for a run of any length (`--epochs 30` drops at epochs 15 and 22.5).
    lr_milestones: list[float] = [0.5, 0.75]
    lr_decay: float = 0.1
    # A number of steps, or `from_fraction`: `lr_warmup_fraction` of the run's iterations, which keeps a
    # recipe's warm-up in proportion when `--epochs` or the batch size changes the run's length.
    lr_warmup_steps: int = 0
    lr_warmup_fraction: float = 0.0
    lr_warmup_factor: float = 0.1
    label_smoothing: float = 0.0
    # Average the prediction for an image and its mirror image when evaluating.
    flip_tta: bool = False
    # Evaluate (and checkpoint, and report) an exponential moving average of the weights with this
    # decay per step, e.g. 0.999 (see `experiments/ema.py`); 0 turns it off.
    ema_decay: float = 0.0
    # Evaluate after every epoch (on the validation split if there is one, else the test set).
    eval_every_epoch: bool = True

    # ### Hardware
    device: torch.device
    amp: str = "none"
    # NHWC memory layout; `auto` (the default) turns it on where it was measured to win (see below).
    channels_last: bool
    compile: bool = False
    # `torch.compile`'s mode: default, reduce-overhead (CUDA graphs), max-autotune,
    # max-autotune-no-cudagraphs.
    compile_mode: str = "default"
    sync_bn: bool = False

    seed: int = 5
    recipe: str = "paper"
    # Console progress every this many steps (a GPU would otherwise wait for the host every step).
    log_every: int = 20

    # Set by `main`, not by users: this process's place among data-parallel processes.
    world: Any = World()


@option(Configs.device)
def _device(c: Configs) -> DeviceConfigs:
    # A fresh sub-configuration per run; a class-level default would be shared between runs.
    return DeviceConfigs()


@option(Configs.channels_last, "auto")
def _channels_last_auto(c: Configs) -> bool:
    """
    NHWC where it pays: on CUDA (the tensor-core convolutions want it), and on x86 CPUs with oneDNN,
    where a paired measurement on a 2-core AMD EPYC (AVX2) trained ResNet-20 1.21x and ResNet-56 1.26x
    faster with it (1 thread; 1.03x with 2 threads on the busy machine) and evaluated 1.3-1.4x faster.
    Other CPUs were not measured, so they keep PyTorch's default layout.
    """
    if c.device.type == "cuda":
        return True
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686")
    return c.device.type == "cpu" and x86 and torch.backends.mkldnn.is_available()


@option(Configs.data_dir, "labml")
def _data_dir(c: Configs) -> str:
    return str(cifar_data.default_data_dir())


@option(Configs.dataset)
def _dataset(c: Configs) -> Any:
    return cifar_data.load_cifar10(Path(c.data_dir), download=c.download, verify_checksums=c.verify_checksums)


def _batches(c: Configs, images: torch.Tensor, labels: torch.Tensor, *, train: bool) -> TensorBatches:
    if train:
        return TensorBatches(
            images,
            labels,
            batch_size=c.batch_size // c.world.size,
            shuffle=True,
            augment=c.augment,
            device=c.device,
            seed=c.seed,
            mean=cifar_data.CIFAR10_MEAN,
            std=cifar_data.CIFAR10_STD,
            rank=c.world.rank,
            world_size=c.world.size,
            channels_last=c.channels_last,
            cutout=c.cutout,
        )
    # Every rank evaluates the whole set: the weights are identical, so are the results, and no
    # sampler padding duplicates images into the metric.
    return TensorBatches(
        images,
        labels,
        batch_size=c.eval_batch_size,
        shuffle=False,
        augment=False,
        device=c.device,
        seed=c.seed,
        mean=cifar_data.CIFAR10_MEAN,
        std=cifar_data.CIFAR10_STD,
        channels_last=c.channels_last,
    )


def _subset(
    c: Configs, images: torch.Tensor, labels: torch.Tensor, n: int, key: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The class-balanced subset of `n` images that `key` (`train_subset`/`test_subset`) asks for."""
    if n == 0:
        return images, labels
    if n > len(labels):
        held_out = ""
        if key == "train_subset" and c.valid_split:
            held_out = f" after holding out valid_split={c.valid_split}"
        raise cifar_data.DataError(
            Path(c.data_dir),
            f"{key}={n}, but the set holds only {len(labels)} images{held_out}",
            f"ask for at most {len(labels)} (0 uses all)",
        )
    index = cifar_data.class_balanced_subset(labels, n, seed)
    return images[index], labels[index]


@option([Configs.train_loader, Configs.valid_loader])
def _train_valid_loaders(c: Configs) -> tuple:
    d = c.dataset
    if c.valid_split == 0:
        train_x, train_y = _subset(c, d.train_images, d.train_labels, c.train_subset, "train_subset", c.seed)
        return _batches(c, train_x, train_y, train=True), None
    if c.valid_split >= len(d.train_images):
        raise cifar_data.DataError(
            Path(c.data_dir),
            f"valid_split={c.valid_split} leaves no training images (the set has {len(d.train_images)})",
            f"hold out fewer, e.g. --valid-split {len(d.train_images) // 10}",
        )
    # The held-out images do not depend on `train_subset`, so runs on subsets of different sizes are
    # validated on the same images.
    train_x, train_y, valid_x, valid_y = cifar_data.split_validation(
        d.train_images, d.train_labels, c.valid_split, c.seed
    )
    train_x, train_y = _subset(c, train_x, train_y, c.train_subset, "train_subset", c.seed)
    return (_batches(c, train_x, train_y, train=True), _batches(c, valid_x, valid_y, train=False))


@option(Configs.test_loader)
def _test_loader(c: Configs) -> TensorBatches:
    # Another seed than the training subset's, so the two draws are independent.
    images, labels = _subset(
        c, c.dataset.test_images, c.dataset.test_labels, c.test_subset, "test_subset", c.seed + 1
    )
    return _batches(c, images, labels, train=False)


@option(Configs.steps_per_epoch)
def _steps_per_epoch(c: Configs) -> int:
    return len(c.train_loader)


@option(Configs.epochs, "from_iterations")
def _epochs_from_iterations(c: Configs) -> int:
    return math.ceil(c.iterations / c.steps_per_epoch)


@option(Configs.iterations, "from_epochs")
def _iterations_from_epochs(c: Configs) -> int:
    return c.epochs * c.steps_per_epoch


def _register_model_option(name: str) -> None:
    def make(c: Configs) -> nn.Module:
        return build_model(
            name,
            num_classes=c.num_classes,
            shortcut=c.shortcut,
            n_blocks=c.n_blocks,
            n_channels=c.n_channels,
            bottlenecks=c.bottlenecks,
            zero_init_residual=c.zero_init_residual,
        )

    option(Configs.model, name)(make)


# The first registered option is the default: ResNet-20, the paper's smallest CIFAR network.
for _name in MODEL_NAMES:
    _register_model_option(_name)


@option(Configs.optimizer, "SGD")
def _optimizer(c: Configs) -> SGDConfigs:
    conf = SGDConfigs()
    conf.parameters = c.model.parameters()
    return conf


@option(Configs.lr_warmup_steps, "from_fraction")
def _warmup_from_fraction(c: Configs) -> int:
    return round(c.lr_warmup_fraction * c.iterations)


@option(Configs.scheduler, "step")
def _step_schedule(c: Configs) -> LambdaLR:
    milestones = [round(fraction * c.iterations) for fraction in c.lr_milestones]
    schedule = StepSchedule(milestones, c.lr_decay, c.lr_warmup_steps, c.lr_warmup_factor)
    return LambdaLR(c.optimizer, schedule)


@option(Configs.scheduler, "warmup_cosine")
def _cosine_schedule(c: Configs) -> LambdaLR:
    return LambdaLR(c.optimizer, WarmupCosineSchedule(c.iterations, c.lr_warmup_steps, c.lr_warmup_factor))


@option(Configs.scheduler, "warmup_linear")
def _linear_schedule(c: Configs) -> LambdaLR:
    return LambdaLR(c.optimizer, WarmupLinearSchedule(c.iterations, c.lr_warmup_steps, c.lr_warmup_factor))


# The sub-configurations reachable as `optimizer.*` and `device.*` on the command line.
NESTED_CONFIGS = {"optimizer": SGDConfigs, "device": DeviceConfigs}


# ## Errors that end a run cleanly


class RunError(Exception):
    """A problem that ends the run with a one-line message and exit status 1 (no traceback)."""


class StopRequested(Exception):
    """A signal (or `--stop-after-steps`) asked the run to stop; raised between steps."""


class Diverged(RunError):
    """The loss became NaN or infinite."""


# ## The training loop


class Trainer:
    """
    Runs the epochs of a computed [`Configs`](#Configs): training, evaluation, checkpoints, metrics.

    `run_dir` is the labml run folder on rank 0 and `None` on the other ranks (and when evaluating).
    """

    def __init__(
        self,
        c: Configs,
        *,
        run_dir: Path | None,
        overrides: dict[str, Any],
        stop_after_steps: int | None = None,
        resumed_from: Path | None = None,
    ):
        self.c = c
        self.world: World = c.world
        self.run_dir = run_dir
        self.overrides = overrides
        self.stop_after_steps = stop_after_steps
        self.resumed_from = resumed_from
        self.device: torch.device = c.device
        self.model: nn.Module = c.model
        self.optimizer: torch.optim.SGD = c.optimizer
        self.scheduler: LambdaLR = c.scheduler
        self.train_loader: TensorBatches = c.train_loader
        self.signature = model_signature(_model_name(overrides), c.num_classes, self.model)

        # `amp=auto` is decided here, once, by timing a copy of the network (see `experiments/precision.py`).
        # With several processes each would measure on its own and might disagree, so they keep float32.
        measure = (
            None
            if self.world.is_distributed
            else step_timer(
                self.model, (c.batch_size, 3, 32, 32), c.num_classes, self.device, c.channels_last
            )
        )
        self.amp = choose_amp(c.amp, self.device, measure)
        self.amp_dtype = self.amp.dtype
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp.chosen == "fp16" else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=c.label_smoothing)
        # CUDA graphs reuse their output memory; each step must say it is a new one (see `train_epoch`).
        self.cuda_graphs = c.compile and c.compile_mode == "reduce-overhead"
        self.forward_model = self._wrap_model()
        # Copied after `_wrap_model`, which may swap in synchronised batch norm.
        self.ema = WeightAverage(self.model, c.ema_decay) if c.ema_decay > 0 else None

        # Where we are: the next step to take is batch `batch` of epoch `epoch`.
        self.step = 0
        self.epoch = 0
        self.batch = 0
        self.epoch_sums = self._zero_sums()
        self.history: list[dict[str, Any]] = []
        self.elapsed_s = 0.0
        self.train_time_s = 0.0
        self.train_images = 0
        self.stop_signal: str | None = None
        self._started = time.perf_counter()

    def _wrap_model(self) -> nn.Module:
        model = self.model
        if self.world.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            if self.c.sync_bn:
                # Converting keeps parameter names, so `self.model`'s state dict is unchanged. BN modules
                # are replaced in place inside `self.model` too.
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.model = model
            on_gpu = self.device.type == "cuda"
            model = DistributedDataParallel(model, device_ids=[self.device.index] if on_gpu else None)
        if self.cuda_graphs and self.device.type != "cuda":
            # The command line refuses this too; a resumed run may bring the setting from its checkpoint.
            raise RunError(
                f"compile_mode=reduce-overhead (--cuda-graphs) needs CUDA, but this run is on "
                f"{self.device}; resume on a GPU, or pass compile=False"
            )
        if self.c.compile:
            model = torch.compile(model, mode=self.c.compile_mode)
        return model

    def _zero_sums(self) -> dict[str, torch.Tensor]:
        # Summed on the device as float64/int64 so that the epoch's mean is exact and no step waits for
        # the host; saved in mid-epoch checkpoints so a resumed epoch reports the same numbers.
        return {
            "loss": torch.zeros((), dtype=torch.float64, device=self.device),
            "correct": torch.zeros((), dtype=torch.int64, device=self.device),
            "seen": torch.zeros((), dtype=torch.int64, device=self.device),
        }

    # ### Checkpoints

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / CHECKPOINT_DIR / LAST

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly here; only tensors, numbers, strings and containers."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "position": {"step": self.step, "epoch": self.epoch, "batch": self.batch},
            "epoch_sums": {k: v.detach().cpu() for k, v in self.epoch_sums.items()},
            "rng": rng_state(),
            # The hardware is not part of what a run is; a resumed run may use another device.
            "config": {k: v for k, v in self.overrides.items() if not k.startswith("device.")},
            "signature": self.signature,
            "history": self.history,
            "timing": {
                "elapsed_s": self._elapsed(),
                "train_time_s": self.train_time_s,
                "train_images": self.train_images,
            },
        }

    def restore(self, state: dict[str, Any], path: Path) -> None:
        check_signature(path, state["signature"], self.signature)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None:
                if state.get("ema") is None:
                    raise CheckpointError(
                        f"{path} has no averaged weights, but this run sets ema_decay; "
                        f"resume without changing ema_decay"
                    )
                self.ema.load_state_dict(state["ema"])
            position = state["position"]
            self.step, self.epoch = int(position["step"]), int(position["epoch"])
            self.batch = int(position["batch"])
            self.epoch_sums = {k: v.to(self.device) for k, v in state["epoch_sums"].items()}
            self.history = list(state["history"])
            timing = state["timing"]
            self.elapsed_s = float(timing["elapsed_s"])
            self.train_time_s = float(timing["train_time_s"])
            self.train_images = int(timing["train_images"])
            set_rng_state(state["rng"])
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"{path} does not fit this run ({str(e).splitlines()[0][:160]})") from None
        if self.batch > len(self.train_loader):
            raise CheckpointError(
                f"{path} stopped at batch {self.batch} of an epoch that now has "
                f"{len(self.train_loader)} batches; resume with the same data and "
                f"batch size"
            )

    def save(self) -> None:
        """Rank 0 writes the checkpoint; a failed write stops the run and keeps the previous file."""
        if self.checkpoint_path is None:
            return
        try:
            save_checkpoint(self.checkpoint_path, self.state())
        except OSError as e:
            raise RunError(
                f"could not write checkpoint {self.checkpoint_path} ({e.strerror or e}); the last "
                f"good checkpoint there is kept: free space or fix permissions, then resume with "
                f"--resume {self.run_dir}"
            ) from None

    def _elapsed(self) -> float:
        return self.elapsed_s + time.perf_counter() - self._started

    # ### Training

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def request_stop(self, reason: str) -> None:
        self.stop_signal = reason

    def _check_flags(self, bad_step: torch.Tensor) -> None:
        """Stop (all ranks together) on a signal or a non-finite loss seen since the last check."""
        flags = torch.stack(
            [torch.tensor(1.0 if self.stop_signal else 0.0, device=self.device), -bad_step.to(torch.float32)]
        )
        # `-bad_step` turns "smallest bad step, or none (a huge number)" into a maximum.
        flags = any_rank(flags, self.world)
        first_bad = int(-flags[1].item())
        if first_bad < _NO_BAD_STEP:
            lower = self.scheduler.base_lrs[0] / 10
            raise Diverged(
                f"the loss became non-finite (NaN or infinite) at step {first_bad}; the learning "
                f"rate is probably too high: try a lower one, e.g. --lr {lower:g}"
            )
        if flags[0].item() > 0:
            self.stop_signal = self.stop_signal or "a signal on another rank"
            raise StopRequested()

    def train_epoch(self) -> None:
        c = self.c
        self.forward_model.train()
        loader = self.train_loader
        n_batches = len(loader)
        check_every = 1 if (self.device.type == "cpu" and not self.world.is_distributed) else 10
        bad_step = torch.full((), _NO_BAD_STEP, dtype=torch.int64, device=self.device)
        start = time.perf_counter()
        batches: Iterator = loader.epoch(self.epoch, start_batch=self.batch)
        try:
            for x, y in monit.iterate("Train", batches, total_steps=n_batches - self.batch):
                if self.step >= c.iterations:
                    break
                if self.cuda_graphs:
                    # Tells the recorded graphs that the previous step's outputs are no longer needed.
                    torch.compiler.cudagraph_mark_step_begin()
                with self._autocast():
                    logits = self.forward_model(x)
                    loss = self.criterion(logits, y)
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    self.optimizer.step()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update(self.model)

                loss = loss.detach().float()
                bad_step = torch.where(
                    torch.isfinite(loss) | (bad_step < _NO_BAD_STEP),
                    bad_step,
                    torch.full_like(bad_step, self.step),
                )
                self.epoch_sums["loss"] += loss.double() * y.shape[0]
                self.epoch_sums["correct"] += (logits.detach().argmax(dim=1) == y).sum()
                self.epoch_sums["seen"] += y.shape[0]
                self.train_images += y.shape[0] * self.world.size
                self.step += 1
                self.batch += 1
                tracker.set_global_step(self.step)

                if self.stop_after_steps is not None and self.step >= self.stop_after_steps:
                    self.request_stop("--stop-after-steps")
                if self.step % check_every == 0 or self.stop_signal:
                    self._check_flags(bad_step)
                if self.world.is_main and self.step % c.log_every == 0:
                    seen = self.epoch_sums["seen"].clamp(min=1)
                    tracker.save(
                        self.step,
                        {
                            "loss.train": (self.epoch_sums["loss"] / seen).item(),
                            "accuracy.train": (self.epoch_sums["correct"] / seen).item(),
                        },
                    )
            self._check_flags(bad_step)
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.train_time_s += time.perf_counter() - start

    def evaluate(self, loader: TensorBatches, name: str) -> tuple[float, float]:
        """Mean loss and accuracy over a whole evaluation set; a stop request aborts it."""

        def check_stop() -> None:
            if self.stop_signal:
                raise StopRequested()

        model = self.ema.model if self.ema is not None else self.forward_model
        return evaluate(
            model, loader, name, amp_dtype=self.amp_dtype, flip_tta=self.c.flip_tta, before_batch=check_stop
        )

    def run(self) -> dict[str, Any]:
        """Train to the end (or until stopped) and return the final metrics."""
        c = self.c
        eval_loader, eval_name = (
            (c.valid_loader, "valid") if c.valid_loader is not None else (c.test_loader, "test")
        )
        last_test: tuple[float, float] | None = None
        for _ in monit.loop(range(self.epoch, c.epochs)):
            if self.step >= c.iterations:
                break
            # The clock at the end of the previous epoch, not now: a resumed epoch has already trained a part.
            time_before = self.history[-1]["train_time_s"] if self.history else 0.0
            self.train_epoch()
            sums = {k: sum_over_ranks(v, self.world) for k, v in self.epoch_sums.items()}
            seen = max(1, int(sums["seen"].item()))
            record: dict[str, Any] = {
                "epoch": self.epoch + 1,
                "step": self.step,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": sums["loss"].item() / seen,
                "train_accuracy": sums["correct"].item() / seen,
            }
            if c.eval_every_epoch or self.epoch + 1 >= c.epochs or self.step >= c.iterations:
                loss, accuracy = self.evaluate(eval_loader, eval_name)
                if not math.isfinite(loss):
                    # Weights that give non-finite logits are as diverged as a non-finite training loss,
                    # and must not replace the last good checkpoint either.
                    lower = self.scheduler.base_lrs[0] / 10
                    raise Diverged(
                        f"the {eval_name} loss became non-finite (NaN or infinite) after step "
                        f"{self.step}; the learning rate is probably too high: try a lower one, "
                        f"e.g. --lr {lower:g}"
                    )
                record[f"{eval_name}_loss"], record[f"{eval_name}_accuracy"] = loss, accuracy
                if eval_name == "test":
                    last_test = (loss, accuracy)
            record["epoch_train_time_s"] = self.train_time_s - time_before
            record["train_time_s"] = self.train_time_s
            record["train_images_per_s"] = self.train_images / max(self.train_time_s, 1e-9)
            self.history.append(record)
            self.epoch += 1
            self.batch = 0
            self.epoch_sums = self._zero_sums()
            if self.world.is_main:
                tracker.save(
                    self.step,
                    {
                        k.replace("_", ".", 1): v
                        for k, v in record.items()
                        if k.endswith(("loss", "accuracy"))
                    },
                )
                tracker.new_line()
                self._append_metrics(record)
                console.print_plain(console.epoch_line(record, c.epochs))
            self.save()
        if last_test is None:
            last_test = self.evaluate(c.test_loader, "test")
        return self._results(*last_test)

    def _append_metrics(self, record: dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        path = self.run_dir / "metrics.jsonl"
        try:
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:
            raise RunError(
                f"could not write {path} ({e.strerror or e}); the last good checkpoint is kept, "
                f"fix the folder and resume with --resume {self.run_dir}"
            ) from None

    def _results(self, test_loss: float, test_accuracy: float) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        hashes = state_hashes(state_hash(self.model), self.world)
        return {
            "model": _model_name(self.overrides),
            "recipe": self.c.recipe,
            "seed": self.c.seed,
            "num_classes": self.c.num_classes,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "epochs": self.epoch,
            "steps": self.step,
            "batch_size": self.c.batch_size,
            "train_loss": last.get("train_loss"),
            "train_accuracy": last.get("train_accuracy"),
            "valid_loss": last.get("valid_loss"),
            "valid_accuracy": last.get("valid_accuracy"),
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "wall_time_s": self._elapsed(),
            "train_time_s": self.train_time_s,
            "train_images_per_s": self.train_images / max(self.train_time_s, 1e-9),
            "device": device_description(self.device),
            "world_size": self.world.size,
            "amp": self.amp.chosen,
            "amp_choice": self.amp.as_dict(),
            "channels_last": self.c.channels_last,
            "compile": self.c.compile,
            "compile_mode": self.c.compile_mode,
            "cutout": self.c.cutout,
            # With an average, the valid/test numbers are the averaged network's.
            "ema_decay": self.c.ema_decay,
            "weights_sha256": hashes[0],
            "ranks_agree": len(set(hashes)) == 1,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            # What the numbers were measured on, so a subset run can never pass for a full one.
            "data": {
                "train_subset": self.c.train_subset,
                "test_subset": self.c.test_subset,
                "valid_split": self.c.valid_split,
                "train_images": self.train_loader.images_per_epoch * self.world.size,
                "valid_images": self.c.valid_loader.images_per_epoch if self.c.valid_loader else 0,
                "test_images": self.c.test_loader.images_per_epoch,
                "augment": self.c.augment,
                "cutout": self.c.cutout,
                "flip_tta": self.c.flip_tta,
            },
            "label_smoothing": self.c.label_smoothing,
            "images_seen": self.train_images,
            **_software(),
        }


_NO_BAD_STEP = 2**62


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: TensorBatches,
    name: str,
    *,
    amp_dtype: torch.dtype | None,
    flip_tta: bool,
    before_batch: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """
    Mean cross-entropy (without label smoothing, so runs with and without it compare) and accuracy of
    `model` over every image of `loader`. With `flip_tta` the logits of each image and its mirror image
    are averaged: a free gain, since CIFAR's classes look the same mirrored.
    """
    model.eval()
    device = loader.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in monit.iterate(name.capitalize(), loader.epoch(0), total_steps=len(loader)):
        if before_batch is not None:
            before_batch()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            # A copy: with CUDA graphs the second call below would write over the first one's output.
            logits = model(x).float().clone()
            if flip_tta:
                logits = (logits + model(x.flip(3)).float()) / 2
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(dim=1) == y).sum()
    n = loader.images_per_epoch
    return loss_sum.item() / n, correct.item() / n


def _model_name(overrides: dict[str, Any]) -> str:
    # The model option's name ("resnet20", "custom", ...); `resnet20` is the first option, the default.
    return str(overrides.get("model", "resnet20"))


def state_hash(model: nn.Module) -> str:
    """A SHA-256 of every tensor in the model's state, to compare weights across processes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _software() -> dict[str, Any]:
    """The versions and the machine a result comes from."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model_name(),
        "threads": torch.get_num_threads(),
    }


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Write JSON atomically, so a reader never sees half a results file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(value, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ## Starting a run


def _configure_labml(logs_dir: Path | None, labml_url: str | None) -> set[str]:
    """
    Point labml at the logs folder and decide its writers. The screen writer, labml's live line of
    numbers, is for a terminal only; a file or a pipe gets plain lines instead (`experiments/console.py`).
    The web writer is enabled only when an app URL is configured (`--labml-url`, `.labml.yaml` or the
    `labml_server` environment variable). labml 0.4.168 sends from a non-daemon thread that retries forever,
    which would keep the process alive after training when the server is unreachable; we make that thread a
    daemon, so the process ends with the training.
    """
    settings: dict[str, Any] = {}
    if logs_dir is not None:
        settings["experiments_path"] = str(logs_dir.resolve())
    if labml_url:
        settings["web_api"] = labml_url
    if settings:
        lab.configure(settings)
    writers = {"screen"} if console.use_live_console() else set()
    from labml.internal.lab import lab_singleton

    lab_singleton().set_path(__file__)
    if lab_singleton().web_api is not None:
        import labml.internal.api as labml_api

        class _DaemonApiCaller(labml_api.ApiCaller):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["daemon"] = True
                super().__init__(*args, **kwargs)

        labml_api.ApiCaller = _DaemonApiCaller
        writers.add("web_api")
    return writers


def _check_writable(folder: Path, needed_bytes: int) -> None:
    """Fail before training if the run folder cannot be created or the disk is nearly full."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(
            f"cannot write run logs under {existing} (not a writable folder); pass --logs-dir "
            f"with a writable folder or fix its permissions"
        )
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise RunError(
            f"only {free / 2**20:.1f} MiB free under {existing}, a checkpoint needs about "
            f"{needed_bytes / 2**20:.1f} MiB; free some space or pass --logs-dir elsewhere"
        )


def _prepare(c: Configs) -> None:
    """Compute the data and the model before any run folder exists, so input errors leave nothing behind."""
    torch.manual_seed(c.seed)
    if c.device.type == "cuda":
        # cuDNN picks the fastest convolution algorithm for our fixed input shapes; the choice can vary
        # between runs, so GPU runs are not bit-for-bit reproducible (CPU runs are).
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    _ = c.train_loader, c.test_loader
    model = c.model.to(c.device)
    if c.channels_last:
        model.to(memory_format=torch.channels_last)
    _ = c.optimizer, c.scheduler, c.epochs, c.iterations


@contextlib.contextmanager
def _labml_run() -> Iterator[None]:
    """
    labml's run context. On the way out labml appends to its run log; on a full disk that write fails
    too, and its `OSError` would replace the trainer's own error, which names the file and the fix.
    So when the run is already ending with an error, that error is the one reported.
    """
    watcher = experiment.start()
    watcher.__enter__()
    try:
        yield
    except BaseException as error:
        with contextlib.suppress(OSError):
            watcher.__exit__(type(error), error, error.__traceback__)
        raise
    try:
        watcher.__exit__(None, None, None)
    except OSError as e:
        raise RunError(
            f"labml could not write its run log ({e.strerror or e}); free some space under "
            f"{lab.get_experiments_path()}"
        ) from None


def _install_signal_handlers(trainer_ref: list) -> dict:
    """
    The first SIGINT/SIGTERM asks the loop to stop after the current step and save; a second SIGINT
    stops at once (the last complete checkpoint stays as it was).
    """
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        trainer = trainer_ref[0] if trainer_ref else None
        if trainer is not None and trainer.stop_signal is None:
            trainer.request_stop(signal.Signals(signum).name)
            if trainer.world.is_main:
                print(
                    f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step "
                    f"(press Ctrl+C again to quit without saving)",
                    file=sys.stderr,
                    flush=True,
                )
        else:
            raise KeyboardInterrupt()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _run_training(args: cli.Invocation, world: World) -> int:
    overrides = dict(args.overrides)
    resumed_from: Path | None = None
    saved: dict[str, Any] | None = None
    logs_dir = args.logs_dir
    writers = _configure_labml(logs_dir, args.labml_url)
    experiments_path = Path(lab.get_experiments_path())
    if args.resume is not None:
        resumed_from = find_checkpoint(args.resume, experiments_path)
        saved = load_checkpoint(resumed_from)
        overrides = {**saved["config"], **overrides}

    c = Configs()
    c.world = world
    if world.is_main:
        # --tensorboard: labml's TensorBoard writer, event files in the run folder's tensorboard/.
        experiment.create(
            name=EXPERIMENT_NAME,
            python_file=str(Path(__file__).resolve()),
            writers=writers | ({"tensorboard"} if args.tensorboard else set()),
            comment=f"resumed from {resumed_from}" if resumed_from else "",
        )
        experiment.configs(c, overrides)
    else:
        from labml.internal.configs.processor import ConfigProcessor
        from labml.internal.monitor import monitor_singleton

        monitor_singleton().silent()
        ConfigProcessor(c, overrides)
    init_process_group(world, c.device)
    _prepare(c)

    run_dir: Path | None = None
    if world.is_main:
        param_bytes = sum(t.numel() * t.element_size() for t in c.model.state_dict().values())
        _check_writable(experiments_path / EXPERIMENT_NAME, 4 * param_bytes + 2**20)
    trainer = Trainer(
        c,
        run_dir=None,
        overrides=overrides,
        stop_after_steps=args.stop_after_steps,
        resumed_from=resumed_from,
    )
    if saved is not None and resumed_from is not None:
        trainer.restore(saved, resumed_from)
        trainer._started = time.perf_counter()

    trainer_ref = [trainer]
    previous_handlers = _install_signal_handlers(trainer_ref)
    try:
        if world.is_main:
            with _labml_run():
                run_dir = experiments_path / EXPERIMENT_NAME / experiment.get_uuid()
                trainer.run_dir = run_dir
                try:
                    (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
                    metrics = run_dir / "metrics.jsonl"
                    metrics.write_text("".join(json.dumps(r) + "\n" for r in trainer.history))
                except OSError as e:
                    raise RunError(
                        f"cannot write to the run folder {run_dir} ({e.strerror or e}); pass "
                        f"--logs-dir with a writable folder"
                    ) from None
                console.print_plain(
                    console.start_line(
                        run_dir,
                        model=_model_name(overrides),
                        recipe=c.recipe,
                        epochs=c.epochs,
                        batch_size=c.batch_size,
                        device=device_description(c.device),
                        resumed_from=resumed_from,
                        epoch=trainer.epoch,
                        step=trainer.step,
                    )
                )
                results = _train_or_stop(trainer)
        else:
            results = _train_or_stop(trainer)
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    if results is None:
        return _STOP_STATUS.get(trainer.stop_signal or "", 0)
    if world.is_main:
        assert run_dir is not None
        write_json(run_dir / "results.json", results)
        if args.results is not None:
            write_json(args.results, results)
        console.print_plain(console.end_line(results))
        print(f"results: {run_dir / 'results.json'}")
        print(f"test accuracy: {results['test_accuracy']:.4f}", flush=True)
    return 0


_STOP_STATUS = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


def _train_or_stop(trainer: Trainer) -> dict[str, Any] | None:
    """Run the trainer; on a stop request save where we are and tell the user how to continue."""
    try:
        return trainer.run()
    except StopRequested:
        trainer.save()
        if trainer.world.is_main:
            print(
                f"\nstopped at step {trainer.step} (epoch {trainer.epoch + 1}, batch {trainer.batch}); "
                f"checkpoint: {trainer.checkpoint_path}\n"
                f"continue with: python experiments/cifar10.py --resume {trainer.run_dir}",
                flush=True,
            )
        return None
    except Diverged as e:
        if trainer.world.is_main and trainer.checkpoint_path is not None:
            kept = (
                f"the last good checkpoint {trainer.checkpoint_path} is kept"
                if trainer.checkpoint_path.exists()
                else "no checkpoint was written before it"
            )
            raise Diverged(f"{e}; {kept}") from None
        raise


def _run_evaluation(args: cli.Invocation) -> int:
    """`--eval CHECKPOINT`: rebuild the network the checkpoint describes and measure it on the test set."""
    from labml.internal.configs.processor import ConfigProcessor

    console.use_live_console()
    path = Path(args.eval)
    saved = load_checkpoint(path)
    c = Configs()
    # The training run's subsets describe what it trained and watched; an evaluation measures the whole
    # test set unless this command asks for a subset itself.
    trained_with = {k: v for k, v in saved["config"].items() if k not in ("test_subset", "train_subset")}
    overrides = {**trained_with, **args.overrides}
    ConfigProcessor(c, overrides)
    model = c.model
    expected = model_signature(_model_name(overrides), c.num_classes, model)
    check_signature(path, saved["signature"], expected)
    # A run with `ema_decay` reported its averaged weights, so those are the ones measured here.
    weights = saved["ema"]["model"] if saved.get("ema") else saved["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        reason = str(e).splitlines()[0][:160]
        raise CheckpointError(f"{path} does not fit {expected['model']} ({reason})") from None
    model.to(c.device)
    if c.channels_last:
        model.to(memory_format=torch.channels_last)
    amp = choose_amp(c.amp, c.device)
    loss, accuracy = evaluate(model, c.test_loader, "test", amp_dtype=amp.dtype, flip_tta=c.flip_tta)
    results = {
        "checkpoint": str(path),
        "model": expected["model"],
        "weights": "averaged (ema)" if saved.get("ema") else "trained",
        "test_loss": loss,
        "test_accuracy": accuracy,
        "test_subset": c.test_subset,
        "test_images": c.test_loader.images_per_epoch,
        "flip_tta": c.flip_tta,
        "amp": amp.chosen,
        "amp_choice": amp.as_dict(),
        "device": device_description(c.device),
        "position": saved["position"],
        **_software(),
    }
    if args.results is not None:
        write_json(args.results, results)
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {accuracy:.4f}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line (exit 2 on bad input), then train or evaluate; returns the exit status."""
    world = world_from_environment()
    args = cli.parse(argv, Configs, nested=NESTED_CONFIGS, recipes=RECIPES, world_size=world.size)
    if world.is_distributed and args.overrides.get("device.use_cuda", True) and torch.cuda.is_available():
        # One GPU per process: torchrun's LOCAL_RANK picks it unless the user chose one.
        args.overrides.setdefault("device.cuda_device", world.local_rank)
    # Restored at the end, for callers that run several trainings in one process (degradation.py).
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        if args.eval is not None:
            return _run_evaluation(args)
        return _run_training(args, world)
    except (cifar_data.DataError, CheckpointError, RunError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; the last complete checkpoint is unchanged", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT
    finally:
        destroy_process_group()
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
