"""
# One training run: the steps, the epochs, the checkpoints and the numbers

[`cifar10.py`](cifar10.html) says what training *is*; a [`Run`](#Run) makes that a run on a real machine.
It wraps the network for several processes and `torch.compile`, holds the number format, the [weight
average and Lookahead](average.html) and the [`Progress`](#Progress), turns steps and epochs into
console lines, metrics, checkpoints and `results.json`, and stops between steps on a request or at the
first non-finite loss, all ranks together ([`distributed.py`](distributed.html)).
"""

import contextlib
import json
import math
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn as nn
from labml import tracker
from torch.nn.parallel import DistributedDataParallel

from experiments import checkpoint as ckpt
from experiments import data as cifar_data
from experiments.average import Lookahead, WeightAverage
from experiments.console import Console, epoch_line, estimate_line, start_line, status_line
from experiments.distributed import NO_BAD_STEP, agree_on_stop, state_hash, sum_over_ranks
from experiments.errors import ExperimentError, UsageError
from experiments.precision import AmpChoice, choose_amp, cpu_bf16_units, machine, step_timer
from experiments.recipes import RECIPES
from experiments.run_configs import uses_cuda_graphs


class RunError(ExperimentError):
    """A run that cannot go on (a folder it cannot write, a loss that diverged); exit status 1."""


class Diverged(RunError):
    """The loss became NaN or infinite."""


class StopRequested(Exception):
    """A signal, `--stop-after-steps` or the time limit asked the run to stop; raised between steps."""


@contextlib.contextmanager
def memory_errors(batch_size: int, run_dir: Path | None, *, made_here: bool) -> Iterator[None]:
    """
    Out of memory as one line naming `--batch-size`. A run folder with no checkpoint yet goes, but only
    if this process `made_here`: a `--run-dir` that existed before may hold what its owner had.
    """
    try:
        yield
    except (RuntimeError, MemoryError) as error:
        on_cuda = isinstance(error, torch.OutOfMemoryError)
        if not (on_cuda or isinstance(error, MemoryError) or "can't allocate memory" in str(error)):
            raise
        kept = ""
        if run_dir is not None and (run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST).exists():
            kept = f"; the last checkpoint {run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST} is kept"
        elif run_dir is not None and made_here:
            shutil.rmtree(run_dir, ignore_errors=True)
        # The allocators' messages run to several lines; the size asked for is the useful part.
        asked = re.search(r"allocate (\d+) bytes|[Tt]ried to allocate ([\d.]+ ?[KMGT]i?B)", str(error))
        reason = type(error).__name__
        if asked:
            size = f"{int(asked[1]) / 2**20:.0f} MiB" if asked[1] else asked[2]
            reason = f"{'CUDA' if on_cuda else 'it'} asked for {size} more"
        raise UsageError(
            f"out of memory with --batch-size {batch_size} ({reason}){kept}; give a smaller "
            "--batch-size (the paper trains with 128)"
        ) from None


# Steps timed (after the first, which includes warm-up and compilation) before the estimate line.
ESTIMATE_AFTER_STEPS = 10


class Progress:
    """
    Where a run is (the next step is batch `batch` of epoch `epoch`), this rank's sums over the partial
    epoch, the history and the clocks, which count across resumptions; saved and restored like a module.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.step = self.epoch = self.batch = self.train_images = 0
        self.sums = self.zero_sums()
        self.history: list[dict[str, Any]] = []
        self.train_time_s = self._elapsed_before = 0.0
        self._started = time.perf_counter()

    def zero_sums(self) -> dict[str, torch.Tensor]:
        # Summed on the device in 64 bits: the epoch's mean is exact, and no step waits for the host.
        types = {"loss": torch.float64, "correct": torch.int64, "seen": torch.int64}
        return {key: torch.zeros((), dtype=dtype, device=self.device) for key, dtype in types.items()}

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
            "timing": {"elapsed_s": self.elapsed_s, "train_time_s": self.train_time_s,
                       "train_images": self.train_images},
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        position, timing = state["position"], state["timing"]
        self.step, self.epoch, self.batch = (int(position[k]) for k in ("step", "epoch", "batch"))
        self.sums = {k: v.to(self.device) for k, v in state["epoch_sums"].items()}
        self.history = list(state["history"])
        self.train_time_s = float(timing["train_time_s"])
        self.train_images = int(timing["train_images"])
        # The wall clock continues from where the stopped run left it.
        self._elapsed_before, self._started = float(timing["elapsed_s"]), time.perf_counter()


class Run:
    """
    One training run of a computed configuration `c`: the loop calls `batches`, `after_step` and
    `end_epoch`, and steps through `scaler`. `model` is the network the steps call (wrapped for several
    processes and `torch.compile`), `network` the bare one whose state is saved; `run_dir` is the run
    folder on rank 0, else `None`. A `saved` checkpoint is restored first ([how](#_settings_kept)).
    """

    def __init__(
        self, c: Any, *, model_name: str, settings: dict[str, Any], run_dir: Path | None,
        stop_after_steps: int | None = None, time_limit_s: float | None = None,
        resumed_from: Path | None = None, saved: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.c, self.world, self.device = c, c.world, c.device
        self.model_name, self.settings, self.run_dir = model_name, settings, run_dir
        self.stop_after_steps, self.time_limit_s = stop_after_steps, time_limit_s
        self.resumed_from = resumed_from
        self._kept = (  # what to do after a failed write, which leaves the last good checkpoint in place
            f"the last good checkpoint is kept: free space or fix permissions, then --resume {run_dir}"
        )
        self.console = Console(every_s=c.progress_every_s)
        self.network: nn.Module = c.model
        self.signature = ckpt.model_signature(model_name, c.num_classes, self.network)
        # `amp=auto` times a copy of the network (`precision.py`); several processes might disagree, so
        # they keep float32.
        shape = (c.batch_size, 3, 32, 32)
        measure = step_timer(self.network, shape, c.num_classes, self.device, c.channels_last)
        self.amp = choose_amp(c.amp, self.device, None if self.world.is_distributed else measure)
        # fp16's narrow range lets small gradients underflow: the step scales the loss through this (a
        # no-op in other formats), and its adaptive scale is part of the checkpoint.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp.chosen == "fp16")
        self.cuda_graphs = uses_cuda_graphs(c.compile, c.compile_mode)
        self.model = self.network
        if self.world.is_distributed:
            if c.sync_bn:  # converting keeps parameter names, so the saved state dict is unchanged
                self.model = self.network = nn.SyncBatchNorm.convert_sync_batchnorm(self.network)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.network, device_ids=ids)
        if c.compile:
            self.model = torch.compile(self.model, mode=c.compile_mode)
        # Copied from the network as the steps train it (with synchronised batch norm, if swapped in).
        self.ema = WeightAverage(self.network, c.ema_decay) if c.ema_decay > 0 else None
        self.eval_model = self.ema.module if self.ema is not None else self.model
        self.total_steps = min(c.iterations, c.epochs * len(c.train_loader))
        self.lookahead = (
            Lookahead(self.network, c.lookahead_every, c.lookahead_decay, self.total_steps)
            if c.lookahead_every > 0
            else None
        )
        self.progress = Progress(self.device)
        self.stop_reason: str | None = None
        self._first_bad_step = torch.full((), NO_BAD_STEP, dtype=torch.int64, device=self.device)
        # A CPU step takes long enough that agreeing after every one costs nothing; elsewhere every 10th.
        self._check_every = 1 if (self.device.type == "cpu" and not self.world.is_distributed) else 10
        if saved is not None:
            assert resumed_from is not None
            with _settings_kept(c.optimizer, c.scheduler):
                ckpt.restore_checkpoint(
                    resumed_from, saved, self._parts(), self.signature, len(c.train_loader)
                )
            if not self.world.is_main:  # the saved sums are all ranks' total: rank 0 carries them on
                self.progress.sums = self.progress.zero_sums()
        self._started = time.perf_counter()
        self._timed: tuple[float, int] | None = None  # (clock, step) after this process's first step

    def autocast(self) -> torch.autocast:
        """bf16 or fp16 for the forward pass when the run asks for it; a no-op otherwise."""
        return torch.autocast(self.device.type, dtype=self.amp.dtype, enabled=self.amp.dtype is not None)

    # ### Steps

    def request_stop(self, reason: str) -> None:
        self.stop_reason = self.stop_reason or reason

    def check_stop(self) -> None:
        """Stop between evaluation batches; with several processes the ranks agree at the next step."""
        if self.stop_reason and not self.world.is_distributed:
            raise StopRequested()

    def batches(self, loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """
        The epoch's batches not yet trained, up to the run's last iteration; between steps it stops the
        run (all ranks together) on a request or a non-finite loss. The training clock runs meanwhile.
        """
        progress = self.progress
        start = time.perf_counter()
        try:
            for x, y in loader.epoch(progress.epoch, start_batch=progress.batch):
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
        """Count a finished step: epoch sums, the averages, the divergence watch and the console."""
        loss = loss.detach().float()
        progress = self.progress
        # Remember the first step whose loss is not finite, without waiting for the device to say so.
        first = ~torch.isfinite(loss) & (self._first_bad_step == NO_BAD_STEP)
        self._first_bad_step = torch.where(first, progress.step, self._first_bad_step)
        if self.lookahead is not None:  # before the average, which then sees the weights that train on
            self.lookahead.after_step(self.network, progress.step + 1)
        if self.ema is not None:
            self.ema.update(self.network)
        n = labels.shape[0]
        progress.sums["loss"] += loss.double() * n
        progress.sums["correct"] += (logits.detach().argmax(dim=1) == labels).sum()
        progress.sums["seen"] += n
        progress.train_images += n * self.world.size
        progress.step, progress.batch = progress.step + 1, progress.batch + 1
        if self.stop_after_steps is not None and progress.step >= self.stop_after_steps:
            self.request_stop("--stop-after-steps")
        if self.time_limit_s is not None and time.perf_counter() - self._started >= self.time_limit_s:
            self.request_stop("time limit")
        if self.world.is_main:
            self._report_step()

    def _report_step(self) -> None:
        """The estimate once the first steps are timed, and the status line every `log_every` steps."""
        p, c = self.progress, self.c
        if self._timed is None:  # the clock starts after the first step (ESTIMATE_AFTER_STEPS)
            self._timed = (time.perf_counter(), p.step)
        steps = p.step - self._timed[1]
        seconds_per_step = (time.perf_counter() - self._timed[0]) / max(steps, 1)
        images_per_s = c.batch_size / max(seconds_per_step, 1e-9)
        if steps == ESTIMATE_AFTER_STEPS:
            cpu_s, caveat = None, ""
            if gpu_sized_on_cpu(c) and self.model_name == "resnet20":
                cpu_s = RECIPES["cpu"]["epochs"] * cifar_data.TRAIN_IMAGES / images_per_s
                caveat = cpu_recipe_caveat(self.amp)
            total_s = self.total_steps * seconds_per_step
            self.console.line(estimate_line(total_s, self.total_steps, images_per_s, cpu_s, caveat))
        if p.step % c.log_every == 0:
            seen = p.sums["seen"].clamp(min=1)
            loss, accuracy = (p.sums["loss"] / seen).item(), (p.sums["correct"] / seen).item()
            tracker.save(p.step, {"loss.train": loss, "accuracy.train": accuracy})
            if steps:
                left_s = (self.total_steps - p.step) * seconds_per_step
                line = status_line(p.step, self.total_steps, loss, accuracy, images_per_s, left_s)
                self.console.status(line)

    def _agree_on_stop(self) -> None:
        stop, first_bad = agree_on_stop(self.stop_reason is not None, self._first_bad_step, self.world)
        if first_bad is not None:
            raise self._diverged(f"the loss became non-finite (NaN or infinite) at step {first_bad}")
        if stop:
            self.request_stop("a stop on another rank")
            raise StopRequested()

    def _diverged(self, what: str) -> Diverged:
        lower = float(self.c.scheduler.base_lrs[0]) / 10
        return Diverged(
            f"{what}; the learning rate is probably too high: try a lower one, e.g. --lr {lower:g}"
        )

    # ### Epochs

    @property
    def done(self) -> bool:
        """Whether the schedule is over and its last epoch recorded (a stop can come in between)."""
        p = self.progress
        return (p.step >= self.c.iterations or p.epoch >= self.c.epochs) and p.batch == 0

    @property
    def finishing(self) -> bool:
        """Whether the epoch just trained is the run's last."""
        return self.progress.epoch + 1 >= self.c.epochs or self.progress.step >= self.c.iterations

    def end_epoch(self, scores: dict[str, float]) -> None:
        """Record the epoch (training sums over all ranks, `scores` such as `valid_loss`), print, save."""
        progress = self.progress
        for name, value in scores.items():
            # Weights that give non-finite logits are as diverged as a non-finite training loss, and must
            # not replace the last good checkpoint either.
            if name.endswith("_loss") and not math.isfinite(value):
                split = name.removesuffix("_loss")
                raise self._diverged(
                    f"the {split} loss became non-finite (NaN or infinite) after step {progress.step}"
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
        progress.history.append(record)
        progress.epoch, progress.batch, progress.sums = progress.epoch + 1, 0, progress.zero_sums()
        if self.world.is_main:
            scalars = {
                k.replace("_", ".", 1): v for k, v in record.items() if k.endswith(("loss", "accuracy"))
            }
            tracker.save(progress.step, scalars)
            if self.run_dir is not None:
                path = self.run_dir / "metrics.jsonl"
                with _writing(f"could not write {path}", self._kept), open(path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            self.console.line(epoch_line(record, self.c.epochs))
        self.save()

    # ### Files

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST

    def _parts(self) -> ckpt.Parts:
        """The parts whose state a checkpoint holds: `scaler`, `ema`, `lookahead` are `None` when unused."""
        scaler = self.scaler if self.scaler.is_enabled() else None
        c = self.c
        parts = (self.network, c.optimizer, c.scheduler, scaler, self.ema, self.lookahead, self.progress)
        return dict(zip(ckpt.PARTS, parts, strict=True))

    def save(self) -> None:
        """
        Every rank calls this; rank 0 writes the checkpoint (a failed write stops the run, keeping the
        previous file) with all ranks' sums over a partial epoch, as an uninterrupted epoch counts them.
        """
        sums = {k: sum_over_ranks(v, self.world).cpu() for k, v in self.progress.sums.items()}
        if self.checkpoint_path is None:
            return
        with _writing(f"could not write checkpoint {self.checkpoint_path}", self._kept):
            state = ckpt.checkpoint_state(self._parts(), self.settings, self.signature)
            ckpt.save_checkpoint(self.checkpoint_path, {**state, "epoch_sums": sums})

    def begin(self) -> None:
        """Rank 0, inside labml's run: the checkpoint folder, the metrics so far and the start line."""
        if self.run_dir is None:
            return
        advice = "pass --logs-dir with a writable folder"
        with _writing(f"cannot write to the run folder {self.run_dir}", advice):
            (self.run_dir / ckpt.CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
            history = "".join(json.dumps(r) + "\n" for r in self.progress.history)
            (self.run_dir / "metrics.jsonl").write_text(history)
        c, p, device = self.c, self.progress, str(machine(self.device)["device"])
        line = start_line(
            self.run_dir, model=self.model_name, recipe=c.recipe, epochs=c.epochs, batch_size=c.batch_size,
            device=device, resumed_from=self.resumed_from, epoch=p.epoch, step=p.step,
            gpu_sized_on_cpu=gpu_sized_on_cpu(c),
        )  # fmt: skip
        self.console.line(line)

    def summary(self, test: dict[str, float]) -> dict[str, Any]:
        """`results.json`: the final numbers (`test` is `{}` on a validation run), and what they measured."""
        c, progress = self.c, self.progress
        last = progress.history[-1] if progress.history else {}
        hashes = [state_hash(self.network)] * self.world.size
        if self.world.is_distributed:  # every rank's, to prove they agree
            dist.all_gather_object(hashes, hashes[0])
        return {
            "model": self.model_name, "recipe": c.recipe, "seed": c.seed, "num_classes": c.num_classes,
            "parameters": sum(p.numel() for p in self.network.parameters()),
            "epochs": progress.epoch, "steps": progress.step, "batch_size": c.batch_size,
            **{k: last.get(k) for k in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy",
                                        "valid_loss_tta", "valid_accuracy_tta")},
            # The paper's protocol, one view of each test image; the test-time views' average beside it
            # (None when the recipe uses none).
            "test_loss": test.get("loss"), "test_accuracy": test.get("accuracy"),
            "test_loss_tta": test.get("loss_tta"), "test_accuracy_tta": test.get("accuracy_tta"),
            "tta_views": tta_views(c.flip_tta, c.shift_tta),
            "wall_time_s": progress.elapsed_s, "train_time_s": progress.train_time_s,
            "train_images_per_s": progress.train_images_per_s,
            "world_size": self.world.size, "amp": self.amp.chosen, "amp_choice": self.amp.as_dict(),
            "channels_last": c.channels_last, "compile": c.compile, "compile_mode": c.compile_mode,
            "cutout": c.cutout,
            # With an average, the valid/test numbers are the averaged network's.
            "ema_decay": c.ema_decay, "weights_sha256": hashes[0], "ranks_agree": len(set(hashes)) == 1,
            "lookahead_every": c.lookahead_every,
            "lookahead_decay": c.lookahead_decay if c.lookahead_every else None,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
            # What the numbers were measured on, so a subset run can never pass for a full one.
            "data": {
                "train_subset": c.train_subset, "test_subset": c.test_subset, "valid_split": c.valid_split,
                "train_images": c.train_loader.images_per_epoch * self.world.size,
                "valid_images": c.valid_loader.images_per_epoch if c.valid_loader else 0,
                "test_images": c.test_loader.images_per_epoch, "augment": c.augment, "cutout": c.cutout,
                "alternate_flips": c.alternate_flips, "flip_tta": c.flip_tta, "shift_tta": c.shift_tta,
            },
            "label_smoothing": c.label_smoothing, "images_seen": progress.train_images,
            **machine(self.device),
        }  # fmt: skip


_E = TypeVar("_E", bound=BaseException)


@contextlib.contextmanager
def _writing(what: str, advice: str) -> Iterator[None]:
    """A failed write as one line: what could not be written, why (the system's words), and what to do."""
    try:
        yield
    except Exception as e:
        # A second Ctrl+C inside torch's writer surfaces as the writer's own RuntimeError ("unexpected
        # pos") while it closes the half-written file. The temporary file is gone and the previous
        # checkpoint untouched, so it is the quit the user asked for.
        if _raised_in(e, KeyboardInterrupt) is not None:
            raise KeyboardInterrupt() from None
        # A disk that fills up inside `torch.save` raises the OSError while writing, and then torch's
        # writer its own RuntimeError ("unexpected pos") while closing the file: the first says why.
        if (cause := _raised_in(e, OSError)) is not None:
            raise RunError(f"{what} ({cause.strerror or cause}); {advice}") from None
        raise


def _raised_in(error: BaseException, kind: type[_E]) -> _E | None:
    """`error` if it is a `kind`, else the first `kind` among the exceptions it was raised while handling."""
    current: BaseException | None = error
    while current is not None and not isinstance(current, kind):
        current = current.__context__
    return current


@contextlib.contextmanager
def _settings_kept(optimizer: torch.optim.Optimizer, scheduler: Any) -> Iterator[None]:
    """
    A checkpoint restored inside this keeps the optimizer's and schedule's *settings* the run was built
    with (rates, weight decay, momentum, the schedule's drops), which `load_state_dict` would bring back
    too: `--resume RUN --lr 0.01` trains at 0.01. Only the state (momentum buffers, the step reached)
    comes from the checkpoint, and unchanged settings are the saved ones, so a plain resume stays exact.
    """
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    schedule = scheduler.state_dict()
    yield
    restored = scheduler.state_dict()
    scheduler.load_state_dict(schedule)
    # The rate the schedule gives at the restored step, computed as `LambdaLR` computes it after a step.
    step = restored["last_epoch"]
    rates = [base * rate(step) for rate, base in zip(scheduler.lr_lambdas, scheduler.base_lrs, strict=True)]
    for group, settings, lr in zip(optimizer.param_groups, groups, rates, strict=True):
        group.update(settings, lr=lr)
    reached = {k: restored[k] for k in ("last_epoch", "_step_count") if k in restored}
    scheduler.load_state_dict({**schedule, **reached, "_last_lr": rates})


def gpu_sized_on_cpu(c: Any) -> bool:
    """A CPU run of another recipe that trains at least half the images the `cpu` recipe trains."""
    cpu_images = RECIPES["cpu"]["epochs"] * cifar_data.TRAIN_IMAGES
    return c.device.type == "cpu" and c.recipe != "cpu" and 2 * c.iterations * c.batch_size >= cpu_images


def cpu_recipe_caveat(amp: AmpChoice) -> str:
    """
    The `--recipe cpu` estimate is this run's speed, so it holds where the recipe's `amp=auto` would
    compute in this run's format: float32 on a CPU without native bf16, the faster of bf16 and float32
    on one with it (`precision.py`). Elsewhere the estimate says which format it assumed.
    """
    units = cpu_bf16_units()
    if amp.requested == "auto" or (amp.chosen == "none" and not units):
        return ""
    auto = f"times bf16 against float32 on this CPU's {'+'.join(units)}" if units else "uses float32 here"
    return f" in {'float32' if amp.chosen == 'none' else amp.chosen}, this run's format (its amp=auto {auto})"


def tta_views(flip: bool, shift: int) -> int:
    """How many views of each image the test-time average takes (1: the single view alone)."""
    return (3 if shift else 1) * (2 if flip else 1)
