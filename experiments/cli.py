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
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from experiments.models import custom_trunk
from experiments.precision import AMP_CHOICES
from experiments.recipes import RECIPE_HELP

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

SHORTCUT_CHOICES = ("preset", "A", "B", "C", "none")
# `torch.compile`'s modes; reduce-overhead is the one that records CUDA graphs.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


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
    "valid_split": _at_least(0),
    "seed": _at_least(0),
    "train_subset": _at_least(0),
    "test_subset": _at_least(0),
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
    "n_blocks": _positive_list,
    "n_channels": _positive_list,
    "bottlenecks": _positive_list,
    "optimizer.learning_rate": lambda v: None if v > 0 else "must be positive",
    "optimizer.momentum": _within(0, 1),
    "optimizer.weight_decay": _at_least(0),
    "device.cuda_device": _at_least(0),
    "data_dir": lambda v: None if v else "must not be empty",
}


@dataclass
class Invocation:
    """What the command line asks for, checked."""

    overrides: dict[str, Any] = field(default_factory=dict)
    resume: str | None = None
    eval: str | None = None
    results: Path | None = None
    logs_dir: Path | None = None
    labml_url: str | None = None
    tensorboard: bool = False
    stop_after_steps: int | None = None
    threads: int | None = None


def build_parser(recipes: dict[str, dict[str, Any]], model_names: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="experiments/cifar10.py",
        description="Train a ResNet on CIFAR-10 (He et al., 2015) with labml tracking. Defaults: ResNet-20 "
        "and the paper's recipe. Checkpoints after every epoch and on SIGINT/SIGTERM; "
        "--resume continues exactly.",
        epilog="Any configuration can also be given as key=value, e.g. optimizer.learning_rate=0.05, "
        "model=custom n_blocks=[2,2,2] (the lists shape only the custom network), "
        "lr_warmup_steps=400 (the ResNet-110 warm-up), valid_split=5000, "
        "train_subset=5000 test_subset=1000 (class-balanced subsets for quick experiments; 0: all). "
        "Several GPUs: torchrun --nproc_per_node=N experiments/cifar10.py [options]; --batch-size is "
        "the global batch, split evenly across processes.",
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
        "n_blocks/n_channels/bottlenecks). Default resnet20",
    )
    parser.add_argument("--recipe", choices=sorted(recipes), default="paper", help=RECIPE_HELP)
    parser.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="train N epochs (default: the recipe's; paper: 64k iterations)",
    )
    parser.add_argument("--batch-size", type=int, metavar="N", help="global mini-batch size (paper: 128)")
    parser.add_argument("--lr", type=float, metavar="LR", help="base learning rate (paper: 0.1)")
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
        const=5000,
        metavar="N",
        help="hold out N training images for per-epoch validation (default N: 5000, the "
        "paper's 45k/5k split); the test set is only reported, never used to choose",
    )
    parser.add_argument(
        "--amp",
        choices=AMP_CHOICES,
        help="mixed precision (default none; fast and resnet9 recipes: bf16 on CUDA; cpu "
        "recipe: auto). auto: bf16 on GPUs that support it, and on CPUs with native "
        "bf16 (AMX or AVX512-BF16) when a timed step says it is faster; float32 "
        "elsewhere, since emulated bf16 is several times slower",
    )
    layout = parser.add_mutually_exclusive_group()
    layout.add_argument(
        "--channels-last",
        action="store_true",
        default=None,
        help="NHWC memory layout. Default (channels_last=auto): on for CUDA and for x86 "
        "CPUs, where it was measured 1.2x faster for training ResNet-20/56",
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
        help="CUDA only: --compile with compile_mode=reduce-overhead, which replays each "
        "step's kernels as a recorded CUDA graph (helps small, launch-bound networks)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for PyTorch (torch.set_num_threads; default: PyTorch's own choice, "
        "about one per core). On a busy machine fewer can be much faster: on a 2-core "
        "machine shared with other jobs, 1 thread trained these small convolutions "
        "6-10x faster than 2 (ResNet-20: 250 against 38 images/s in one paired run)",
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
    world_size: int = 1,
) -> Invocation:
    """Parse and check the command line; exits with status 2 and a usage message on bad input."""
    model_names = _options(configs_class, "model")
    parser = build_parser(recipes, model_names)
    # Intermixed: `key=value` settings may come before, between or after the flags.
    args = parser.parse_intermixed_args(argv)

    user: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            parser.error(f"positional arguments are configuration settings key=value; got '{item}'")
        user[key.strip()] = (text, True)
    flags = {
        "model": args.model,
        "batch_size": args.batch_size,
        "optimizer.learning_rate": args.lr,
        "seed": args.seed,
        "valid_split": args.valid_split,
        "amp": args.amp,
        "data_dir": str(args.data_dir) if args.data_dir is not None else None,
    }
    for key, value in flags.items():
        if value is not None:
            user[key] = (value, False)
    if args.no_download:
        user["download"] = (False, False)
    if args.channels_last is not None:
        user["channels_last"] = (args.channels_last, False)
    switches = (("compile", args.compile), ("sync_bn", args.sync_bn))
    for key, on in switches:
        if on:
            user[key] = (True, False)
    if args.epochs is not None:
        user["epochs"] = (args.epochs, False)
        # An explicit number of epochs sets the length; the paper's 64k iterations no longer apply.
        user.setdefault("iterations", ("from_epochs", False))
    if args.device is not None:
        user.update({k: (v, False) for k, v in _device_overrides(parser, args.device).items()})

    overrides: dict[str, Any] = {}
    for key, (value, is_text) in user.items():
        overrides[key] = _check(parser, configs_class, nested, key, value, is_text)
    if args.cuda_graphs:
        # Compared after conversion, so compile=yes agrees with the flag and compile=False does not.
        graphs = {"compile": True, "compile_mode": "reduce-overhead"}
        clashes = [
            f"{key}={overrides[key]}" for key in graphs if key in overrides and overrides[key] != graphs[key]
        ]
        if clashes:
            parser.error(
                f"--cuda-graphs means compile=True compile_mode=reduce-overhead; drop "
                f"{' and '.join(clashes)} or --cuda-graphs"
            )
        overrides.update(graphs)
    recipe = overrides.get("recipe", args.recipe) if args.recipe == "paper" else args.recipe
    if recipe not in recipes:
        parser.error(f"recipe={recipe!r}: must be one of {', '.join(sorted(recipes))}")
    if recipe != "paper":
        # The paper's recipe is the configuration's default; leaving it out lets a resumed run keep the
        # recipe it was started with.
        overrides["recipe"] = recipe
    warmup_steps = {**recipes[recipe], **overrides}.get("lr_warmup_steps")
    if "lr_warmup_fraction" in overrides and warmup_steps != "from_fraction":
        # A fraction the schedule would silently ignore; a recipe's own fraction may be overridden by steps.
        parser.error(
            "lr_warmup_fraction only applies with lr_warmup_steps=from_fraction; set both, or give "
            "lr_warmup_steps a number of steps"
        )
    overrides = {**_recipe_overrides(recipes, recipe, overrides), **overrides}
    _check_combinations(parser, overrides, world_size)

    for name, value in (("--stop-after-steps", args.stop_after_steps), ("--threads", args.threads)):
        if value is not None and value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    if args.resume is not None and args.eval is not None:
        parser.error("--resume and --eval exclude each other: --eval only measures a checkpoint")
    if args.tensorboard and args.eval is not None:
        parser.error("--tensorboard records training curves, and --eval trains nothing; drop one")
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        # Checked here so the run stops before any folder is made, not after labml has started one.
        parser.error(
            "--tensorboard needs the tensorboard package, which is not installed; install it "
            'with: pip install -e ".[tensorboard]"'
        )
    if args.eval is not None and not Path(args.eval).is_file():
        parser.error(f"--eval needs a checkpoint file; {args.eval} is not a file")
    return Invocation(
        overrides=overrides,
        resume=args.resume,
        eval=args.eval,
        results=args.results,
        logs_dir=args.logs_dir,
        labml_url=args.labml_url,
        tensorboard=args.tensorboard,
        stop_after_steps=args.stop_after_steps,
        threads=args.threads,
    )


def _recipe_overrides(
    recipes: dict[str, dict[str, Any]], recipe: str, user: dict[str, Any]
) -> dict[str, Any]:
    values = dict(recipes[recipe])
    # A recipe's hardware settings (its "cuda" entry) only pay off on a GPU: bf16 is slow on most CPUs.
    cuda_values = values.pop("cuda", {})
    if _wants_cuda(user):
        values.update(cuda_values)
    if "iterations" in user and user["iterations"] != "from_epochs":
        # An explicit iteration count beats the recipe's epoch count.
        values.pop("iterations", None)
        values.pop("epochs", None)
    return values


def _wants_cuda(overrides: dict[str, Any]) -> bool:
    return overrides.get("device.use_cuda", True) and torch.cuda.is_available()


def _device_overrides(parser: argparse.ArgumentParser, device: str) -> dict[str, Any]:
    if device == "cpu":
        return {"device.use_cuda": False}
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        parser.error(f"--device must be cpu, cuda or cuda:N, got '{device}'")
    if not torch.cuda.is_available():
        parser.error(f"--device {device}: no CUDA GPU is available to PyTorch here; use --device cpu")
    n = int(index or 0)
    if n >= torch.cuda.device_count():
        parser.error(
            f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices (0.."
            f"{torch.cuda.device_count() - 1})"
        )
    return {"device.use_cuda": True, "device.cuda_device": n}


def _check_combinations(parser: argparse.ArgumentParser, o: dict[str, Any], world_size: int) -> None:
    if o.get("device.use_cuda") is True and not torch.cuda.is_available():
        parser.error("device.use_cuda=True: no CUDA GPU is available to PyTorch here")
    if o.get("optimizer.nesterov") and o.get("optimizer.momentum", 0.9) <= 0:
        parser.error("optimizer.nesterov needs a positive optimizer.momentum")
    batch = o.get("batch_size", 128)
    if batch % world_size:
        parser.error(
            f"--batch-size {batch} is the global batch and must divide evenly over the {world_size} processes"
        )
    if o.get("compile_mode", "default") == "reduce-overhead" and not _wants_cuda(o):
        parser.error("--cuda-graphs (compile_mode=reduce-overhead) needs CUDA; on CPU use --compile alone")
    if "compile_mode" in o and not o.get("compile"):
        parser.error(f"compile_mode={o['compile_mode']} only applies with --compile")
    if o.get("compile_mode") == "reduce-overhead" and world_size > 1:
        # PyTorch has open reports of CUDA graph trees failing under DistributedDataParallel, and we have
        # not run the combination; better a clear refusal than a crash minutes into a multi-GPU run.
        parser.error(
            "--cuda-graphs (compile_mode=reduce-overhead) has not been verified with several "
            "processes; use --compile with the default mode for multi-GPU runs"
        )
    if o.get("sync_bn") and world_size > 1 and not _wants_cuda(o):
        parser.error("--sync-bn needs CUDA: PyTorch's SyncBatchNorm does not run on CPU processes")
    model = o.get("model", "resnet20")
    architecture = [k for k in ("n_blocks", "n_channels", "bottlenecks") if k in o]
    if architecture and model != "custom":
        # A preset fixes its own stages; accepting these and then ignoring them would train another net.
        parser.error(
            f"{', '.join(architecture)} only apply to model=custom, but the model is {model}; "
            f"add --model custom"
        )
    if str(model).startswith("plain") and o.get("shortcut", "preset") not in ("preset", "none"):
        parser.error(
            f"{model} is a plain network without shortcuts, so shortcut={o['shortcut']} does not "
            f"apply; use --model resnet{model[len('plain') :]} shortcut={o['shortcut']}"
        )
    if model == "custom":
        try:
            custom_trunk(
                o.get("n_blocks", [3, 3, 3]),
                o.get("n_channels", [16, 32, 64]),
                o.get("bottlenecks"),
                o.get("shortcut", "preset"),
            )
        except (ValueError, TypeError) as e:
            parser.error(f"custom model: {e}")


def _check(
    parser: argparse.ArgumentParser,
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
            parser.error(f"unknown configuration '{key}'{_suggest(key, _all_keys(configs_class, nested))}")
        cls = nested[head]
    annotations = _annotations(cls)
    if name not in annotations or key in INTERNAL_KEYS:
        parser.error(f"unknown configuration '{key}'{_suggest(key, _all_keys(configs_class, nested))}")
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
        parser.error(f"{key}={value!r}: expected {expected}{choices}")
    if parsed is _NOT_A_VALUE:
        expected = f"one of: {', '.join(options)}" if options else _describe(annotation)
        parser.error(f"{key}={value!r}: expected {expected}{_suggest(str(value), options)}")
    rule = RULES.get(key)
    if rule is not None and parsed is not None:
        problem = rule(parsed)
        if problem:
            parser.error(f"{key}={value!r}: {problem}")
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
