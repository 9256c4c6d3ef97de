"""
# The command line, checked before anything happens

labml accepts configuration overrides as a dictionary and trusts them: a misspelled key is ignored, and
`epochs=abc` is stored as the string `'abc'` until something deep in the loop trips over it. For a
training run that is the worst time to find out. This module turns the command line into overrides and
checks every one against the annotations and options of the configuration classes *before* any data is
read or any folder is created; anything wrong exits with status 2 and a usage message that says what was
expected.

Common settings have flags (`--model`, `--epochs`, `--lr`, ...). Every configuration, including those
in the sub-configurations `optimizer.*` and `device.*`, can also be set as a positional `key=value`,
e.g. `optimizer.learning_rate=0.05` or `model=custom n_blocks=[2,2,2]` (the lists shape only the
`custom` network). Precedence: recipe < `key=value` < flags.
"""

import argparse
import ast
import difflib
import importlib.util
import os
import shlex
import types
import typing
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch

import resnet
from experiments import data as cifar_data
from experiments.distributed import World
from experiments.errors import UsageError
from experiments.loader import PAD, PAPER_VALID_SPLIT
from experiments.models import custom_trunk
from experiments.precision import AMP_CHOICES
from experiments.recipes import PAPER_SETTINGS, recipe_help
from experiments.run_configs import COMPILE_MODES, CUDA_GRAPHS_MODE, Request, uses_cuda_graphs

# Computed inside the trainer; setting them from outside would bypass the data and model wiring.
INTERNAL_KEYS = {
    "dataset",
    "train_loader",
    "valid_loader",
    "test_loader",
    "steps_per_epoch",
    "world",
    "optimizer.parameters",
    "device.device_info",
    "device.device",
}

# `preset`: each network keeps its own shortcut option (A for the CIFAR networks); the rest are the library's.
SHORTCUT_CHOICES = ("preset", *resnet.SHORTCUTS)


def _at_least(minimum: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= minimum else f"must be at least {minimum:g}"


def _within(low: float, high: float, *, high_inclusive: bool = False) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = low <= v <= high if high_inclusive else low <= v < high
        return None if ok else f"must be in [{low:g}, {high:g}{']' if high_inclusive else ')'}"

    return check


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _positive_list(v: Any) -> str | None:
    if v is None:
        return None
    return None if len(v) > 0 and all(x >= 1 for x in v) else "must be a non-empty list of positive integers"


def _fractions_of_the_run(v: Any) -> str | None:
    if all(0 < x < 1 for x in v):
        return None
    return (
        "must hold fractions of the run between 0 and 1, e.g. [0.5,0.75] (the paper's 32k and 48k of "
        "64k iterations)"
    )


# What each value may be, beyond its type.
RULES: dict[str, Callable[[Any], str | None]] = {
    "epochs": _at_least(1),
    "iterations": _at_least(1),
    "batch_size": _at_least(1),
    "eval_batch_size": _at_least(1),
    # At least one official training image must be left to train on.
    "valid_split": _within(0, cifar_data.TRAIN_IMAGES),
    "seed": _at_least(0),
    "train_subset": _within(0, cifar_data.TRAIN_IMAGES, high_inclusive=True),
    "test_subset": _within(0, cifar_data.TEST_IMAGES, high_inclusive=True),
    # CIFAR-10's labels run 0..9, so the head needs at least ten outputs.
    "num_classes": _at_least(10),
    "log_every": _at_least(1),
    "lr_warmup_steps": _at_least(0),
    "lr_warmup_fraction": _within(0, 1),
    "lr_warmup_factor": _within(0, 1, high_inclusive=True),
    "lr_decay": _within(0, 1, high_inclusive=True),
    "lr_milestones": _fractions_of_the_run,
    "label_smoothing": _within(0, 1),
    "ema_decay": _within(0, 1),
    "shortcut": _one_of(SHORTCUT_CHOICES),
    "amp": _one_of(AMP_CHOICES),
    "compile_mode": _one_of(COMPILE_MODES),
    # CIFAR-10 images are 32x32; a larger square would blank the whole image wherever it lands.
    "cutout": _within(0, 32, high_inclusive=True),
    # Training crops move an image by at most PAD pixels; a larger shift shows views it never saw.
    "shift_tta": _within(0, PAD, high_inclusive=True),
    "n_blocks": _positive_list,
    "n_channels": _positive_list,
    "bottlenecks": _positive_list,
    "optimizer.learning_rate": lambda v: None if v > 0 else "must be positive",
    "optimizer.momentum": _within(0, 1),
    "optimizer.weight_decay": _at_least(0),
    "device.cuda_device": _at_least(0),
    "data_dir": lambda v: None if v else "must not be empty",
}


def config_default(configs_class: type, key: str) -> Any:
    """
    The default of `key` as the configuration class declares it (a value, or its first option's name),
    so that help texts and checks never retype a default.
    """
    cls, name = configs_class, key
    for klass in cls.__mro__:
        item = klass.__dict__.get(name)
        if getattr(item, "has_value", False):
            return item.value
    options = _options(cls, name)
    return options[0] if options else None


def build_parser(
    recipes: dict[str, dict[str, Any]], configs_class: type, nested: dict[str, type]
) -> argparse.ArgumentParser:
    """The flags; their defaults in the help come from the configuration classes, never retyped."""
    model_names = _options(configs_class, "model")
    default = _getter({}, configs_class, nested)
    model, batch, lr = default("model"), default("batch_size"), default("optimizer.learning_rate")
    iterations = default("iterations")
    parser = argparse.ArgumentParser(
        prog="experiments/cifar10.py",
        description=f"Train a ResNet on CIFAR-10 (He et al., 2015) with labml tracking. Defaults: {model} "
        "and the paper's recipe. Checkpoints after every epoch and on SIGINT/SIGTERM; "
        "--resume continues exactly.",
        epilog="Any configuration can also be given as key=value, e.g. optimizer.learning_rate=0.05, "
        "model=custom n_blocks=[2,2,2] (the lists shape only the custom network), "
        f"lr_warmup_steps=400 (the ResNet-110 warm-up), valid_split={PAPER_VALID_SPLIT}, "
        "train_subset=5000 test_subset=1000 (class-balanced subsets for quick experiments; 0: all). "
        "Several GPUs: torchrun --nproc_per_node=N experiments/cifar10.py [options]; --batch-size is "
        "the global batch, split evenly across processes. From Python: "
        "experiments.cifar10.train(model=..., epochs=..., ...) runs the same.",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="set any labml configuration (see configs.yaml in a run folder for the keys)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help=f"network: {', '.join(model_names)} (plainN: no shortcuts; resnet9: the fast "
        "DAWNBench network, not from the paper; custom: from "
        f"n_blocks/n_channels/bottlenecks). Default {model}",
    )
    parser.add_argument(
        "--recipe",
        choices=sorted(recipes),
        help=f"{recipe_help({key: default(key) for key in PAPER_SETTINGS})} "
        f"Default: {config_default(configs_class, 'recipe')}.",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help=f"train N epochs (default: the recipe's; paper: {iterations:,} iterations)",
    )
    parser.add_argument(
        "--batch-size", type=int, metavar="N", help=f"global mini-batch size (paper: {batch})"
    )
    parser.add_argument("--lr", type=float, metavar="LR", help=f"base learning rate (paper: {lr:g})")
    parser.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:N (default: cuda if available)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="folder with cifar-10-batches-py/ or cifar-10-python.tar.gz (default: labml's "
        "data folder, ./data)",
    )
    parser.add_argument("--no-download", action="store_true", help="never download CIFAR-10")
    parser.add_argument("--seed", type=int, help="random seed (data order, augmentation, initial weights)")
    parser.add_argument(
        "--valid-split",
        type=int,
        nargs="?",
        const=PAPER_VALID_SPLIT,
        metavar="N",
        help=f"hold out N training images for per-epoch validation (default N: {PAPER_VALID_SPLIT}, the "
        "paper's 45k/5k split); the test set is only reported, never used to choose",
    )
    parser.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        help=f"mixed precision (default {config_default(configs_class, 'amp')}; --recipe lists the recipes' "
        "own). auto: bf16 on GPUs that support it, and on CPUs with native "
        "bf16 (AMX or AVX512-BF16) when a timed step says it is faster; float32 "
        "elsewhere, since emulated bf16 is several times slower",
    )
    layout = parser.add_mutually_exclusive_group()
    layout.add_argument(
        "--channels-last",
        action="store_true",
        default=None,
        help="NHWC memory layout. Default (channels_last=auto): on for CUDA and for x86 CPUs "
        "(BENCHMARKS.md has the measurements)",
    )
    layout.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep PyTorch's default NCHW layout",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (compile_mode=... picks torch.compile's mode)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help=f"CUDA only: --compile with compile_mode={CUDA_GRAPHS_MODE}, which records each step's "
        "kernels once and replays them as CUDA graphs, saving the launch cost of every kernel",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for PyTorch (torch.set_num_threads; default: PyTorch's own choice, "
        "about one per core). On a machine shared with other jobs fewer threads can be much "
        "faster (BENCHMARKS.md)",
    )
    parser.add_argument(
        "--sync-bn",
        action="store_true",
        help="batch-norm statistics over all processes (multi-GPU; CUDA only)",
    )
    parser.add_argument(
        "--resume", metavar="RUN", help="continue a run: its uuid, run folder or a checkpoint file"
    )
    parser.add_argument("--eval", metavar="CHECKPOINT", help="only evaluate a checkpoint on the test set")
    parser.add_argument("--results", type=Path, metavar="PATH", help="also write results.json to PATH")
    parser.add_argument(
        "--logs-dir",
        type=Path,
        metavar="DIR",
        help="where run folders go (default: labml's logs folder, ./logs)",
    )
    parser.add_argument(
        "--labml-url",
        metavar="URL",
        help="labml app URL to stream to (default: none, nothing leaves the machine)",
    )
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the curves as TensorBoard event files, to RUN_FOLDER/tensorboard/ "
        "(view with: tensorboard --logdir logs/cifar10); needs "
        'pip install -e ".[tensorboard]"',
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="stop after the step that passes SECONDS of wall time since the run was set up "
        "(evaluation included), as on Ctrl+C: save a checkpoint, say how to resume, exit 0 "
        "without results.json",
    )
    parser.add_argument(
        "--stop-after-steps",
        type=int,
        metavar="K",
        help="debugging: behave as if interrupted after step K (save, print how to resume)",
    )
    return parser


def parse(
    argv: list[str] | None,
    configs_class: type,
    *,
    nested: dict[str, type],
    recipes: dict[str, dict[str, Any]],
    world: World | None = None,
) -> Request:
    """Parse and check the command line; exits with status 2 and a usage message on bad input."""
    parser = build_parser(recipes, configs_class, nested)
    # Intermixed: `key=value` settings may come before, between or after the flags.
    args = parser.parse_intermixed_args(argv)
    try:
        user: dict[str, tuple[Any, bool]] = {}
        for item in args.overrides:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise UsageError(f"positional arguments are configuration settings key=value; got '{item}'")
            user[key.strip()] = (text, True)
        flags = {
            "model": args.model,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "optimizer.learning_rate": args.lr,
            "seed": args.seed,
            "valid_split": args.valid_split,
            "amp": args.amp,
            "data_dir": str(args.data_dir) if args.data_dir is not None else None,
            "download": False if args.no_download else None,
            "channels_last": args.channels_last,
            "compile": True if args.compile else None,
            "sync_bn": True if args.sync_bn else None,
        }
        user.update({key: (value, False) for key, value in flags.items() if value is not None})
        run = {
            "cuda_graphs": args.cuda_graphs,
            "resume": args.resume,
            "eval": args.eval,
            "results": args.results,
            "logs_dir": args.logs_dir,
            "labml_url": args.labml_url,
            "tensorboard": args.tensorboard,
            "stop_after_steps": args.stop_after_steps,
            "time_limit_s": args.time_limit,
            "threads": args.threads,
        }
        return _request(user, configs_class, nested, recipes, world or World(), args.recipe, args.device, run)
    except UsageError as e:
        parser.error(str(e))


def check(
    settings: dict[str, Any],
    configs_class: type,
    *,
    nested: dict[str, type],
    recipes: dict[str, dict[str, Any]],
    world: World | None = None,
    recipe: str | None = None,
    device: str | None = None,
    **run: Any,
) -> Request:
    """
    The Python API's twin of [`parse`](#parse): `settings` are configuration values (`epochs=3`,
    `model="resnet56"`, `**{"optimizer.learning_rate": 0.05}`), `device` is what `--device` takes, and
    `run` holds the other flags by name (`resume`, `logs_dir`, `results`, `labml_url`, `tensorboard`,
    `stop_after_steps`, `time_limit_s`, `threads`, `eval`). Raises `UsageError` where the command line
    would exit with status 2.
    """
    known = _all_keys(configs_class, nested)
    for key in [*run, *settings]:
        if key not in (*known, *RUN_OPTIONS):
            raise UsageError(f"unknown setting {key!r}{_suggest(key, [*known, *RUN_OPTIONS])}")
    # A path is as good as its text for the settings that are strings (`data_dir`).
    user = {key: (str(v) if isinstance(v, os.PathLike) else v, False) for key, v in settings.items()}
    return _request(user, configs_class, nested, recipes, world or World(), recipe, device, run)


RUN_OPTIONS = (
    "cuda_graphs",
    "resume",
    "eval",
    "results",
    "logs_dir",
    "labml_url",
    "tensorboard",
    "stop_after_steps",
    "time_limit_s",
    "threads",
)


def command_line(settings: dict[str, Any]) -> str:
    """
    The shell command that runs what `train(**settings)` runs: `recipe`, `device` and the run options
    (spelt as in `RUN_OPTIONS`) as their flags, every configuration setting as `key=value`, each word
    quoted for the shell. For reports.
    """
    flags = {"time_limit_s": "--time-limit"}
    words = ["python", "experiments/cifar10.py"]
    for key, value in settings.items():
        if key in (*RUN_OPTIONS, "recipe", "device"):
            flag = flags.get(key, "--" + key.replace("_", "-"))
            if value is None or value is False:
                continue
            words += [flag] if value is True else [flag, str(value)]
        else:
            # A list as the command line writes it, without the spaces Python puts after its commas.
            text = str(value).replace(", ", ",") if isinstance(value, (list, tuple)) else str(value)
            words.append(f"{key}={text}")
    return " ".join(shlex.quote(word) for word in words)


def _request(
    user: dict[str, tuple[Any, bool]],
    configs_class: type,
    nested: dict[str, type],
    recipes: dict[str, dict[str, Any]],
    world: World,
    recipe: str | None,
    device: str | None,
    run: dict[str, Any],
) -> Request:
    """Settings as `(value, is_text)` pairs and the run options, checked and resolved into a `Request`."""
    cuda_graphs = bool(run.get("cuda_graphs", False))
    resume, eval, results = run.get("resume"), run.get("eval"), run.get("results")
    logs_dir, labml_url, tensorboard = (
        run.get("logs_dir"),
        run.get("labml_url"),
        run.get("tensorboard", False),
    )
    stop_after_steps, time_limit_s, threads = (
        run.get("stop_after_steps"),
        run.get("time_limit_s"),
        run.get("threads"),
    )
    user = dict(user)
    if device is not None:
        user.update({k: (v, False) for k, v in _device_overrides(device).items()})
    if "epochs" in user:
        # An explicit number of epochs sets the length; the paper's 64k iterations no longer apply.
        user.setdefault("iterations", ("from_epochs", False))
    overrides: dict[str, Any] = {}
    for key, (value, is_text) in user.items():
        overrides[key] = _check(configs_class, nested, key, value, is_text)
    if cuda_graphs:
        # Compared after conversion, so compile=yes agrees with the flag and compile=False does not.
        graphs = {"compile": True, "compile_mode": CUDA_GRAPHS_MODE}
        clashes = [
            f"{key}={overrides[key]}" for key in graphs if key in overrides and overrides[key] != graphs[key]
        ]
        if clashes:
            raise UsageError(
                f"--cuda-graphs means compile=True compile_mode={CUDA_GRAPHS_MODE}; drop "
                f"{' and '.join(clashes)} or --cuda-graphs"
            )
        overrides.update(graphs)
    # What this command line sets itself, as opposed to its recipe (for `check_combinations`).
    typed = list(overrides)
    default_recipe = config_default(configs_class, "recipe")
    if recipe is None:
        recipe = overrides.get("recipe", default_recipe)
    if recipe not in recipes:
        raise UsageError(f"recipe={recipe!r}: must be one of {', '.join(sorted(recipes))}")
    if recipe != default_recipe or "recipe" in overrides:
        # The configuration already defaults to the paper's recipe; leaving it out lets a resumed run
        # keep its own. A `--recipe` flag beats a `recipe=` setting, as every flag beats its setting.
        overrides["recipe"] = recipe
    # The one place that decides whether this run wants a GPU.
    wants_cuda = bool(overrides.get("device.use_cuda", True)) and torch.cuda.is_available()
    overrides = {**_recipe_overrides(recipes, recipe, overrides, wants_cuda), **overrides}
    if world.is_distributed and wants_cuda:
        # One GPU per process: torchrun's LOCAL_RANK picks it unless the user chose one.
        overrides.setdefault("device.cuda_device", world.local_rank)
    if resume is None:
        # A resumed run is checked once the checkpoint's settings are merged in (`runner`): here the
        # settings the command line leaves out would read as the defaults, not as the saved values.
        check_combinations(overrides, configs_class, nested, typed)
        check_hardware(overrides, configs_class, nested, world.size, wants_cuda)

    for name, value in (("--stop-after-steps", stop_after_steps), ("--threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UsageError(f"{name} must be a whole number, got {value!r}")
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if time_limit_s is not None and not (isinstance(time_limit_s, (int, float)) and time_limit_s > 0):
        raise UsageError(f"--time-limit must be a positive number of seconds, got {time_limit_s}")
    if resume is not None and eval is not None:
        raise UsageError("--resume and --eval exclude each other: --eval only measures a checkpoint")
    if tensorboard and eval is not None:
        raise UsageError("--tensorboard records training curves, and --eval trains nothing; drop one")
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        # Checked here so the run stops before any folder is made, not after labml has started one.
        raise UsageError(
            "--tensorboard needs the tensorboard package, which is not installed; install it "
            'with: pip install -e ".[tensorboard]"'
        )
    if eval is not None and not Path(eval).is_file():
        raise UsageError(f"--eval needs a checkpoint file; {eval} is not a file")

    return Request(
        settings=overrides,
        resume=resume,
        eval=eval,
        results=Path(results) if results is not None else None,
        logs_dir=Path(logs_dir) if logs_dir is not None else None,
        labml_url=labml_url,
        tensorboard=tensorboard,
        stop_after_steps=stop_after_steps,
        time_limit_s=time_limit_s,
        threads=threads,
        wants_cuda=wants_cuda,
    )


def _recipe_overrides(
    recipes: dict[str, dict[str, Any]], recipe: str, user: dict[str, Any], wants_cuda: bool
) -> dict[str, Any]:
    values = dict(recipes[recipe])
    # A recipe's hardware settings (its "cuda" entry) only pay off on a GPU: bf16 is slow on most CPUs.
    cuda_values = values.pop("cuda", {})
    if wants_cuda:
        values.update(cuda_values)
    if "iterations" in user and user["iterations"] != "from_epochs":
        # An explicit iteration count beats the recipe's epoch count.
        values.pop("iterations", None)
        values.pop("epochs", None)
    return values


def _device_overrides(device: str) -> dict[str, Any]:
    if device == "cpu":
        return {"device.use_cuda": False}
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise UsageError(f"--device must be cpu, cuda or cuda:N, got '{device}'")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available to PyTorch here; use --device cpu")
    n = int(index or 0)
    if n >= torch.cuda.device_count():
        raise UsageError(
            f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices (0.."
            f"{torch.cuda.device_count() - 1})"
        )
    return {"device.use_cuda": True, "device.cuda_device": n}


def _getter(o: dict[str, Any], configs_class: type, nested: dict[str, type]) -> Callable[[str], Any]:
    """A setting's value: the one given, else the configuration's declared default."""

    def get(key: str) -> Any:
        if key in o:
            return o[key]
        head, dot, name = key.partition(".")
        return config_default(nested[head], name) if dot else config_default(configs_class, key)

    return get


def check_hardware(
    o: dict[str, Any],
    configs_class: type,
    nested: dict[str, type],
    world_size: int,
    wants_cuda: bool,
    *,
    resumed: bool = False,
) -> None:
    """
    What the settings ask of the machine and the number of processes; raises `UsageError`. It runs on
    the final settings, so for a resumed run on the checkpoint's settings merged with the new ones.
    """
    get = _getter(o, configs_class, nested)
    if o.get("device.use_cuda") is True and not torch.cuda.is_available():
        raise UsageError("device.use_cuda=True: no CUDA GPU is available to PyTorch here")
    batch = get("batch_size")
    if batch % world_size:
        raise UsageError(
            f"--batch-size {batch} is the global batch and must divide evenly over the {world_size} processes"
        )
    cuda_graphs = uses_cuda_graphs(get("compile"), get("compile_mode"))
    if cuda_graphs and not wants_cuda:
        if resumed:
            raise UsageError(
                f"it asks for compile_mode={CUDA_GRAPHS_MODE} (--cuda-graphs), which needs CUDA, but this "
                "run is on the CPU; resume on a GPU, or pass compile=False"
            )
        raise UsageError(
            f"--cuda-graphs (compile_mode={CUDA_GRAPHS_MODE}) needs CUDA; on CPU use --compile alone"
        )
    if cuda_graphs and world_size > 1:
        # PyTorch has open reports of CUDA graph trees failing under DistributedDataParallel, and we have
        # not run the combination; better a clear refusal than a crash minutes into a multi-GPU run.
        raise UsageError(
            f"--cuda-graphs (compile_mode={CUDA_GRAPHS_MODE}) has not been verified with several "
            "processes; use --compile with the default mode for multi-GPU runs"
        )
    if get("sync_bn") and world_size > 1 and not wants_cuda:
        raise UsageError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm does not run on CPU processes")


def check_combinations(
    o: dict[str, Any], configs_class: type, nested: dict[str, type], typed: Collection[str] | None = None
) -> None:
    """
    Settings that are fine one by one but not together; raises `UsageError`. `typed` are the keys given
    this time, not by a recipe or a checkpoint (default: all of `o`); a setting that only applies with
    another is refused only when typed, so a recipe's warm-up fraction may give way to typed steps, a
    resumed run may keep a saved `compile_mode` after `compile=False`, and a checkpoint of a custom
    network resumed as a preset is refused for its network, by the signature check.
    """
    get = _getter(o, configs_class, nested)
    typed = o.keys() if typed is None else typed
    if get("optimizer.nesterov") and get("optimizer.momentum") <= 0:
        raise UsageError("optimizer.nesterov needs a positive optimizer.momentum")
    if "compile_mode" in typed and not get("compile"):
        raise UsageError(f"compile_mode={o['compile_mode']} only applies with --compile")
    if "lr_warmup_fraction" in typed and get("lr_warmup_steps") != "from_fraction":
        # A fraction the schedule would silently ignore; a recipe's own fraction may be overridden by steps.
        raise UsageError(
            "lr_warmup_fraction only applies with lr_warmup_steps=from_fraction; set both, or give "
            "lr_warmup_steps a number of steps"
        )
    train_images = cifar_data.TRAIN_IMAGES - get("valid_split")
    if get("train_subset") > train_images:
        raise UsageError(
            f"train_subset={get('train_subset')}: CIFAR-10 has only {train_images} training images "
            f"after holding out valid_split={get('valid_split')}; ask for at most {train_images}"
        )
    model = get("model")
    architecture = [k for k in ("n_blocks", "n_channels", "bottlenecks") if k in typed]
    if architecture and model != "custom":
        # A preset fixes its own stages; accepting these and then ignoring them would train another net.
        raise UsageError(
            f"{', '.join(architecture)} only apply to model=custom, but the model is {model}; "
            f"add --model custom"
        )
    shortcut = get("shortcut")
    if str(model).startswith("plain") and shortcut not in ("preset", "none"):
        raise UsageError(
            f"{model} is a plain network without shortcuts, so shortcut={shortcut} does not "
            f"apply; use --model resnet{model[len('plain') :]} shortcut={shortcut}"
        )
    if model == "custom":
        try:
            custom_trunk(get("n_blocks"), get("n_channels"), get("bottlenecks"), shortcut)
        except (ValueError, TypeError) as e:
            raise UsageError(f"custom model: {e}") from None


def _check(
    configs_class: type,
    nested: dict[str, type],
    key: str,
    value: Any,
    is_text: bool,
) -> Any:
    """Check one setting against the annotation (type), the options and `RULES` (range)."""
    cls, name = configs_class, key
    if "." in key:
        head, _, name = key.partition(".")
        if head not in nested:
            raise UsageError(
                f"unknown configuration '{key}'{_suggest(key, _all_keys(configs_class, nested))}"
            )
        cls = nested[head]
    annotations = _annotations(cls)
    if name not in annotations or key in INTERNAL_KEYS:
        raise UsageError(f"unknown configuration '{key}'{_suggest(key, _all_keys(configs_class, nested))}")
    options = _options(cls, name)
    annotation = annotations[name]
    if is_text and value in options:
        return value
    if not is_text and isinstance(value, str) and value in options:
        return value
    try:
        parsed = _convert(value, annotation) if is_text else _convert_python(value, annotation)
    except (ValueError, SyntaxError, TypeError):
        expected = _describe(annotation)
        choices = f" or one of: {', '.join(options)}" if options else ""
        raise UsageError(f"{key}={value!r}: expected {expected}{choices}") from None
    if parsed is _NOT_A_VALUE:
        expected = f"one of: {', '.join(options)}" if options else _describe(annotation)
        raise UsageError(f"{key}={value!r}: expected {expected}{_suggest(str(value), options)}")
    rule = RULES.get(key)
    if rule is not None and parsed is not None:
        problem = rule(parsed)
        if problem:
            raise UsageError(f"{key}={value!r}: {problem}")
    return parsed


_NOT_A_VALUE = object()


def _optional_of(annotation: Any) -> Any:
    """`X` for an annotation `X | None` (or `Optional[X]`), else `None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return None


def _convert(text: str, annotation: Any) -> Any:
    """Text to the annotated type; `_NOT_A_VALUE` when the annotation only admits option names."""
    origin = typing.get_origin(annotation)
    inner = _optional_of(annotation)
    if inner is not None:
        if text.strip() in ("None", "none", "null"):
            return None
        return _convert(text, inner)
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ValueError(text)
    if annotation is int:
        return int(text.strip())
    if annotation is float:
        return float(text.strip())
    if annotation is str:
        return text
    if origin is list or annotation is list:
        value = ast.literal_eval(text.strip())
        return _convert_python(value, annotation)
    return _NOT_A_VALUE


def _convert_python(value: Any, annotation: Any) -> Any:
    """Check a value that already has a Python type (from a flag or a literal list)."""
    origin = typing.get_origin(annotation)
    inner = _optional_of(annotation)
    if inner is not None:
        return None if value is None else _convert_python(value, inner)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, bool, str):
        if type(value) is not annotation:
            raise TypeError(value)
        return value
    if origin is list:
        (item,) = typing.get_args(annotation) or (int,)
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        return [_convert_python(v, item) for v in value]
    return _NOT_A_VALUE


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    inner = _optional_of(annotation)
    if inner is not None:
        return f"{_describe(inner)} or None"
    if origin is list:
        if typing.get_args(annotation) == (float,):
            return "a list of numbers like [0.5,0.75]"
        return "a list of integers like [3,3,3]"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(annotation, "an option name")


def _annotations(cls: type) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        merged.update(getattr(klass, "__annotations__", {}) if "__annotations__" in klass.__dict__ else {})
    return {k: v for k, v in merged.items() if not k.startswith("_")}


def _options(cls: type, key: str) -> list[str]:
    """The option names labml knows for `key` (registered with `@option`)."""
    names: list[str] = []
    for klass in cls.__mro__:
        for function in klass.__dict__.get("_calculators", {}).get(key, []):
            if function.option_name not in names:
                names.append(function.option_name)
    return names


def _all_keys(configs_class: type, nested: dict[str, type]) -> list[str]:
    keys = [k for k in _annotations(configs_class) if k not in INTERNAL_KEYS]
    for head, cls in nested.items():
        keys += [f"{head}.{k}" for k in _annotations(cls) if f"{head}.{k}" not in INTERNAL_KEYS]
    return keys


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
