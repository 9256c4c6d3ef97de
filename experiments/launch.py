"""
# Starting and ending a run

The command line and the Python API both run through here: [`run_training`](#run_training) checks the
disk and the checkpoint before any folder exists, runs the [`Run`](trainer.html#Run) in a quiet labml
run, saves on a stop signal and writes `results.json`; [`run_evaluation`](#run_evaluation) measures a
checkpoint; [`command`](#command) turns an `ExperimentError` into one line and its exit status.
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
from experiments.distributed import World
from experiments.errors import ExperimentError, UsageError
from experiments.files import write_json
from experiments.models import build_model
from experiments.precision import choose_amp, machine
from experiments.recipes import RECIPES
from experiments.trainer import Diverged, Run, RunError, StopRequested, memory_errors, tta_views
from resnet.loading import too_many_blocks
from resnet.registry import first_difference


@dataclass
class Results:
    """`results.json` (`None` if the run stopped early), `metrics.jsonl`, its folder, why it stopped."""

    summary: dict[str, Any] | None
    history: list[dict[str, Any]]
    run_dir: Path | None
    stopped: str | None = None

    @property
    def test_accuracy(self) -> float | None:
        """The single-view test accuracy; `None` if the run stopped early or held out a validation split."""
        accuracy = None if self.summary is None else self.summary["test_accuracy"]
        return None if accuracy is None else float(accuracy)

    @property
    def checkpoint(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / ckpt.CHECKPOINT_DIR / ckpt.LAST


# Ctrl+C, a scheduler's or `kill`'s SIGTERM, and SIGHUP (a closed terminal; absent on Windows) stop a
# run with a checkpoint, and it exits as a shell reports a process they killed.
STOP_SIGNALS = [getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)]
STOP_STATUS = {signal.Signals(sig).name: 128 + sig for sig in STOP_SIGNALS}


def quiet() -> contextlib.AbstractContextManager[Any]:
    """Keep labml's set-up messages off the screen: the run folder keeps them."""
    return contextlib.redirect_stdout(io.StringIO())


def check_writable(path: Path, flag: str, needed_bytes: int = 0) -> None:
    """Fail before training if the run folder or the `--results` file could not be written there."""
    if flag == "--results" and path.is_dir():
        raise RunError(f"{flag} {path} is a folder; give a file path, e.g. {flag} {path / 'results.json'}")
    existing = path.parent if flag == "--results" else path
    while not existing.exists():  # creating the path starts at the closest folder that exists
        existing = existing.parent
    # `os.access` answers for read-only file systems too (EROFS), not only for file modes.
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        what = "run logs" if flag == "--logs-dir" else f"{flag} {path}"
        raise RunError(
            f"cannot write {what} under {existing} (not a writable folder); give {flag} a path in a "
            "writable folder or fix its permissions"
        )
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise RunError(
            f"only {free / 2**20:.1f} MiB free under {existing}, a checkpoint needs about "
            f"{needed_bytes / 2**20:.1f} MiB; free some space or pass --logs-dir elsewhere"
        )


@contextlib.contextmanager
def labml_run() -> Iterator[None]:
    """labml's run, quiet; its log failing on a full disk must not hide the trainer's own error."""
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
        where = lab.get_experiments_path()
        raise RunError(f"labml could not write its log ({e.strerror or e}); free space in {where}") from None


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
                print(f"\n{name} received: saving a checkpoint after this step ({again})", file=sys.stderr)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _process(threads: int | None) -> Iterator[None]:
    """The run's CPU threads, restored after it (degradation.py runs several); its process group ended."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        distributed.destroy_process_group()


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


def _placed(c: Any) -> torch.nn.Module:
    model = c.model.to(c.device)
    return model.to(memory_format=torch.channels_last) if c.channels_last else model


def checked_settings(
    configs: type, nested: dict[str, type], path: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint at `path` and its settings, which the command line's checks must pass (else exit 1)."""
    state = ckpt.load_checkpoint(path)
    try:
        if not isinstance(state["config"], dict):
            raise UsageError(f"they are a {type(state['config']).__name__}, not a table of settings")
        if too_many_blocks(state["config"].get("n_blocks"), len(state["model"])):
            # Checked first: the settings' own checks build the network, which takes a moment a block.
            raise UsageError(f"n_blocks asks for more blocks than the {len(state['model'])} tensors it holds")
        settings = cli.check_saved(ckpt.saved_settings(state), configs, nested, RECIPES)
    except UsageError as e:
        raise ckpt.CheckpointError(
            f"{path} holds settings the command line refuses ({e}); it was edited or written by "
            f"another version of this trainer: use another checkpoint, or start a new run"
        ) from None
    _check_network_size(path, state, settings, configs, nested)
    # Whether to check the data and whether to download are this command's alone (`under_typed`).
    checks = ("verify_checksums", "download")
    return state, {key: value for key, value in settings.items() if key not in checks}


def under_typed(saved: dict[str, Any], typed: dict[str, Any]) -> dict[str, Any]:
    """
    A checkpoint's (checked) settings with the typed ones laid over them. The file may say where its
    run's data was, to be read and checked against the md5 sums, but a checkpoint from elsewhere must
    not pick a folder to download into: downloading there takes a typed `download`, and a typed
    `--data-dir` is the user's own choice, downloaded into as on a new run.
    """
    merged = {**saved, **typed}
    if "data_dir" in saved and not typed.keys() & {"data_dir", "download"}:
        merged["download"] = False
    return merged


def _check_network_size(
    path: Path, state: dict[str, Any], settings: dict[str, Any], configs: type, nested: dict[str, type]
) -> None:
    """
    Refuse a checkpoint whose settings describe another network than the weights it holds, before that
    network is built: built on the meta device, it takes no memory, so settings edited to ask for a huge
    network cannot make this process allocate more than the file itself holds.
    """
    get = cli.getter(settings, configs, nested)
    with torch.device("meta"):
        network = build_model(
            get("model"), num_classes=get("num_classes"), shortcut=get("shortcut"), n_blocks=get("n_blocks"),
            n_channels=get("n_channels"), bottlenecks=get("bottlenecks"), zero_init_residual=False,
        )  # fmt: skip
    # `load_checkpoint` has made sure `model` is tensors by name; the library words the first misfit.
    own, held = (
        {name: tuple(t.shape) for name, t in s.items()} for s in (network.state_dict(), state["model"])
    )
    if difference := first_difference(own, held):
        raise ckpt.CheckpointError(
            f"{path} holds weights that do not fit the network its settings describe ({get('model')}: "
            f"{difference}); it was edited or written by another version of this trainer: use another "
            "checkpoint"
        )


def _resumed_settings(
    configs: type, nested: dict[str, type], request: Request, world: World, path: Path, saved: dict[str, Any]
) -> dict[str, Any]:
    """The checkpoint's settings under the typed ones, checked: a misfit is the user's or the file's fault."""
    for key, held in ckpt.FIXED_BY_CHECKPOINT.items():
        kept = saved.get(key, cli.config_default(configs, key, nested))
        if key in request.settings and (typed := request.settings[key]) != kept:
            flag = next((f.name for f in cli.FLAGS if f.key == key and f.metavar), None)
            setting = f"{flag} {typed}" if flag else f"{key}={typed}"
            # A recipe typed with --resume brings values of its own: name it as their source.
            source = " (or the --recipe that sets it)" if "recipe" in request.settings else ""
            raise UsageError(
                f"{setting} cannot apply to a resumed run: {path} fixes {held} ({key}={kept}); drop "
                f"{flag or key}{source}, or start a new run"
            )
    merged, hardware = under_typed(saved, request.settings), (world.size, request.wants_cuda)
    try:
        cli.check_combinations(merged, configs, nested, request.settings.keys(), hardware)
    except UsageError as e:
        try:
            cli.check_combinations(saved, configs, nested, (), hardware)
        except UsageError:
            raise ckpt.CheckpointError(f"{path}: {e}") from None
        raise
    return merged


Fit = Callable[[Any, Run], dict[str, float]]
Evaluate = Callable[..., dict[str, float]]


def run_training(configs: type[BaseConfigs], nested: dict[str, type], fit: Fit, request: Request) -> Results:
    """Train as `request` asks with the script's `fit(c, run)`; raises an `ExperimentError` (one line)."""
    world = distributed.world_from_environment()
    # With fp16, GradScaler skips a step whose gradients overflowed while the schedule still counts it,
    # as the paper counts iterations; PyTorch warns about that order once, and it is not a mistake here.
    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step()` before `optimizer.step()`")
    with _process(request.threads), contextlib.ExitStack() as held:
        experiments_path = _logs(request)
        fixed_dir = run_folder.check_request(request)
        # labml's own folders are always new; a `--run-dir` may be one the user had before this command.
        made_here = fixed_dir is None or not fixed_dir.exists()
        if world.is_main:
            # Both output places are checked before the data or the network is touched.
            check_writable(fixed_dir or experiments_path, "--logs-dir")
            if request.results is not None:
                check_writable(request.results, "--results")
            if fixed_dir is not None:
                held.enter_context(run_folder.held(fixed_dir))
        settings, saved = dict(request.settings), None
        resumed_from = run_folder.checkpoint_to_continue(fixed_dir) if fixed_dir else None
        if request.resume is not None:  # (never with `--run-dir`)
            resumed_from = ckpt.find_checkpoint(request.resume, experiments_path)
        if resumed_from is not None:
            saved, checked = checked_settings(configs, nested, resumed_from)
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
        with memory_errors(c.batch_size, run_dir, made_here=made_here):
            # The data and the network are computed before the run folder exists: input errors leave nothing.
            with quiet():
                torch.manual_seed(c.seed)
                distributed.init_process_group(c.world, c.device)
                if c.device.type == "cuda":
                    # cuDNN picks the fastest convolution algorithm for our fixed input shapes; the choice can
                    # vary between runs, so GPU runs are not bit-for-bit reproducible (CPU runs are).
                    torch.backends.cudnn.benchmark = True
                    torch.backends.cuda.matmul.allow_tf32 = True
                    torch.backends.cudnn.allow_tf32 = True
                # One rank per node reads (and if need be downloads) the data first, the rest after it.
                with distributed.local_leader_first(c.world, c.device):
                    _ = c.train_loader, c.valid_loader, c.test_loader
                _ = _placed(c), c.optimizer, c.scheduler, c.epochs, c.iterations, c.progress_every_s
            # Every rank read the checkpoint itself: all must have found the same one, with the same settings.
            start = distributed.start_of(resumed_from, saved, run_folder.compared_settings(settings))
            distributed.agree_on_start(start, world)
            if run_dir is not None:
                param_bytes = sum(t.numel() * t.element_size() for t in c.model.state_dict().values())
                check_writable(run_dir.parent, "--logs-dir", 4 * param_bytes + 2**20)
            run = Run(
                c, model_name=str(settings.get("model", cli.config_default(configs, "model"))),
                settings=settings, run_dir=run_dir, stop_after_steps=request.stop_after_steps,
                time_limit_s=request.time_limit_s, resumed_from=resumed_from, saved=saved,
            )  # fmt: skip
            if run.done and resumed_from and (resumed_from.parent.parent / "results.json").exists():
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
                try:
                    scores = fit(c, run)
                except StopRequested:
                    run.save()
                    scores = None
                    if run.run_dir is not None:  # rank 0
                        p = run.progress
                        # After SIGHUP there may be no terminal to print to; the checkpoint is what matters.
                        with contextlib.suppress(OSError):
                            run.console.line(
                                f"\nstopped at step {p.step} (epoch {p.epoch + 1}, batch {p.batch}); "
                                f"checkpoint: {run.checkpoint_path}\n"
                                f"continue with: {continue_command(source, run.run_dir, request)}"
                            )
                except Diverged as e:
                    if run.checkpoint_path is None:  # ranks but 0
                        raise
                    kept = "no checkpoint was written before it"
                    if run.checkpoint_path.exists():
                        kept = f"the last good checkpoint {run.checkpoint_path} is kept"
                    raise Diverged(f"{e}; {kept}") from None
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


def continue_command(source: Path, run_dir: Path, request: Request) -> str:
    """
    The shell command that continues a stopped run: the checkpoint brings its settings but not its flags,
    nor whether the data is checked and downloaded.
    """
    again = "--run-dir" if request.run_dir is not None else "--resume"
    argv = ["python", os.path.relpath(source), again, str(run_dir)]
    settings = request.settings
    if "data_dir" in settings:
        argv += ["--data-dir", str(settings["data_dir"])]
    # A checkpoint never brings these two (`checked_settings`): the command that continues says them again.
    checks = ("download", "verify_checksums")
    argv += [f"{key}={str(settings[key]).lower()}" for key in checks if key in settings]
    if settings.get("device.use_cuda") is False:
        argv += ["--device", "cpu"]
    elif "device.cuda_device" in settings and distributed.world_from_environment().size == 1:
        argv += ["--device", f"cuda:{settings['device.cuda_device']}"]
    for flag in cli.REQUEST_FLAGS:
        value = getattr(request, flag.key)
        if flag.key not in ("resume", "run_dir", "eval", "stop_after_steps") and value not in (None, False):
            argv += [flag.name] if flag.metavar is None else [flag.name, str(value)]
    return shlex.join(argv)


def run_evaluation(
    configs: type[BaseConfigs], nested: dict[str, type], evaluate: Evaluate, request: Request
) -> dict[str, Any]:
    """`--eval RUN` (what `--resume` takes): a checkpoint's network rebuilt and measured on the test set."""
    if request.results is not None:
        check_writable(request.results, "--results")
    path = ckpt.find_checkpoint(request.eval, _logs(request))
    saved, checked = checked_settings(configs, nested, path)
    settings = under_typed(ckpt.evaluation_settings(checked), request.settings)
    with _process(request.threads):
        c = _compute(configs, settings, World())
        with quiet():
            model = _placed(c)
            model_name = str(settings.get("model", cli.config_default(configs, "model")))
            expected = ckpt.model_signature(model_name, c.num_classes, model)
            ckpt.check_network(path, saved, expected)
            weights, which = ckpt.evaluation_weights(saved)
            try:
                model.load_state_dict(weights)
            except RuntimeError as e:
                reason = str(e).splitlines()[0][:160]
                raise ckpt.CheckpointError(f"{path} does not fit {expected['model']} ({reason})") from None
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
    request: Request, configs: type[BaseConfigs], nested: dict[str, type], fit: Fit, evaluate: Evaluate
) -> int:
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


# The Python API's settings (the run flags among them, by name), checked as the command line's are.
checked = cli.check
