"""
# Starting and ending a run

The command line and the Python API (`experiments.cifar10.train`) both run through here:
[`run_training`](#run_training) computes the configuration before any folder exists (bad input leaves
nothing behind), checks the disk, restores a checkpoint, runs the [`Run`](trainer.html#Run) inside a
quiet labml run, saves on SIGINT, SIGTERM and SIGHUP, and writes `results.json`;
[`run_evaluation`](#run_evaluation) measures a checkpoint; [`command`](#command) gives any
`ExperimentError` its one line and exit status.
"""

import contextlib
import io
import os
import shlex
import shutil
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from labml import experiment, lab
from labml.configs import BaseConfigs

from experiments import checkpoint as ckpt
from experiments import cli, distributed, run_folder
from experiments.cli import Request
from experiments.console import accuracy_line, end_line
from experiments.distributed import World, destroy_process_group, init_process_group, world_from_environment
from experiments.errors import ExperimentError, UsageError
from experiments.files import write_json
from experiments.precision import choose_amp, machine
from experiments.recipes import RECIPES
from experiments.trainer import Diverged, Run, RunError, StopRequested, memory_errors, tta_views


@dataclass
class Results:
    """
    What a run produced: `results.json` (`None` if it stopped early), the records of `metrics.jsonl`, its
    folder (`None` on ranks but 0), and why it stopped early (a signal, `--stop-after-steps`, `time limit`).
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
        return None if self.run_dir is None else self.run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST


# Ctrl+C, a scheduler's or `kill`'s SIGTERM, and SIGHUP (a closed terminal; absent on Windows) stop a
# run with a checkpoint, and it exits as a shell reports a process they killed.
STOP_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
STOP_STATUS = {signal.Signals(sig).name: 128 + sig for sig in STOP_SIGNALS}


# ## Before training: labml, the disk, the data and the model


def quiet() -> contextlib.AbstractContextManager[Any]:
    """Keep labml's set-up messages off the screen: the run folder keeps them."""
    return contextlib.redirect_stdout(io.StringIO())


def _existing(path: Path) -> tuple[Path, bool]:
    """The closest path at or above `path` that exists (where creating it starts); is it a writable folder?"""
    while not path.exists():
        path = path.parent
    # `os.access` answers for read-only file systems too (EROFS), not only for file modes.
    return path, path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def check_writable(folder: Path, needed_bytes: int) -> None:
    """Fail before training if the run folder cannot be created or the disk is nearly full."""
    existing, writable = _existing(folder)
    if not writable:
        raise RunError(
            f"cannot write run logs under {existing} (not a writable folder); pass --logs-dir "
            "with a writable folder or fix its permissions"
        )
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise RunError(
            f"only {free / 2**20:.1f} MiB free under {existing}, a checkpoint needs about "
            f"{needed_bytes / 2**20:.1f} MiB; free some space or pass --logs-dir elsewhere"
        )


def check_output_file(path: Path, flag: str) -> None:
    """Fail before anything trains if the file `flag` names could not be written at the end."""
    if path.is_dir():
        raise RunError(f"{flag} {path} is a folder; give a file path, e.g. {flag} {path / 'results.json'}")
    existing, writable = _existing(path.parent)
    if not writable:
        raise RunError(
            f"cannot write {flag} {path}: {existing} is not a writable folder; give a path in a "
            "writable folder or fix its permissions"
        )


def prepare(c: Any) -> None:
    """Compute the data and the model before any run folder exists, so input errors leave nothing behind."""
    with quiet():
        torch.manual_seed(c.seed)
        init_process_group(c.world, c.device)
        if c.device.type == "cuda":
            # cuDNN picks the fastest convolution algorithm for our fixed input shapes; the choice can vary
            # between runs, so GPU runs are not bit-for-bit reproducible (CPU runs are).
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # One rank per node reads (and if need be downloads and unpacks) the data first, the rest after it.
        with distributed.local_leader_first(c.world, c.device):
            _ = c.train_loader, c.valid_loader, c.test_loader
        model = c.model.to(c.device)
        if c.channels_last:
            model.to(memory_format=torch.channels_last)
        _ = c.optimizer, c.scheduler, c.epochs, c.iterations, c.channels_last, c.progress_every_s


@contextlib.contextmanager
def labml_run() -> Iterator[None]:
    """
    labml's run, quiet. On the way out labml appends to its log; on a full disk that fails too, and its
    `OSError` must not replace the trainer's own error, which names the file and the fix.
    """
    with quiet():
        watcher = experiment.start()
        watcher.__enter__()
    try:
        yield
    except BaseException as error:
        with contextlib.suppress(OSError), quiet():
            watcher.__exit__(type(error), error, error.__traceback__)
        raise
    try:
        with quiet():
            watcher.__exit__(None, None, None)
    except OSError as e:
        raise RunError(
            f"labml could not write its run log ({e.strerror or e}); free some space under "
            f"{lab.get_experiments_path()}"
        ) from None


@contextlib.contextmanager
def stop_on_signals(run: Run) -> Iterator[None]:
    """A first stop signal saves after the current step; a second quits at once (last checkpoint kept)."""

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if run.stop_reason is not None:
            raise KeyboardInterrupt()
        run.request_stop(name)
        # After SIGHUP the terminal may be gone; failing to say so must not stop the save.
        with contextlib.suppress(OSError):
            if run.world.is_main:
                again = "press Ctrl+C again to quit without saving"
                print(
                    f"\n{name} received: saving a checkpoint after this step ({again})",
                    file=sys.stderr,
                    flush=True,
                )

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    # Restored afterwards, for callers that run several trainings in one process (degradation.py).
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _logs(request: Request) -> Path:
    """Point labml at the logs folder (and the labml app, if asked) and return where runs are written."""
    settings = {"experiments_path": str(request.logs_dir.resolve())} if request.logs_dir else {}
    if request.labml_url:
        settings["web_api"] = request.labml_url
    if settings:
        lab.configure(settings)
    return Path(lab.get_experiments_path())


def _compute(configs: type[BaseConfigs], settings: dict[str, Any], world: World, **create: Any) -> Any:
    """A configuration with `settings` applied: a labml run on rank 0 (`create`), a silent one elsewhere."""
    c = configs()
    c.world = world
    with quiet():
        if create:
            experiment.create(**create)
        else:
            experiment.evaluate()
        experiment.configs(c, settings)
    return c


def checked_settings(
    configs: type, nested: dict[str, type], path: Path, state: dict[str, Any]
) -> dict[str, Any]:
    """
    A checkpoint's settings through the command line's checks before a resume or `--eval` uses them; a
    value it would refuse (an edit, another version of the trainer) is the file's fault, exit status 1.
    """
    try:
        if not isinstance(state["config"], dict):
            raise UsageError(f"they are a {type(state['config']).__name__}, not a table of settings")
        settings = cli.check_saved(ckpt.saved_settings(state), configs, nested, RECIPES)
        cli.check_combinations(settings, configs, nested, typed=())
    except UsageError as e:
        raise ckpt.CheckpointError(
            f"{path} holds settings the command line refuses ({e}); it was edited or written by "
            f"another version of this trainer: use another checkpoint, or start a new run"
        ) from None
    return settings


def _resumed_settings(
    configs: type, nested: dict[str, type], request: Request, world: World, path: Path, saved: dict[str, Any]
) -> dict[str, Any]:
    """
    The checkpoint's settings (`saved`, already through [`checked_settings`](#checked_settings)) with the
    new ones over them, through the checks the command line leaves to a resume: refused as a usage error
    if what was typed breaks them, else as the checkpoint's fault.
    """
    # The checkpoint brings its random generators' state, so a new seed would be recorded and never used.
    seed, saved_seed = request.settings.get("seed"), saved.get("seed", cli.config_default(configs, "seed"))
    if seed is not None and seed != saved_seed:
        raise UsageError(
            f"--seed {seed} cannot apply to a resumed run: {path} continues its own random "
            f"state (seed {saved_seed}); drop --seed, or start a new run"
        )
    merged = {**saved, **request.settings}

    def problem(o: dict[str, Any], typed: Any) -> str | None:
        try:
            cli.check_combinations(o, configs, nested, typed)
            cli.check_hardware(o, configs, nested, world.size, request.wants_cuda)
        except UsageError as e:
            return str(e)
        return None

    typed_problem = problem(merged, request.settings.keys())
    if typed_problem is None:
        return merged
    if problem(saved, ()) is None:
        raise UsageError(typed_problem)
    raise ckpt.CheckpointError(f"{path}: {typed_problem}")


# ## Training and evaluating


Fit = Callable[[Any, Run], dict[str, float]]


def run_training(configs: type[BaseConfigs], nested: dict[str, type], fit: Fit, request: Request) -> Results:
    """Train as `request` asks with the script's `fit(c, run)`; raises an `ExperimentError` (one line)."""
    world = world_from_environment()
    # With fp16, GradScaler skips a step whose gradients overflowed while the schedule still counts it,
    # as the paper counts iterations; PyTorch warns about that order once, and it is not a mistake here.
    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step()` before `optimizer.step()`")
    with _threads(request.threads):
        try:
            return _train(configs, nested, fit, request, world)
        finally:
            destroy_process_group()


def _train(
    configs: type[BaseConfigs], nested: dict[str, type], fit: Fit, request: Request, world: World
) -> Results:
    settings = dict(request.settings)
    experiments_path = _logs(request)
    # `--run-dir`: a fixed run folder, which the same command continues from its checkpoint.
    fixed_dir = run_folder.check_request(request)
    if world.is_main:
        # Both output places are checked before the data or the network is touched.
        check_writable(fixed_dir or experiments_path, 0)
        if request.results is not None:
            check_output_file(request.results, "--results")
    resumed_from, saved = None, None
    if request.resume is not None:
        resumed_from = ckpt.find_checkpoint(request.resume, experiments_path)
    elif fixed_dir is not None:
        resumed_from = run_folder.checkpoint_to_continue(fixed_dir)
    if resumed_from is not None:
        saved = ckpt.load_checkpoint(resumed_from)
        checked = checked_settings(configs, nested, resumed_from, saved)
        if fixed_dir is not None:
            run_folder.check_same_run(resumed_from, checked, request.settings, configs, nested)
        settings = _resumed_settings(configs, nested, request, world, resumed_from, checked)
    # The console and metrics.jsonl are ours; labml writes to its app or TensorBoard only when asked.
    writers = {"web_api"} if request.labml_url else set()
    writers |= {"tensorboard"} if request.tensorboard else set()
    comment = f"resumed from {resumed_from}" if resumed_from else ""
    name, source = "cifar10", Path(sys.modules[fit.__module__].__file__ or "cifar10.py").resolve()
    create = {"name": name, "python_file": str(source), "writers": writers, "comment": comment}
    if fixed_dir is not None and world.is_main:
        create.update(run_folder.labml_place(fixed_dir))
    c = _compute(configs, settings, world, **(create if world.is_main else {}))
    run_dir = (fixed_dir or experiments_path / name / experiment.get_uuid()) if world.is_main else None
    with memory_errors(c.batch_size, run_dir):
        prepare(c)
        # Every rank read the checkpoint itself: all must have found the same one, with the same settings.
        start = distributed.start_of(resumed_from, saved, run_folder.compared_settings(settings))
        distributed.agree_on_start(start, world)
        if run_dir is not None:
            param_bytes = sum(t.numel() * t.element_size() for t in c.model.state_dict().values())
            check_writable(run_dir.parent, 4 * param_bytes + 2**20)
        run = Run(
            c, model_name=str(settings.get("model", cli.config_default(configs, "model"))), settings=settings,
            run_dir=run_dir, stop_after_steps=request.stop_after_steps, time_limit_s=request.time_limit_s,
            resumed_from=resumed_from, saved=saved,
        )  # fmt: skip
        if run.done and resumed_from is not None and (resumed_from.parent.parent / "results.json").exists():
            # Nothing left to train: say so rather than open a new, empty run folder. (A run that ended
            # its last epoch but died before writing results.json resumes to evaluate and write them.)
            p = run.progress
            raise UsageError(
                f"{resumed_from} is a finished run ({p.epoch} epochs, {p.step} steps): nothing to "
                "train; to train it longer, give it more epochs, e.g. --resume "
                f"{shlex.quote(str(request.resume))} --epochs {p.epoch + 10}"
            )
        with stop_on_signals(run), labml_run() if world.is_main else contextlib.nullcontext():
            if world.is_main:
                run.begin()
            scores = _fit_or_stop(fit, c, run, source, request)
    if scores is None:
        return Results(None, run.progress.history, run_dir, stopped=run.stop_reason)
    summary = run.summary(scores)
    if run_dir is not None:
        write_json(run_dir / "results.json", summary)
        if request.results is not None:
            write_json(request.results, summary)
        run.console.line(end_line(summary))
        print(f"results: {run_dir / 'results.json'}")
        print(accuracy_line(summary), flush=True)
    return Results(summary, run.progress.history, run_dir)


def _fit_or_stop(fit: Fit, c: Any, run: Run, source: Path, request: Request) -> dict[str, float] | None:
    """Train to the end; on a stop request save, say how to continue, and return `None`."""
    try:
        return fit(c, run)
    except StopRequested:
        run.save()
        if run.world.is_main and run.run_dir is not None:
            p = run.progress
            # A stop by SIGHUP may have no terminal left to print to; the checkpoint is what matters.
            with contextlib.suppress(OSError):
                run.console.line(
                    f"\nstopped at step {p.step} (epoch {p.epoch + 1}, batch {p.batch}); "
                    f"checkpoint: {run.checkpoint_path}\n"
                    f"continue with: {continue_command(source, run.run_dir, request)}"
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


def continue_command(source: Path, run_dir: Path, request: Request) -> str:
    """
    The shell command that continues a stopped run. The checkpoint brings the settings; the data folder,
    the device and the run flags (but resume, eval and the debugging stop) are repeated.
    """
    # A fixed run folder continues with the same flag; any other run, with `--resume`.
    again = "--run-dir" if request.run_dir is not None else "--resume"
    argv = ["python", os.path.relpath(source), again, str(run_dir)]
    settings = request.settings
    if "data_dir" in settings:
        argv += ["--data-dir", str(settings["data_dir"])]
    if settings.get("device.use_cuda") is False:
        argv += ["--device", "cpu"]
    elif "device.cuda_device" in settings and world_from_environment().size == 1:
        argv += ["--device", f"cuda:{settings['device.cuda_device']}"]
    skipped = ("resume", "run_dir", "eval", "stop_after_steps")
    for flag in cli.REQUEST_FLAGS:
        value = getattr(request, flag.key)
        if flag.key not in skipped and value is not None and value is not False:
            argv += [flag.name] if flag.metavar is None else [flag.name, str(value)]
    return shlex.join(argv)


def run_evaluation(
    configs: type[BaseConfigs],
    nested: dict[str, type],
    evaluate: Callable[..., dict[str, float]],
    request: Request,
) -> dict[str, Any]:
    """`--eval RUN` (what `--resume` takes): a checkpoint's network rebuilt and measured on the test set."""
    assert request.eval is not None
    if request.results is not None:
        check_output_file(request.results, "--results")
    path = ckpt.find_checkpoint(request.eval, _logs(request))
    saved = ckpt.load_checkpoint(path)
    settings = {
        **ckpt.evaluation_settings(checked_settings(configs, nested, path, saved)),
        **request.settings,
    }
    with _threads(request.threads):
        c = _compute(configs, settings, World())
        with quiet():
            model = c.model
            model_name = str(settings.get("model", cli.config_default(configs, "model")))
            expected = ckpt.model_signature(model_name, c.num_classes, model)
            ckpt.check_network(path, saved, expected)
            weights, which = ckpt.evaluation_weights(saved)
            try:
                model.load_state_dict(weights)
            except RuntimeError as e:
                reason = str(e).splitlines()[0][:160]
                raise ckpt.CheckpointError(f"{path} does not fit {expected['model']} ({reason})") from None
            model.to(c.device)
            if c.channels_last:
                model.to(memory_format=torch.channels_last)
            amp = choose_amp(c.amp, c.device)
            scores = evaluate(
                model, c.test_loader, amp_dtype=amp.dtype, flip_tta=c.flip_tta, shift_tta=c.shift_tta
            )
        results = {
            "checkpoint": str(path), "model": expected["model"], "weights": which,
            "test_loss": scores["loss"], "test_accuracy": scores["accuracy"],
            "test_loss_tta": scores.get("loss_tta"), "test_accuracy_tta": scores.get("accuracy_tta"),
            "tta_views": tta_views(c.flip_tta, c.shift_tta), "test_subset": c.test_subset,
            "test_images": c.test_loader.images_per_epoch, "flip_tta": c.flip_tta, "shift_tta": c.shift_tta,
            "amp": amp.chosen, "amp_choice": amp.as_dict(), "position": ckpt.saved_position(saved),
            **machine(c.device),
        }  # fmt: skip
    if request.results is not None:
        write_json(request.results, results)
    print(f"test loss: {scores['loss']:.4f}")
    print(accuracy_line(results), flush=True)
    return results


def command(
    request: Request, configs: type[BaseConfigs], nested: dict[str, type], fit: Fit,
    evaluate: Callable[..., dict[str, float]],
) -> int:  # fmt: skip
    """What a script's `main` does with a parsed command line: train or evaluate; an error is one line."""
    try:
        if request.eval is None:
            outcome = run_training(configs, nested, fit, request)
            status = STOP_STATUS.get(outcome.stopped or "", 0)
        else:
            run_evaluation(configs, nested, evaluate, request)
            status = 0
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        status = e.exit_status
    except KeyboardInterrupt:
        print("\ninterrupted; the last complete checkpoint is unchanged", file=sys.stderr, flush=True)
        status = 128 + signal.SIGINT
    if request.labml_url:
        # labml 0.4.168's sender thread retries an unreachable app forever and keeps the process alive,
        # with no public switch; the run's own files are written, so end without waiting for it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def checked(
    settings: dict[str, Any], configs: type, nested: dict[str, type], recipes: dict[str, Any], **options: Any
) -> Request:
    """The Python API's settings (the run flags among them, by name) checked as the command line's are."""
    return cli.check(
        settings, configs, nested=nested, recipes=recipes, world=world_from_environment(), **options
    )
