"""
# What a setting is: its type, default, help, options and rules

The command line ([`cli.py`](cli.html)) checks every setting against what the configuration classes
declare: the annotation (the type), the default, the comment above the declaration (the help) and the
labml options that can compute it. The rules (`at_least`, `within`, `one_of`) are written beside their
subject: the data's in [`loader.py`](loader.html), the schedule's in [`recipes.py`](recipes.html).

labml keeps the `@option` functions in a private table. Rather than read it, a configuration class that
extends [`RecordedOptions`](#RecordedOptions) notes each option's name as labml's public `option`
decorator hands the function to the class's public `calc` hook; the first one registered is the default.
"""

import ast
import difflib
import inspect
import math
import re
import types
import typing
from collections.abc import Callable
from typing import Any

from labml.configs import BaseConfigs

# A rule says what is wrong with a value (`"must be at least 1"`), or `None` when nothing is.
Rule = Callable[[Any], str | None]


def at_least(minimum: int) -> Rule:
    return lambda v: None if v >= minimum else f"must be at least {minimum}"


def within(low: int, high: int, *, high_inclusive: bool = False) -> Rule:
    def rule(v: Any) -> str | None:
        ok = low <= v <= high if high_inclusive else low <= v < high
        return None if ok else f"must be in [{low}, {high}{']' if high_inclusive else ')'}"

    return rule


def one_of(choices: tuple[str, ...]) -> Rule:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


# (configuration class, key) -> option names, in the order they were registered.
_NAMES: dict[tuple[type, str], list[str]] = {}


class RecordedOptions(BaseConfigs):
    """A configuration base class whose `@option` names `option_names` can list."""

    @classmethod
    def calc(cls, name: Any = None, option_name: str | None = None, pass_params: Any = None) -> Callable:
        register = super().calc(name, option_name, pass_params)

        def record(function: Callable) -> Callable:
            for item in name if isinstance(name, list) else [name]:
                # labml names an unnamed option after its function, so the record does too.
                _NAMES.setdefault((item.configs_class, item.key), []).append(option_name or function.__name__)
            return register(function)

        return record


def option_names(cls: type, key: str) -> list[str]:
    """The option names registered for `key` on `cls` and its bases, the first (the default) first."""
    names: list[str] = []
    for klass in cls.__mro__:
        names += [n for n in _NAMES.get((klass, key), []) if n not in names]
    return names


def config_default(configs_class: type, key: str) -> Any:
    """`key`'s default as the configuration class declares it (a value, or its first option's name)."""
    for klass in configs_class.__mro__:
        item = klass.__dict__.get(key)
        if getattr(item, "has_value", False):
            return item.value
    options = option_names(configs_class, key)
    return options[0] if options else None


def annotations(cls: type) -> dict[str, Any]:
    """The settings of `cls` and its bases, with their annotations."""
    merged: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        merged.update(klass.__dict__.get("__annotations__", {}))
    return {k: v for k, v in merged.items() if not k.startswith("_")}


def comments(cls: type) -> dict[str, str]:
    """Each setting's help: the comment right above its declaration, so it is written once, there."""
    notes: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        block: list[str] = []
        for line in map(str.strip, lines):
            field = re.match(r"^(\w+)\s*:", line)
            if line.startswith("#"):
                block.append(line.lstrip("#").strip())
                continue
            if field and block and field.group(1) in klass.__dict__.get("__annotations__", {}):
                notes[field.group(1)] = " ".join(block)
            block = []
    return notes


# ## Text to a setting's type
#
# These turn a value into its annotated type or raise (`ValueError`, `TypeError`, `SyntaxError`,
# `KeyError`); `describe` says what was expected instead.

# What a conversion returns for an annotation that admits only option names (`model: nn.Module`).
NOT_A_VALUE = object()


def _optional_of(annotation: Any) -> Any:
    """`X` for an annotation `X | None` (or `Optional[X]`), else `None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return None


def convert_text(text: str, annotation: Any) -> Any:
    """Text to the annotated type; `NOT_A_VALUE` when the annotation only admits option names."""
    inner, text = _optional_of(annotation), text.strip()
    if inner is not None:
        return None if text in ("None", "none", "null") else convert_text(text, inner)
    if annotation is bool:
        words = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False,
                 "off": False}  # fmt: skip
        return words[text.lower()]  # a KeyError, like the other conversions' errors, says "expected ..."
    if annotation is str:
        return text
    if annotation in (int, float) or typing.get_origin(annotation) is list:
        # `inf` and `nan` would pass every range check (nan compares false) and ruin the run silently.
        value = float(text) if annotation is float else ast.literal_eval(text)
        return convert_value(value, annotation)
    return NOT_A_VALUE


def convert_value(value: Any, annotation: Any) -> Any:
    """Check a value that already has a Python type (from the Python API or a literal list)."""
    inner = _optional_of(annotation)
    if inner is not None:
        return None if value is None else convert_value(value, inner)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(value)
        return float(value)
    if annotation in (int, bool, str):
        if type(value) is not annotation:
            raise TypeError(value)
        return value
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (int,)
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        return [convert_value(v, item) for v in value]
    return NOT_A_VALUE


def describe(annotation: Any) -> str:
    """What an annotation admits, in words for an error message."""
    inner = _optional_of(annotation)
    if inner is not None:
        return f"{describe(inner)} or None"
    if typing.get_origin(annotation) is list:
        return "a list of numbers like [0.5,0.75]" if typing.get_args(annotation) == (float,) else \
            "a list of integers like [3,3,3]"  # fmt: skip
    names = {int: "a whole number", float: "a finite number", bool: "true or false", str: "a string"}
    return names.get(annotation, "an option name")


def suggest(word: str, candidates: list[str]) -> str:
    """`; did you mean 'x'?` for the closest candidate, or nothing."""
    close = difflib.get_close_matches(word, candidates, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
