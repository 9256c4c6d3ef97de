"""
# What a setting is: its type, default, help, options and rules

The command line ([`cli.py`](cli.html)) checks every setting against what the configuration classes
declare: the annotation, the default, the comment above the declaration (the help) and the labml
options that can compute it. labml keeps its options in a private table, so a class that extends
[`RecordedOptions`](#RecordedOptions) notes each name as labml's public `calc` hook registers it.
"""

import ast
import difflib
import functools
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


def declaring(configs_class: type, key: str, nested: dict[str, type]) -> tuple[type, str]:
    """The class that declares `key`, and the name there (`optimizer.momentum`: a nested class's)."""
    head, dot, name = key.partition(".")
    return (nested[head], name) if dot and head in nested else (configs_class, key)


def config_default(configs_class: type, key: str, nested: dict[str, type] | None = None) -> Any:
    """`key`'s default as the configuration class declares it (a value, or its first option's name)."""
    cls, key = declaring(configs_class, key, nested or {})
    for klass in cls.__mro__:
        item = klass.__dict__.get(key)
        if getattr(item, "has_value", False):
            return item.value
    options = option_names(cls, key)
    return options[0] if options else None


def annotations(cls: type) -> dict[str, Any]:
    """The settings of `cls` and its bases, with their annotations."""
    return {k: v for k, v in typing.get_type_hints(cls).items() if not k.startswith("_")}


@functools.cache
def comments(cls: type) -> dict[str, str]:
    """Each setting's help: the comment right above its declaration, so it is written once, there."""
    notes: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        # A run of comment lines, then the line that declares `name:`.
        for block, name in re.findall(r"((?:^[ \t]*#.*\n)+)[ \t]*(\w+)[ \t]*:", source, re.MULTILINE):
            if name in klass.__dict__.get("__annotations__", {}):
                notes[name] = " ".join(line.strip().lstrip("#").strip() for line in block.splitlines())
    return notes


def _optional_of(annotation: Any) -> Any:
    """`X` for an annotation `X | None` (or `Optional[X]`), else `None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return None


BOOLEANS = dict.fromkeys(("true", "1", "yes", "on"), True) | dict.fromkeys(("false", "0", "no", "off"), False)


def convert(value: Any, annotation: Any, *, text: bool = False) -> Any:
    """`value` (command-line `text`, or Python) as the annotated type; raises if it is not one of those."""
    inner = _optional_of(annotation)
    if text:
        value, kind = value.strip(), inner or annotation
        if inner is not None and value in ("None", "none", "null"):
            return None
        if kind is bool:
            return BOOLEANS[value.lower()]
        if kind is not str:
            # `inf` and `nan` would pass every range check (nan compares false) and ruin the run silently.
            value = float(value) if kind is float else ast.literal_eval(value)
    if inner is not None:
        return None if value is None else convert(value, inner)
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
        return [convert(v, item) for v in value]
    raise TypeError(value)


def describe(annotation: Any) -> str:
    """What an annotation admits, in words for an error message ("" for option names only)."""
    inner = _optional_of(annotation)
    if inner is not None:
        return " or ".join(filter(None, [describe(inner), "None"]))
    if typing.get_origin(annotation) is list:
        return "a list of numbers like [0.5,0.75]" if typing.get_args(annotation) == (float,) else \
            "a list of integers like [3,3,3]"  # fmt: skip
    names = {int: "a whole number", float: "a finite number", bool: "true or false", str: "a string"}
    return names.get(annotation, "")


def suggest(word: str, candidates: list[str]) -> str:
    """`; did you mean 'x'?` for the closest candidate, or nothing."""
    close = difflib.get_close_matches(word, candidates, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
