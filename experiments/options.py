"""
# The names of labml's options, recorded as they are registered

labml keeps the functions registered with `@option` in a private table of each configuration class. The
command line needs their names: to accept `model=resnet56` or `scheduler=warmup_cosine`, to list the
choices in an error, and to name a default (the first option registered). Rather than read labml's
private table, a configuration class that extends [`RecordedOptions`](#RecordedOptions) notes each name
as labml's public `option` decorator hands the function to the class's public `calc` hook.
"""

from collections.abc import Callable
from typing import Any

from labml.configs import BaseConfigs

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
