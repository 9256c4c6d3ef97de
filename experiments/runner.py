"""
# Running a training: everything around the loop

[`cifar10.py`](cifar10.html) says what training *is*: the data, the network, the optimizer, the
schedule, one epoch of steps and one evaluation. This module does what a run needs on a real machine
besides, the way labml's own experiments lean on its shared trainer:

* a [`Run`](#Run) wraps the network for several processes and for `torch.compile`, holds the number
  format, the optional weight average and the run's [`Progress`](progress.html), and turns each
  finished step and epoch into metrics, checkpoints and, at the end, `results.json`;
* it stops cleanly: after the first SIGINT/SIGTERM (or `--stop-after-steps`, or a time limit) at the
  next step, with a checkpoint to resume from; at the first non-finite loss, naming the step and keeping
  the last good checkpoint. With several processes all ranks agree first
  ([`distributed.py`](distributed.html));
* it checks before training that the run folder can be written, and works around two things in labml
  0.4.168 (a sender thread that keeps the process alive, and a log write that hides the real error on a
  full disk);
* [`run_training`](#run_training) and [`run_evaluation`](#run_evaluation) are what the command line
  and the Python API (`experiments.cifar10.train`) both call, so the two run exactly the same code.
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
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn as nn
from labml import experiment, lab, monit, tracker
from labml.configs import BaseConfigs

from experiments import cli, console
from experiments import data as cifar_data
from experiments.checkpoint import (
    CHECKPOINT_DIR,
    LAST,
    CheckpointError,
    RunParts,
    check_network,
    checkpoint_state,
    evaluation_settings,
    evaluation_weights,
    find_checkpoint,
    load_checkpoint,
    model_signature,
    restore_checkpoint,
    save_checkpoint,
    saved_position,
    saved_settings,
)
from experiments.distributed import (
    NO_BAD_STEP,
    World,
    agree_on_stop,
    destroy_process_group,
    init_process_group,
    state_hashes,
    sum_over_ranks,
    world_from_environment,
)
from experiments.ema import WeightAverage
from experiments.files import write_json
from experiments.precision import Precision, choose_amp, cpu_model_name, step_timer
from experiments.progress import Progress
from experiments.recipes import ScheduleError
from experiments.run_configs import Request, uses_cuda_graphs

# ## Errors that end a run cleanly


class RunError(Exception):
    """A problem that ends the run with a one-line message and exit status 1 (no traceback)."""


class StopRequested(Exception):
    """A signal, `--stop-after-steps` or the time limit asked the run to stop; raised between steps."""


class Diverged(RunError):
    """The loss became NaN or infinite."""


# Exit statuses of a run that a signal stopped, as a shell reports a process killed by it.
STOP_STATUS = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


# ## What a training script hands the runner


@dataclass(frozen=True)
class Experiment:
    """
    A training script, as the runner sees it: its name (the logs folder `logs/<name>/`), its
    configuration class, the sub-configurations reachable as `optimizer.*` and the like, the function
    that trains a computed configuration to the end (`fit(c, run) -> test scores`, single view first),
    its evaluation function, its source file, which labml records with every run, and its recipes
    (`--recipe`).
    """

    name: str
    configs: type[BaseConfigs]
    nested: dict[str, type]
    fit: Callable[[Any, "Run"], dict[str, float]]
    evaluate: Callable[..., dict[str, float]]
    source: Path
    recipes: dict[str, dict[str, Any]]


@dataclass
class Results:
    """
    What a run produced. `summary` is `results.json` (None when the run stopped before its end),
    `history` the per-epoch records of `metrics.jsonl`, `stopped` why it stopped early (a signal's name,
    `--stop-after-steps` or `time limit`), and `run_dir` its folder (None on ranks other than 0).
    """

    summary: dict[str, Any] | None
    history: list[dict[str, Any]]
    run_dir: Path | None
    stopped: str | None = None

    @property
    def test_accuracy(self) -> float | None:
        return None if self.summary is None else float(self.summary["test_accuracy"])

    @property
    def checkpoint(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / CHECKPOINT_DIR / LAST


# ## One run


class Batches(Protocol):
    """What a run needs of a loader (`experiments.loader.TensorBatches` is one)."""

    def __len__(self) -> int: ...

    @property
    def images_per_epoch(self) -> int: ...

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class TrainingConfigs(Protocol):
    """
    What the runner reads from a training script's computed configuration (`cifar10.Configs` is one):
    the run settings of `RunConfigs`, the data of `CifarDataConfigs`, and what the script itself
    declares (the network, its optimizer and schedule, the run's length, how it evaluates). Nothing
    else of `c` is touched here.
    """

    # `experiments.run_configs.RunConfigs`
    device: torch.device
    world: World
    seed: int
    amp: str
    channels_last: bool
    compile: bool
    compile_mode: str
    sync_bn: bool
    ema_decay: float
    log_every: int
    # `experiments.loader.CifarDataConfigs`
    batch_size: int
    train_loader: Batches
    valid_loader: Batches | None
    test_loader: Batches
    valid_split: int
    train_subset: int
    test_subset: int
    augment: bool
    cutout: int
    # The training script's own
    model: nn.Module
    num_classes: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epochs: int
    iterations: int
    label_smoothing: float
    flip_tta: bool
    shift_tta: int
    recipe: str


class Run:
    """
    One training run of a computed configuration `c`. The training script's loop calls `batches`,
    `after_step` and `end_epoch`; the rest happens here.

    `model` is the network as the steps call it (wrapped for several processes, `torch.compile` and
    fp16's loss scaling); `network` is the bare network, whose state is saved. `run_dir` is the run
    folder on rank 0 and `None` elsewhere. A `saved` checkpoint (from `resumed_from`) is restored before
    the run begins.
    """

    def __init__(
        self,
        c: TrainingConfigs,
        *,
        model_name: str,
        settings: dict[str, Any],
        run_dir: Path | None,
        stop_after_steps: int | None = None,
        time_limit_s: float | None = None,
        resumed_from: Path | None = None,
        saved: dict[str, Any] | None = None,
    ) -> None:
        self.c = c
        self.world: World = c.world
        self.device: torch.device = c.device
        self.model_name = model_name
        self.settings = settings
        self.run_dir = run_dir
        self.stop_after_steps = stop_after_steps
        self.time_limit_s = time_limit_s
        self.resumed_from = resumed_from
        self.network: nn.Module = c.model
        self.signature = model_signature(model_name, c.num_classes, self.network)
        # `amp=auto` is decided here, once, by timing a copy of the network (`experiments/precision.py`).
        # With several processes each would measure on its own and might disagree, so they keep float32.
        measure = None
        if not self.world.is_distributed:
            measure = step_timer(
                self.network, (c.batch_size, 3, 32, 32), c.num_classes, self.device, c.channels_last
            )
        self.precision = Precision(choose_amp(c.amp, self.device, measure), self.device)
        self.cuda_graphs = uses_cuda_graphs(c.compile, c.compile_mode)
        # With fp16, the gradient scaling hooks in here (`Precision.attach`); the step stays plain.
        self.model = self.precision.attach(self._wrap_model(), c.optimizer)
        # Copied after `_wrap_model`, which may swap in synchronised batch norm.
        self.ema = WeightAverage(self.network, c.ema_decay) if c.ema_decay > 0 else None
        self.progress = Progress(self.device)
        self.stop_reason: str | None = None
        self._first_bad_step = torch.full((), NO_BAD_STEP, dtype=torch.int64, device=self.device)
        # A CPU step takes long enough that agreeing after every one costs nothing; elsewhere every 10th.
        self._check_every = 1 if (self.device.type == "cpu" and not self.world.is_distributed) else 10
        if saved is not None:
            assert resumed_from is not None
            self._restore(saved, resumed_from)
        self._started = time.perf_counter()

    def _wrap_model(self) -> nn.Module:
        model = self.network
        if self.world.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            if self.c.sync_bn:
                # Converting keeps parameter names, so the saved state dict is unchanged.
                model = self.network = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            on_gpu = self.device.type == "cuda"
            model = DistributedDataParallel(model, device_ids=[self.device.index] if on_gpu else None)
        if self.c.compile:
            model = torch.compile(model, mode=self.c.compile_mode)
        return model

    @property
    def eval_model(self) -> nn.Module:
        """What evaluation measures: the average of the weights when the run keeps one."""
        return self.ema.model if self.ema is not None else self.model

    # ### Checkpoints

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / CHECKPOINT_DIR / LAST

    def _parts(self) -> RunParts:
        return RunParts(
            self.network, self.c.optimizer, self.c.scheduler, self.precision.scaler, self.ema, self.progress
        )

    def _restore(self, saved: dict[str, Any], path: Path) -> None:
        restore_checkpoint(path, saved, self._parts(), self.signature, len(self.c.train_loader))

    def save(self) -> None:
        """Rank 0 writes the checkpoint; a failed write stops the run and keeps the previous file."""
        if self.checkpoint_path is None:
            return
        state = checkpoint_state(self._parts(), self.settings, self.signature)
        try:
            save_checkpoint(self.checkpoint_path, state)
        except OSError as e:
            raise RunError(
                f"could not write checkpoint {self.checkpoint_path} ({e.strerror or e}); the last "
                f"good checkpoint there is kept: free space or fix permissions, then resume with "
                f"--resume {self.run_dir}"
            ) from None

    # ### Steps

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    def check_stop(self) -> None:
        """
        Raise `StopRequested` if this process was asked to stop (called between evaluation batches). With
        several processes the evaluation runs to its end instead, and the ranks agree at the next step.
        """
        if self.stop_reason and not self.world.is_distributed:
            raise StopRequested()

    def batches(self, loader: Batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """
        The batches left in the current epoch: all of them, or after a resume those after the last step
        taken. Ends early at the run's last iteration; between steps it stops the run (all ranks
        together) on a stop request or a non-finite loss. The training clock runs while this does.
        """
        progress = self.progress
        start = time.perf_counter()
        epoch = loader.epoch(progress.epoch, start_batch=progress.batch)
        try:
            for x, y in monit.iterate("Train", epoch, total_steps=len(loader) - progress.batch):
                if progress.step >= self.c.iterations:
                    break
                if self.cuda_graphs:
                    # Tells the recorded graphs that the previous step's outputs are no longer needed.
                    torch.compiler.cudagraph_mark_step_begin()
                yield x, y
                # With several processes every rank must reach each agreement at the same step, so a stop
                # asked of one rank (its time limit, a signal only it got) waits for the next scheduled one.
                alone = not self.world.is_distributed
                if progress.step % self._check_every == 0 or (self.stop_reason and alone):
                    self._agree_on_stop()
            self._agree_on_stop()
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            progress.train_time_s += time.perf_counter() - start

    def after_step(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count a finished step: epoch sums, the weight average, the divergence watch and the console."""
        loss = loss.detach().float()
        progress = self.progress
        # Remember the first step whose loss is not finite, without waiting for the device to say so.
        self._first_bad_step = torch.where(
            torch.isfinite(loss) | (self._first_bad_step < NO_BAD_STEP),
            self._first_bad_step,
            torch.full_like(self._first_bad_step, progress.step),
        )
        if self.ema is not None:
            self.ema.update(self.network)
        progress.add_step(loss, logits, labels, self.world.size)
        tracker.set_global_step(progress.step)
        if self.stop_after_steps is not None and progress.step >= self.stop_after_steps:
            self.request_stop("--stop-after-steps")
        if self.time_limit_s is not None and time.perf_counter() - self._started >= self.time_limit_s:
            self.request_stop("time limit")
        if self.world.is_main and progress.step % self.c.log_every == 0:
            seen = progress.sums["seen"].clamp(min=1)
            tracker.save(
                progress.step,
                {
                    "loss.train": (progress.sums["loss"] / seen).item(),
                    "accuracy.train": (progress.sums["correct"] / seen).item(),
                },
            )

    def _agree_on_stop(self) -> None:
        stop, first_bad = agree_on_stop(self.stop_reason is not None, self._first_bad_step, self.world)
        if first_bad is not None:
            raise Diverged(
                f"the loss became non-finite (NaN or infinite) at step {first_bad}; the learning "
                f"rate is probably too high: try a lower one, e.g. --lr {self._lower_lr():g}"
            )
        if stop:
            self.request_stop("a stop on another rank")
            raise StopRequested()

    def _lower_lr(self) -> float:
        return float(self.c.scheduler.base_lrs[0]) / 10

    # ### Epochs

    @property
    def done(self) -> bool:
        """Whether the schedule is over and its last epoch recorded (a stop can come in between)."""
        return self.progress.step >= self.c.iterations and self.progress.batch == 0

    @property
    def finishing(self) -> bool:
        """Whether the epoch just trained is the run's last."""
        return self.progress.epoch + 1 >= self.c.epochs or self.progress.step >= self.c.iterations

    def end_epoch(self, scores: dict[str, float]) -> None:
        """
        Record the finished epoch (training sums over all ranks, plus the evaluation `scores` such as
        `{"valid_loss": ..., "valid_accuracy": ...}`), print and log it, and write the checkpoint.
        """
        progress = self.progress
        for name, value in scores.items():
            if name.endswith("_loss") and not math.isfinite(value):
                # Weights that give non-finite logits are as diverged as a non-finite training loss, and
                # must not replace the last good checkpoint either.
                raise Diverged(
                    f"the {name[: -len('_loss')]} loss became non-finite (NaN or infinite) after step "
                    f"{progress.step}; the learning rate is probably too high: try a lower one, "
                    f"e.g. --lr {self._lower_lr():g}"
                )
        sums = {k: sum_over_ranks(v, self.world) for k, v in progress.sums.items()}
        seen = max(1, int(sums["seen"].item()))
        time_before = progress.history[-1]["train_time_s"] if progress.history else 0.0
        record: dict[str, Any] = {
            "epoch": progress.epoch + 1,
            "step": progress.step,
            "lr": self.c.optimizer.param_groups[0]["lr"],
            "train_loss": sums["loss"].item() / seen,
            "train_accuracy": sums["correct"].item() / seen,
            **scores,
            "epoch_train_time_s": progress.train_time_s - time_before,
            "train_time_s": progress.train_time_s,
            "train_images_per_s": progress.train_images_per_s,
        }
        progress.end_epoch(record)
        if self.world.is_main:
            curves = {
                k.replace("_", ".", 1): v for k, v in record.items() if k.endswith(("loss", "accuracy"))
            }
            tracker.save(progress.step, curves)
            tracker.new_line()
            self._append_metrics(record)
            console.print_plain(console.epoch_line(record, self.c.epochs))
        self.save()

    # ### Files

    def begin(self) -> None:
        """Rank 0, inside labml's run: the run folder's checkpoint folder and metrics so far."""
        if self.run_dir is None:
            return
        try:
            (self.run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
            history = self.progress.history
            (self.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        except OSError as e:
            raise RunError(
                f"cannot write to the run folder {self.run_dir} ({e.strerror or e}); pass "
                f"--logs-dir with a writable folder"
            ) from None
        c = self.c
        console.print_plain(
            console.start_line(
                self.run_dir,
                model=self.model_name,
                recipe=c.recipe,
                epochs=c.epochs,
                batch_size=c.batch_size,
                device=device_description(self.device),
                resumed_from=self.resumed_from,
                epoch=self.progress.epoch,
                step=self.progress.step,
            )
        )

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

    def summary(self, test: dict[str, float]) -> dict[str, Any]:
        """`results.json`: the final numbers, and everything needed to tell what they measured."""
        c, progress = self.c, self.progress
        last = progress.history[-1] if progress.history else {}
        hashes = state_hashes(state_hash(self.network), self.world)
        return {
            "model": self.model_name,
            "recipe": c.recipe,
            "seed": c.seed,
            "num_classes": c.num_classes,
            "parameters": sum(p.numel() for p in self.network.parameters()),
            "epochs": progress.epoch,
            "steps": progress.step,
            "batch_size": c.batch_size,
            "train_loss": last.get("train_loss"),
            "train_accuracy": last.get("train_accuracy"),
            "valid_loss": last.get("valid_loss"),
            "valid_accuracy": last.get("valid_accuracy"),
            "valid_accuracy_tta": last.get("valid_accuracy_tta"),
            # The paper's protocol, one view of each test image; the test-time views' average beside it
            # (None when the recipe uses none).
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "test_loss_tta": test.get("loss_tta"),
            "test_accuracy_tta": test.get("accuracy_tta"),
            "tta_views": tta_views(c.flip_tta, c.shift_tta),
            "wall_time_s": progress.elapsed_s,
            "train_time_s": progress.train_time_s,
            "train_images_per_s": progress.train_images_per_s,
            "device": device_description(self.device),
            "world_size": self.world.size,
            "amp": self.precision.choice.chosen,
            "amp_choice": self.precision.choice.as_dict(),
            "channels_last": c.channels_last,
            "compile": c.compile,
            "compile_mode": c.compile_mode,
            "cutout": c.cutout,
            # With an average, the valid/test numbers are the averaged network's.
            "ema_decay": c.ema_decay,
            "weights_sha256": hashes[0],
            "ranks_agree": len(set(hashes)) == 1,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            # What the numbers were measured on, so a subset run can never pass for a full one.
            "data": {
                "train_subset": c.train_subset,
                "test_subset": c.test_subset,
                "valid_split": c.valid_split,
                "train_images": c.train_loader.images_per_epoch * self.world.size,
                "valid_images": c.valid_loader.images_per_epoch if c.valid_loader else 0,
                "test_images": c.test_loader.images_per_epoch,
                "augment": c.augment,
                "cutout": c.cutout,
                "flip_tta": c.flip_tta,
                "shift_tta": c.shift_tta,
            },
            "label_smoothing": c.label_smoothing,
            "images_seen": progress.train_images,
            **software(),
        }


def tta_views(flip: bool, shift: int) -> int:
    """How many views of each image the test-time average takes (1: the single view alone)."""
    return (3 if shift else 1) * (2 if flip else 1)


def state_hash(model: nn.Module) -> str:
    """A SHA-256 of every tensor in the model's state, to compare weights across processes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def software() -> dict[str, Any]:
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


# ## Before training: labml, the disk, the data and the model


def configure_labml(logs_dir: Path | None, labml_url: str | None) -> set[str]:
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

        labml_api.ApiCaller = _DaemonApiCaller  # type: ignore[misc]
        writers.add("web_api")
    return writers


def check_writable(folder: Path, needed_bytes: int) -> None:
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


def prepare(c: TrainingConfigs) -> None:
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
def labml_run() -> Iterator[None]:
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


@contextlib.contextmanager
def stop_on_signals(run: Run) -> Iterator[None]:
    """
    The first SIGINT/SIGTERM asks the run to stop after the current step and save; a second SIGINT
    stops at once (the last complete checkpoint stays as it was). The previous handlers come back after.
    """

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if run.stop_reason is not None:
            raise KeyboardInterrupt()
        run.request_stop(name)
        if run.world.is_main:
            print(
                f"\n{name} received: saving a checkpoint after this step "
                f"(press Ctrl+C again to quit without saving)",
                file=sys.stderr,
                flush=True,
            )

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    # Restored afterwards, for callers that run several trainings in one process (degradation.py).
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _compute(exp: Experiment, settings: dict[str, Any], world: World, *, tracked: bool, **create: Any) -> Any:
    """A configuration with `settings` applied: tracked by labml on rank 0, silently elsewhere."""
    c = exp.configs()
    c.world = world
    if tracked:
        experiment.create(name=exp.name, python_file=str(exp.source.resolve()), **create)
        experiment.configs(c, settings)
    else:
        from labml.internal.configs.processor import ConfigProcessor
        from labml.internal.monitor import monitor_singleton

        if not world.is_main:
            # Rank 0 alone talks to the user.
            monitor_singleton().silent()
        ConfigProcessor(c, settings)
    return c


# ## Training and evaluating


def run_training(exp: Experiment, request: Request) -> Results:
    """
    Train as `request` asks, from the start or from a checkpoint, to the end of the schedule or until
    stopped. Raises `RunError`, `cifar_data.DataError` or `CheckpointError` with a one-line message.
    """
    world = world_from_environment()
    with _threads(request.threads):
        try:
            return _train(exp, request, world)
        finally:
            destroy_process_group()


def _resumed_settings(
    exp: Experiment, request: Request, world: World, path: Path, saved: dict[str, Any]
) -> dict[str, Any]:
    """
    A resumed run's settings: the checkpoint's `saved` ones with the new ones over them, given the
    checks the command line leaves to a resume. If the checkpoint's own settings cannot run here (one
    written on a GPU machine may ask for CUDA graphs) it is refused as a checkpoint; if only what was
    typed this time breaks them, as a usage error.
    """
    merged = {**saved, **request.settings}

    def problem(o: dict[str, Any], typed: Collection[str], resumed: bool) -> str | None:
        try:
            cli.check_combinations(o, exp.configs, exp.nested, typed)
            cli.check_hardware(o, exp.configs, exp.nested, world.size, request.wants_cuda, resumed=resumed)
        except cli.UsageError as e:
            return str(e)
        return None

    typed_problem = problem(merged, request.settings.keys(), resumed=False)
    if typed_problem is None:
        return merged
    if problem(saved, (), resumed=True) is None:
        raise cli.UsageError(typed_problem)
    raise CheckpointError(f"{path}: {problem(merged, request.settings.keys(), resumed=True)}")


def _train(exp: Experiment, request: Request, world: World) -> Results:
    settings = dict(request.settings)
    writers = configure_labml(request.logs_dir, request.labml_url)
    experiments_path = Path(lab.get_experiments_path())
    resumed_from, saved = None, None
    if request.resume is not None:
        resumed_from = find_checkpoint(request.resume, experiments_path)
        saved = load_checkpoint(resumed_from)
        settings = _resumed_settings(exp, request, world, resumed_from, saved_settings(saved))

    if request.tensorboard:
        # labml's TensorBoard writer: event files in the run folder's tensorboard/.
        writers = writers | {"tensorboard"}
    comment = f"resumed from {resumed_from}" if resumed_from else ""
    c = _compute(exp, settings, world, tracked=world.is_main, writers=writers, comment=comment)
    init_process_group(world, c.device)
    prepare(c)
    run_dir = None
    if world.is_main:
        param_bytes = sum(t.numel() * t.element_size() for t in c.model.state_dict().values())
        check_writable(experiments_path / exp.name, 4 * param_bytes + 2**20)
        run_dir = experiments_path / exp.name / experiment.get_uuid()
    run = Run(
        c,
        model_name=str(settings.get("model", cli.config_default(exp.configs, "model"))),
        settings=settings,
        run_dir=run_dir,
        stop_after_steps=request.stop_after_steps,
        time_limit_s=request.time_limit_s,
        resumed_from=resumed_from,
        saved=saved,
    )
    with stop_on_signals(run):
        if world.is_main:
            with labml_run():
                run.begin()
                scores = _fit_or_stop(exp, c, run)
        else:
            scores = _fit_or_stop(exp, c, run)
    if scores is None:
        return Results(None, run.progress.history, run_dir, stopped=run.stop_reason)
    summary = run.summary(scores)
    if run_dir is not None:
        write_json(run_dir / "results.json", summary)
        if request.results is not None:
            write_json(request.results, summary)
        console.print_plain(console.end_line(summary))
        print(f"results: {run_dir / 'results.json'}")
        print(console.accuracy_line(summary), flush=True)
    return Results(summary, run.progress.history, run_dir)


def _fit_or_stop(exp: Experiment, c: TrainingConfigs, run: Run) -> dict[str, float] | None:
    """Train to the end; on a stop request save where we are and say how to continue (then `None`)."""
    try:
        return exp.fit(c, run)
    except StopRequested:
        run.save()
        if run.world.is_main:
            p = run.progress
            print(
                f"\nstopped at step {p.step} (epoch {p.epoch + 1}, batch {p.batch}); "
                f"checkpoint: {run.checkpoint_path}\n"
                f"continue with: python {os.path.relpath(exp.source)} --resume {run.run_dir}",
                flush=True,
            )
        return None
    except Diverged as e:
        if run.world.is_main and run.checkpoint_path is not None:
            kept = (
                f"the last good checkpoint {run.checkpoint_path} is kept"
                if run.checkpoint_path.exists()
                else "no checkpoint was written before it"
            )
            raise Diverged(f"{e}; {kept}") from None
        raise


def run_evaluation(exp: Experiment, request: Request) -> dict[str, Any]:
    """`--eval CHECKPOINT`: rebuild the network the checkpoint describes and measure it on the test set."""
    assert request.eval is not None
    console.use_live_console()
    path = Path(request.eval)
    saved = load_checkpoint(path)
    settings = {**evaluation_settings(saved), **request.settings}
    with _threads(request.threads):
        c = _compute(exp, settings, World(), tracked=False)
        model = c.model
        model_name = str(settings.get("model", cli.config_default(exp.configs, "model")))
        expected = model_signature(model_name, c.num_classes, model)
        check_network(path, saved, expected)
        weights, which = evaluation_weights(saved)
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            reason = str(e).splitlines()[0][:160]
            raise CheckpointError(f"{path} does not fit {expected['model']} ({reason})") from None
        model.to(c.device)
        if c.channels_last:
            model.to(memory_format=torch.channels_last)
        amp = choose_amp(c.amp, c.device)
        scores = exp.evaluate(
            model, c.test_loader, "test", amp_dtype=amp.dtype, flip_tta=c.flip_tta, shift_tta=c.shift_tta
        )
        results = {
            "checkpoint": str(path),
            "model": expected["model"],
            "weights": which,
            "test_loss": scores["loss"],
            "test_accuracy": scores["accuracy"],
            "test_loss_tta": scores.get("loss_tta"),
            "test_accuracy_tta": scores.get("accuracy_tta"),
            "tta_views": tta_views(c.flip_tta, c.shift_tta),
            "test_subset": c.test_subset,
            "test_images": c.test_loader.images_per_epoch,
            "flip_tta": c.flip_tta,
            "shift_tta": c.shift_tta,
            "amp": amp.chosen,
            "amp_choice": amp.as_dict(),
            "device": device_description(c.device),
            "position": saved_position(saved),
            **software(),
        }
    if request.results is not None:
        write_json(request.results, results)
    print(f"test loss: {scores['loss']:.4f}")
    print(console.accuracy_line(results), flush=True)
    return results


def exit_status(exp: Experiment, request: Request) -> int:
    """Run what a command line asked for and turn the outcome into an exit status (errors: one line)."""
    try:
        if request.eval is not None:
            run_evaluation(exp, request)
            return 0
        results = run_training(exp, request)
    except cli.UsageError as e:
        # What the command line could only check against a checkpoint's settings (a resume).
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except (cifar_data.DataError, CheckpointError, RunError, ScheduleError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; the last complete checkpoint is unchanged", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT
    return STOP_STATUS.get(results.stopped or "", 0)


# ## The entry points a training script exposes


# Spelled out as protocols rather than `Callable[..., ...]` so that an editor shows the keyword
# signature of `cifar10.train(...)`, and a type checker run on the caller's code flags a positional setting.
class TrainFunction(Protocol):
    def __call__(
        self, *, recipe: str | None = None, device: str | None = None, **settings: Any
    ) -> Results: ...


class EvaluateFunction(Protocol):
    def __call__(self, path: str | Path, **settings: Any) -> dict[str, Any]: ...


class MainFunction(Protocol):
    def __call__(self, argv: list[str] | None = None) -> int: ...


class EntryPoints(NamedTuple):
    """What `entry_points` returns; a training script unpacks it into its own names."""

    train: TrainFunction
    evaluate_checkpoint: EvaluateFunction
    main: MainFunction


def entry_points(exp: Experiment) -> EntryPoints:
    """
    The three ways into a training script, bound to its `Experiment`: `train(**settings)` and
    `evaluate_checkpoint(path, **settings)` from Python, `main(argv)` on the command line. All three
    check their settings as the command line does, so Python and the shell run exactly the same code.
    """

    def train(*, recipe: str | None = None, device: str | None = None, **settings: Any) -> Results:
        """
        `train(model="resnet56", epochs=30, data_dir="data")` runs what the command line runs (`recipe`
        defaults to the configuration's, the paper's), with the same checks (a bad setting raises
        `cli.UsageError`, a schedule that contradicts itself once the run's length is known a
        `recipes.ScheduleError`) and the same run folder. The other flags go by name (`logs_dir`,
        `resume`, `results`, `threads`, `time_limit_s`, `stop_after_steps`, ...). Returns the run's
        `Results`; their `summary` is `None` when the run stopped early.
        """
        if "eval" in settings:
            raise cli.UsageError("train() trains; to measure a checkpoint use evaluate_checkpoint(path, ...)")
        return run_training(exp, _checked(exp, settings, recipe=recipe, device=device))

    def evaluate_checkpoint(path: str | Path, **settings: Any) -> dict[str, Any]:
        """What `--eval PATH` does: the checkpoint's network on the whole test set (or `test_subset=`)."""
        return run_evaluation(exp, _checked(exp, {**settings, "eval": str(path)}))

    def main(argv: list[str] | None = None) -> int:
        """The command line: parse and check it (exit 2 on bad input), then train or evaluate."""
        world = world_from_environment()
        request = cli.parse(argv, exp.configs, nested=exp.nested, recipes=exp.recipes, world=world)
        return exit_status(exp, request)

    return EntryPoints(train, evaluate_checkpoint, main)


def _checked(exp: Experiment, settings: dict[str, Any], **options: Any) -> Request:
    # The flags by name (`logs_dir`, `threads`, ...) apart from the configuration's settings.
    run = {key: settings.pop(key) for key in list(settings) if key in cli.RUN_OPTIONS}
    world = world_from_environment()
    return cli.check(
        settings, exp.configs, nested=exp.nested, recipes=exp.recipes, world=world, **options, **run
    )
