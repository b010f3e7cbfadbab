"""Plain values: a framework's settings (hyperparameters, TrainingArguments) made fit for the wire.

A RUN_STARTED `config` must be msgpack-native; a framework's settings hold enums, paths, dtypes,
devices and objects. Those are kept as what a person would read: an enum's value, a path as a
string, anything else as its `str()`. Nothing is dropped and nothing is pickled.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping
from typing import Any

# Deeper nesting than this is cut (a config that refers to itself, or a model in hparams).
MAX_DEPTH = 16


def plain_value(value: Any, depth: int = 0) -> Any:
    """`value` with msgpack-native values only: maps with str keys, lists, numbers, str, None."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return plain_value(value.value, depth)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if depth >= MAX_DEPTH:
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): plain_value(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [plain_value(item, depth + 1) for item in items]
    item = getattr(value, "item", None)  # a one-element tensor or numpy scalar
    if callable(item) and getattr(value, "ndim", None) == 0:
        return plain_value(item(), depth)
    return str(value)


def plain_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """A framework's settings as a RUN_STARTED `config` (see `plain_value`)."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be a mapping of setting names to values, got {type(config).__name__}"
        )
    return plain_value(config)
