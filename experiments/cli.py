"""
# The command line, checked before anything happens

labml trusts overrides (a misspelled key is ignored, `epochs=abc` stays text), so the command line and the
Python API are checked here against the configuration classes ([`options.py`](options.html)) before any
data is read or folder made. Each flag is one [`Flag`](#Flag) in `FLAGS`; precedence: recipe <
`key=value` < flags.
"""

import argparse
import difflib
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

import torch

from experiments import options
from experiments import recipes as recipe_book
from experiments.distributed import World, world_from_environment
from experiments.errors import UsageError
from experiments.loader import DATA_RULES, PAPER_VALID_SPLIT, check_data_settings
from experiments.models import MODEL_RULES, check_model_settings
from experiments.options import Rule, at_least, config_default, one_of, within
from experiments.precision import AMP_CHOICES
from experiments.run_configs import COMPILE_MODES, CUDA_GRAPHS_MODE, uses_cuda_graphs

# Computed inside the trainer; setting them from outside would bypass the data and model wiring.
INTERNAL_KEYS = {"dataset", "train_loader", "valid_loader", "test_loader", "steps_per_epoch", "world",
                 "optimizer.parameters", "device.device_info", "device.device"}  # fmt: skip


@dataclass(frozen=True)
class Flag:
    """The setting `key` a flag sets (with `run`, a `Request` field); a switch (no `metavar`) sets `value`."""

    name: str
    key: str
    help: str
    metavar: str | None = None
    value: Any = True
    run: bool = False
    kind: type = str
    const: Any = None


# Every flag, once; in a help, `{default}` is the setting's declared default.
FLAGS = (
    Flag("--model", "model", "resnetN, plainN (no shortcuts), resnet9, custom (default {default})", "NAME"),
    Flag("--recipe", "recipe", "training recipe (default {default}; listed below)", "NAME", run=True),
    Flag("--epochs", "epochs", "train N epochs (default: recipe's; paper {paper_iterations:,} iterations)",
         "N"),
    Flag("--batch-size", "batch_size", "global mini-batch, split over processes (default {default})", "N"),
    Flag("--lr", "optimizer.learning_rate", "base learning rate (default {default})", "LR"),
    Flag("--seed", "seed", "data order, augmentation, initial weights (default {default})", "N"),
    Flag("--valid-split", "valid_split", f"hold out N training images to validate on (N {PAPER_VALID_SPLIT})",
         "N", const=PAPER_VALID_SPLIT),
    Flag("--device", "device", "cpu, cuda or cuda:N (default: cuda if available)", "DEV", run=True),
    Flag("--data-dir", "data_dir", "folder with cifar-10-batches-py/ or the .tar.gz (./data)", "DIR"),
    Flag("--no-download", "download", "never download CIFAR-10", value=False),
    Flag("--no-verify-checksums", "verify_checksums", "skip the md5 check (your own CIFAR-format data)",
         value=False),
    Flag("--amp", "amp", f"number format: {'|'.join(AMP_CHOICES)} (default {{default}})", "FMT"),
    Flag("--channels-last", "channels_last", "NHWC layout (default: on for CUDA and x86 CPUs)"),
    Flag("--no-channels-last", "channels_last", "PyTorch's default NCHW layout", value=False),
    Flag("--compile", "compile", "torch.compile the model (compile_mode=... picks the mode)"),
    Flag("--cuda-graphs", "cuda_graphs", f"CUDA: --compile with compile_mode={CUDA_GRAPHS_MODE}", run=True),
    Flag("--sync-bn", "sync_bn", "batch-norm statistics over all processes (CUDA)"),
    Flag("--threads", "threads", "CPU threads (default: PyTorch's; try 1 on a busy machine)", "N", run=True,
         kind=int),
    Flag("--resume", "resume", "continue a run: its uuid, run folder or checkpoint", "RUN", run=True),
    Flag("--run-dir", "run_dir", "the run folder itself; the same command continues it (torchrun restarts)",
         "DIR", run=True, kind=Path),
    Flag("--eval", "eval", "evaluate a run (uuid, folder or checkpoint) on the test set", "RUN", run=True),
    Flag("--results", "results", "also write results.json to PATH", "PATH", run=True, kind=Path),
    Flag("--logs-dir", "logs_dir", "where run folders go (default ./logs)", "DIR", run=True, kind=Path),
    Flag("--labml-url", "labml_url", "labml app to stream to (default: nothing leaves)", "URL", run=True),
    Flag("--tensorboard", "tensorboard", "also write TensorBoard curves to the run folder", run=True),
    Flag("--time-limit", "time_limit_s", "stop, save and exit 0 after SECONDS of wall time", "SECONDS",
         run=True, kind=float),
    Flag("--stop-after-steps", "stop_after_steps", "debugging: stop as if interrupted after step K", "K",
         run=True, kind=int),
)  # fmt: skip
FLAGS_BY_NAME = {flag.name: flag for flag in FLAGS}
# The flags `train(**settings)` takes by name; `recipe` and `device` are its own keyword arguments.
RUN_OPTIONS = tuple(flag.key for flag in FLAGS if flag.run and flag.key not in ("recipe", "device"))
# The run flags a `Request` carries; `--cuda-graphs` becomes settings, as `--recipe` and `--device` do.
REQUEST_FLAGS = [flag for flag in FLAGS if flag.key in RUN_OPTIONS and flag.key != "cuda_graphs"]

# What a caller asks for, checked: the settings, whether it wants a GPU, and a field per run flag.
Request = make_dataclass(
    "Request",
    [
        ("settings", dict[str, Any], field(default_factory=dict)),
        ("wants_cuda", bool, False),
        *((f.key, f.kind | None, None) if f.metavar else (f.key, bool, False) for f in REQUEST_FLAGS),
    ],
    frozen=True,
)


# What each setting may be beyond its type; the data's, schedule's and network's rules live with them.
RULES: dict[str, Rule] = {
    **DATA_RULES,
    **recipe_book.SCHEDULE_RULES,
    **MODEL_RULES,
    **dict.fromkeys(("log_every", "threads", "stop_after_steps"), at_least(1)),
    # torch and numpy seed their generators with at most 64 and 32 bits; the epoch is added to the seed.
    "seed": within(0, 2**32),
    "num_classes": at_least(10),  # CIFAR-10's labels run 0..9
    "ema_decay": within(0, 1),
    "lookahead_every": at_least(0),
    "lookahead_decay": within(0, 1),
    "amp": one_of(AMP_CHOICES),
    "compile_mode": one_of(COMPILE_MODES),
    "device.cuda_device": at_least(0),
    "time_limit_s": lambda v: None if 0 < v < math.inf else "must be a positive number of seconds",
}


def parse(
    argv: list[str] | None,
    configs_class: type,
    *,
    nested: dict[str, type],
    recipes: dict[str, dict[str, Any]],
    world: World | None = None,
) -> Request:
    """Parse and check the command line; a mistake prints two lines and exits with status 2."""
    summary = "\n".join(f"  {line}" for line in recipe_book.recipe_summary(recipes))
    # A short help: one line a flag, one a recipe. A mistake raises, to be reported in one line.
    parser = argparse.ArgumentParser(
        prog="experiments/cifar10.py",
        usage="%(prog)s [flags] [key=value ...]",
        description="Train a ResNet on CIFAR-10 (He et al., 2015). Defaults: ResNet-20 and the paper's "
        "recipe, 64k iterations (hours on a CPU; --recipe cpu is the short one).",
        epilog=f"recipes (--help-recipes lists their settings):\n{summary}\n"
        "key=value sets any configuration, e.g. model=custom n_blocks=[2,2,2]; --list-configs lists them.\n"
        "Several GPUs: torchrun --nproc_per_node=N experiments/cifar10.py [flags].",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        exit_on_error=False,
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="any configuration setting")
    layout = parser.add_mutually_exclusive_group()
    for flag in FLAGS:
        where = layout if flag.key == "channels_last" else parser
        if flag.metavar is None:
            how = {"action": "store_const", "const": flag.value}
        else:
            how = {"nargs": "?" if flag.const else None, "const": flag.const, "metavar": flag.metavar}
        where.add_argument(flag.name, dest=flag.name, help=_help(flag, configs_class, nested), **how)
    parser.add_argument("--help-recipes", action="store_true", help="print every recipe's settings")
    parser.add_argument("--list-configs", action="store_true", help="print every key=value setting")
    words: list[str] = []
    for word in sys.argv[1:] if argv is None else argv:
        # `n_blocks=[2,` `2,` `2]`: a list the shell split at its spaces, joined back into one setting.
        if words and words[-1].count("[") > words[-1].count("]") and "=" in words[-1]:
            words[-1] += " " + word
        else:
            words.append(word)
    try:
        # Intermixed: `key=value` settings may come before, between or after the flags.
        args, unknown = parser.parse_known_intermixed_args(words)
        if unknown:
            word = unknown[0].partition("=")[0]
            close = difflib.get_close_matches(word, [*FLAGS_BY_NAME, "--help-recipes", "--list-configs"], n=1)
            raise UsageError(f"unknown option {word}" + (f"; did you mean {close[0]}?" if close else ""))
        if args.help_recipes or args.list_configs:
            paper = {key: config_default(configs_class, key, nested) for key in recipe_book.PAPER_SETTINGS}
            listing = recipe_book.recipe_settings(recipes, paper) if args.help_recipes else None
            print(listing or _configs_text(configs_class, nested))
            raise SystemExit(0)
        user: dict[str, tuple[Any, str | None]] = {}
        for item in args.overrides:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise UsageError(f"positional arguments are configuration settings key=value; got '{item}'")
            user[key.strip()] = (text, "")
        run: dict[str, Any] = {}
        for flag in FLAGS:
            value = getattr(args, flag.name)
            if value is not None and flag.run:
                run[flag.key] = value
            elif value is not None:
                # The text goes through the same checks as `key=value`, and errors name the flag.
                user[flag.key] = (value, f"{flag.name} {value}") if isinstance(value, str) else (value, None)
        return _request(user, configs_class, nested, recipes, world or World(), run, text=True)
    except (UsageError, argparse.ArgumentError) as e:
        print(f"{parser.prog}: error: {e}\nusage: {parser.format_usage()[7:].strip()} "
              "(--help: the flags, --list-configs: every setting)", file=sys.stderr)  # fmt: skip
        raise SystemExit(2) from None


def check(
    settings: dict[str, Any],
    configs_class: type,
    nested: dict[str, type],
    recipes: dict[str, dict[str, Any]],
    world: World | None = None,
    **run: Any,
) -> Request:
    """The Python API's [`parse`](#parse): settings and run flags by name; raises `UsageError`."""
    settings = dict(settings)
    run.update({key: settings.pop(key) for key in list(settings) if key in RUN_OPTIONS})
    known = [*_all_keys(configs_class, nested), *RUN_OPTIONS]
    for key in settings:
        if key not in known:
            raise UsageError(f"unknown setting {key!r}{options.suggest(key, known)}")
    # A path is as good as its text for the settings that are strings (`data_dir`).
    user = {key: (str(v) if isinstance(v, os.PathLike) else v, None) for key, v in settings.items()}
    return _request(user, configs_class, nested, recipes, world or world_from_environment(), run, text=False)


def _request(
    user: dict[str, tuple[Any, str | None]],
    configs_class: type,
    nested: dict[str, type],
    recipes: dict[str, dict[str, Any]],
    world: World,
    run: dict[str, Any],
    *,
    text: bool,
) -> Request:
    """
    Settings as `(value, spelling)` pairs (`""`: `key=value` text, a flag's words for its text, `None` for
    a Python value) and the run flags (`text` from the command line), checked into a `Request`.
    """
    user, device = dict(user), run.get("device")
    if device == "cpu":
        user["device.use_cuda"] = (False, None)
    elif device is not None:
        kind, _, index = device.partition(":")
        if kind != "cuda" or (index and not index.isdigit()):
            raise UsageError(f"--device must be cpu, cuda or cuda:N, got '{device}'")
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is available to PyTorch here; use --device cpu")
        count = torch.cuda.device_count()
        if int(index or 0) >= count:
            raise UsageError(f"--device {device}: there are only {count} CUDA devices (0..{count - 1})")
        user.update({"device.use_cuda": (True, None), "device.cuda_device": (int(index or 0), None)})
    if "epochs" in user:
        # An explicit number of epochs sets the length; the paper's 64k iterations no longer apply.
        user.setdefault("iterations", ("from_epochs", None))
    overrides = {key: _check(configs_class, nested, key, *given) for key, given in user.items()}
    if run.get("cuda_graphs"):
        # Compared after conversion, so compile=yes agrees with the flag and compile=False does not.
        graphs = {"compile": True, "compile_mode": CUDA_GRAPHS_MODE}
        clashes = [f"{k}={overrides[k]}" for k in graphs if k in overrides and overrides[k] != graphs[k]]
        if clashes:
            raise UsageError(f"--cuda-graphs means compile=True compile_mode={CUDA_GRAPHS_MODE}; drop "
                             f"{' and '.join(clashes)} or --cuda-graphs")  # fmt: skip
        overrides.update(graphs)
    typed = list(overrides)  # what this command line sets itself, as opposed to its recipe
    default_recipe = config_default(configs_class, "recipe")
    recipe = overrides.get("recipe", default_recipe) if run.get("recipe") is None else run["recipe"]
    _check_recipe(recipe, recipes)
    if recipe != default_recipe or "recipe" in overrides:
        # Leaving the default out lets a resumed run keep its own; a `--recipe` flag beats `recipe=`.
        overrides["recipe"] = recipe
    wants_cuda = bool(overrides.get("device.use_cuda", True)) and torch.cuda.is_available()
    overrides = {**recipe_book.recipe_values(recipes[recipe], overrides, on_cuda=wants_cuda), **overrides}
    if world.is_distributed and wants_cuda:
        overrides.setdefault("device.cuda_device", world.local_rank)  # torchrun's LOCAL_RANK picks the GPU
    if run.get("resume") is None:
        # A resumed run is checked once the checkpoint's settings are merged in (`launch`).
        check_combinations(overrides, configs_class, nested, typed, (world.size, wants_cuda))
    if run.get("resume") is not None and run.get("eval") is not None:
        raise UsageError("--resume and --eval exclude each other: --eval only measures a checkpoint")
    if run.get("run_dir") is not None:
        # `--run-dir` is the run folder itself (`run_folder.py`), so nothing else may choose one.
        for other in ("--resume", "--eval", "--logs-dir"):
            if run.get(FLAGS_BY_NAME[other].key) is not None:
                raise UsageError(f"--run-dir and {other} exclude each other: --run-dir is the run folder "
                                 f"itself and continues its own checkpoint; drop {other}")  # fmt: skip
    if run.get("tensorboard") and run.get("eval") is not None:
        raise UsageError("--tensorboard records training curves, and --eval trains nothing; drop one")
    if run.get("tensorboard") and importlib.util.find_spec("tensorboard") is None:
        raise UsageError('--tensorboard needs the tensorboard package: pip install -e ".[tensorboard]"')
    fields = {f.key: run[f.key] for f in REQUEST_FLAGS if run.get(f.key) is not None}
    for f in REQUEST_FLAGS:
        value = fields.get(f.key)
        if value is None or f.metavar is None:
            continue
        try:
            if text:
                value = f.kind(value)
            elif f.kind in (int, float) and type(value) not in (f.kind, int):
                raise TypeError(value)
        except (ValueError, TypeError):
            shown = value if text else repr(value)  # as typed, or as Python spells it
            raise UsageError(f"{f.name} {shown}: expected {options.describe(f.kind)}") from None
        problem = RULES[f.key](value) if f.key in RULES else None
        if problem:
            raise UsageError(f"{f.name} {problem}, got {value}")
        fields[f.key] = f.kind(value)
    return Request(settings=overrides, wants_cuda=wants_cuda, **fields)


def _check_recipe(recipe: Any, recipes: dict[str, dict[str, Any]]) -> None:
    if recipe not in recipes:
        names = ", ".join(sorted(recipes))
        raise UsageError(f"unknown recipe {recipe!r} (--recipe, recipe=): must be one of {names}")


def check_saved(
    settings: dict[str, Any], configs_class: type, nested: dict[str, type], recipes: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """A checkpoint's settings through the Python API's checks, converted; the caller blames the file."""
    for key in settings:
        if not isinstance(key, str):
            raise UsageError(f"setting names are text, not {key!r}")
    checked = {key: _check(configs_class, nested, key, value, None) for key, value in settings.items()}
    if "recipe" in checked:
        _check_recipe(checked["recipe"], recipes)
    check_combinations(checked, configs_class, nested, typed=())
    return checked


def getter(o: dict[str, Any], configs_class: type, nested: dict[str, type]) -> Callable[[str], Any]:
    """A setting's value: the one given, else the configuration's declared default."""
    return lambda key: o[key] if key in o else config_default(configs_class, key, nested)


def check_combinations(
    o: dict[str, Any],
    configs_class: type,
    nested: dict[str, type],
    typed: Collection[str],
    hardware: tuple[int, bool] | None = None,
) -> None:
    """
    Settings fine one by one but not together and (given `hardware`: processes, CUDA wanted) what they ask
    of the machine. One that only applies with another is refused only when `typed`, not by a recipe.
    """
    get = getter(o, configs_class, nested)
    recipe_book.check_schedule_settings(get, typed)
    check_data_settings(get)
    if "compile_mode" in typed and not get("compile"):
        raise UsageError(f"compile_mode={o['compile_mode']} only applies with --compile")
    if "lookahead_decay" in typed and not get("lookahead_every"):
        raise UsageError("lookahead_decay only applies with Lookahead on: give lookahead_every=5, say")
    check_model_settings(get, typed)
    if hardware is None:
        return
    world_size, wants_cuda = hardware
    if o.get("device.use_cuda") is True and not torch.cuda.is_available():
        raise UsageError("device.use_cuda=True: no CUDA GPU is available to PyTorch here")
    if get("batch_size") % world_size:
        raise UsageError(f"--batch-size {get('batch_size')} is the global batch and must divide evenly over "
                         f"the {world_size} processes")  # fmt: skip
    cuda_graphs = uses_cuda_graphs(get("compile"), get("compile_mode"))
    if cuda_graphs and not wants_cuda:
        raise UsageError(
            f"--cuda-graphs (compile_mode={CUDA_GRAPHS_MODE}) needs CUDA; on a CPU use --compile alone "
            "(compile_mode=default), or compile=False"
        )
    if cuda_graphs and world_size > 1:
        # PyTorch has open reports of CUDA graph trees failing under DistributedDataParallel, and we have
        # not run the combination; better a clear refusal than a crash minutes into a multi-GPU run.
        raise UsageError("--cuda-graphs is not verified with several processes; use --compile alone there")
    if get("sync_bn") and world_size > 1 and not wants_cuda:
        raise UsageError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm does not run on CPU processes")


def _check(configs_class: type, nested: dict[str, type], key: str, value: Any, spelling: str | None) -> Any:
    """One setting checked against its annotation, options and `RULES`; `spelling` as in `_request`."""
    cls, name = options.declaring(configs_class, key, nested)
    declared = options.annotations(cls)
    if name not in declared or key in INTERNAL_KEYS:
        known = _all_keys(configs_class, nested)
        raise UsageError(f"unknown configuration '{key}'{options.suggest(key, known)}")
    choices, annotation = options.option_names(cls, name), declared[name]
    if isinstance(value, str) and value in choices:
        return value
    try:
        parsed = options.convert(value, annotation, text=spelling is not None)
    except (ValueError, SyntaxError, TypeError, KeyError):
        named = f"one of: {', '.join(choices)}" if choices else ""
        expected = " or ".join(filter(None, [options.describe(annotation), named]))
        said = spelling or f"{key}={value!r}"
        raise UsageError(f"{said}: expected {expected}{options.suggest(str(value), choices)}") from None
    problem = RULES[key](parsed) if key in RULES and parsed is not None else None
    if problem:
        raise UsageError(f"{spelling or f'{key}={value!r}'}: {problem}")
    return parsed


def _all_keys(configs_class: type, nested: dict[str, type]) -> list[str]:
    keys = [*options.annotations(configs_class)]
    for head, cls in nested.items():
        keys += [f"{head}.{k}" for k in options.annotations(cls)]
    return [key for key in keys if key not in INTERNAL_KEYS]


def _help(flag: Flag, configs_class: type, nested: dict[str, type]) -> str:
    """A flag's help, with its setting's declared default."""
    default = getter({}, configs_class, nested)
    return flag.help.format(default=default(flag.key), paper_iterations=default("iterations"))


def _configs_text(configs_class: type, nested: dict[str, type]) -> str:
    """What `--list-configs` prints: every settable key with its type, default and help."""
    lines = []
    for key in _all_keys(configs_class, nested):
        if key in nested:
            continue  # the sub-configurations themselves; their settings follow as `head.key`
        cls, name = options.declaring(configs_class, key, nested)
        annotation, choices = options.annotations(cls)[name], options.option_names(cls, name)
        kind = " or ".join(filter(None, [options.describe(annotation), ", ".join(choices)]))
        helps = [f"{f.name}: {_help(f, configs_class, nested)}" for f in FLAGS if f.key == key and not f.run]
        help_text = " ".join([options.comments(cls).get(name, ""), *helps]).strip()
        default = config_default(configs_class, key, nested)
        lines.append(f"{key}={default!s}  [{kind}]  {help_text}".rstrip())
    return "\n".join(lines)
