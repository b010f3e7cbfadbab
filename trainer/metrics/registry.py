"""Metric identity on the wire: class names to classes, and the message form of a metric's state.

A metric travels as ``{"class": name, "settings": {...}, "state": {...}}`` (the value of one
entry of EPOCH_COMPLETED's ``metric_states``): the registered name of its class, the
msgpack-native constructor kwargs its merge/compute depend on (``Metric.settings()``), and its
mergeable state with tensors as nested lists. The aggregator rebuilds a twin by name with
``metric_from_message`` and merges the states of every rank into it, so the arithmetic is the
metric class's own, in the Engine and in the aggregator alike.

Sending side: ``metric_state_message(metric)`` raises ``MetricNotPortable`` for a metric that
cannot be rebuilt elsewhere (its class is not registered, its ``settings()`` is None or not
msgpack-native); ``portable_metric_states(metrics)`` builds a whole ``metric_states`` map and
returns the names it had to leave out, with the reason, for the caller to log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch

from trainer.metrics.accuracy import Accuracy, TopKCategoricalAccuracy
from trainer.metrics.averages import Average, RunningAverage
from trainer.metrics.base import Metric
from trainer.metrics.classification import ConfusionMatrix, F1Score, Precision, Recall
from trainer.metrics.loss import Loss
from trainer.metrics.regression import (
    MeanAbsoluteError,
    MeanSquaredError,
    R2Score,
    RootMeanSquaredError,
)

M = TypeVar("M", bound=type[Metric])

MESSAGE_KEYS = ("class", "settings", "state")

BUILTIN_METRICS: tuple[type[Metric], ...] = (
    Accuracy,
    Average,
    ConfusionMatrix,
    F1Score,
    Loss,
    MeanAbsoluteError,
    MeanSquaredError,
    Precision,
    R2Score,
    Recall,
    RootMeanSquaredError,
    RunningAverage,
    TopKCategoricalAccuracy,
)

_by_name: dict[str, type[Metric]] = {cls.__name__: cls for cls in BUILTIN_METRICS}


class UnknownMetricClass(LookupError):
    """A metric class name that is not registered; the message lists the registered ones."""


class MetricNotPortable(ValueError):
    """A metric whose state cannot be published for another process to merge; says why."""


class MetricMessageError(ValueError):
    """A metric state message (one `metric_states` entry) that cannot be turned into a metric."""


def register_metric(cls: M, name: str | None = None, *, replace: bool = False) -> M:
    """Register a Metric subclass under `name` (default: its class name); usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Metric)):
        raise TypeError(f"register_metric takes a Metric subclass, got {cls!r}")
    key = cls.__name__ if name is None else name
    if not isinstance(key, str) or not key:
        raise ValueError(f"metric class name must be a non-empty str, got {key!r}")
    present = _by_name.get(key)
    if present is not None and present is not cls and not replace:
        raise ValueError(
            f"metric class name {key!r} is already registered for "
            f"{present.__module__}.{present.__qualname__}; register "
            f"{cls.__module__}.{cls.__qualname__} under another name or pass replace=True"
        )
    _by_name[key] = cls
    return cls


def registered_metrics() -> dict[str, type[Metric]]:
    """A copy of the registry: class name -> metric class."""
    return dict(_by_name)


def metric_class(name: str) -> type[Metric]:
    """The metric class registered under `name`; UnknownMetricClass naming it if none is."""
    try:
        return _by_name[name]
    except (KeyError, TypeError):
        raise UnknownMetricClass(
            f"unknown metric class {name!r}: registered are {', '.join(sorted(_by_name))}; "
            "register custom metrics with trainer.metrics.registry.register_metric in every "
            "process that rebuilds them (the metrics worker included)"
        ) from None


def class_name(metric: Metric) -> str:
    """The name `metric`'s exact class is registered under; MetricNotPortable if it is not."""
    cls = type(metric)
    for name, registered in _by_name.items():
        if registered is cls:
            return name
    raise MetricNotPortable(
        f"metric class {cls.__module__}.{cls.__qualname__} is not registered, so no other "
        "process can rebuild it; call trainer.metrics.registry.register_metric on it"
    )


def metric_from_settings(class_name: str, settings: Mapping[str, Any]) -> Metric:
    """A fresh metric of the registered class `class_name` built from its `settings()`."""
    cls = metric_class(class_name)
    if not isinstance(settings, Mapping):
        raise MetricMessageError(
            f"settings of metric class {class_name!r} must be a map, got {type(settings).__name__}"
        )
    try:
        return cls.from_settings(dict(settings))
    except (TypeError, ValueError) as exc:
        raise MetricMessageError(
            f"cannot build metric class {class_name!r} from settings {dict(settings)!r}: {exc}"
        ) from exc


def _native_state_value(value: Any) -> Any:
    # Tensors become nested lists; numbers stay as they are (the state holds nothing else).
    return value.tolist() if isinstance(value, torch.Tensor) else value


def _non_native(value: Any, where: str) -> str | None:
    """Where in `value` a value that msgpack cannot carry as is sits, or None if none does."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return None
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _non_native(item, f"{where}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has the non-str key {key!r}"
            found = _non_native(item, f"{where}[{key!r}]")
            if found:
                return found
        return None
    return f"{where} is a {type(value).__qualname__}"


def metric_state_message(metric: Metric) -> dict[str, Any]:
    """`metric` as ``{"class", "settings", "state"}`` with msgpack-native values only."""
    name = class_name(metric)
    settings = metric.settings()
    if settings is None:
        raise MetricNotPortable(
            f"metric {metric!r} (class {name!r}) says its settings cannot travel "
            "(settings() returned None)"
        )
    problem = _non_native(settings, "settings")
    if problem:
        raise MetricNotPortable(
            f"metric {metric!r} (class {name!r}): {problem}, which msgpack cannot carry; "
            "settings() must return numbers, strings, bools, None, lists and str-keyed dicts"
        )
    state = {key: _native_state_value(value) for key, value in metric.state_dict().items()}
    return {"class": name, "settings": dict(settings), "state": state}


def portable_metric_states(
    metrics: Mapping[str, Metric],
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(`metric_states` for every portable metric by name, {left-out name: reason})."""
    states: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for name, metric in metrics.items():
        try:
            states[name] = metric_state_message(metric)
        except MetricNotPortable as exc:
            skipped[name] = str(exc)
    return states, skipped


def metric_from_message(message: Any, where: str = "metric state message") -> Metric:
    """Rebuild the metric a `metric_state_message` describes, its state loaded.

    `where` names the message in errors (e.g. "metric_states['accuracy'] of EPOCH_COMPLETED
    <id>"); every problem raises MetricMessageError (or UnknownMetricClass) naming it.
    """
    if not isinstance(message, Mapping):
        raise MetricMessageError(f"{where} must be a map, got {type(message).__name__}")
    missing = [key for key in MESSAGE_KEYS if key not in message]
    if missing:
        raise MetricMessageError(
            f"{where} lacks the keys {missing} (it has {sorted(message)}); a metric state "
            "message is {'class': str, 'settings': map, 'state': map}"
        )
    name, state = message["class"], message["state"]
    if not isinstance(name, str):
        raise MetricMessageError(f"{where}: 'class' must be a str, got {name!r}")
    if not isinstance(state, Mapping):
        raise MetricMessageError(f"{where}: 'state' must be a map, got {type(state).__name__}")
    try:
        metric = metric_from_settings(name, message["settings"])
    except UnknownMetricClass as exc:
        raise UnknownMetricClass(f"{where}: {exc}") from None
    except MetricMessageError as exc:
        raise MetricMessageError(f"{where}: {exc}") from exc
    try:
        metric.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as exc:
        # KeyError's str() quotes its message; take the argument itself.
        reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise MetricMessageError(f"{where}: state does not fit class {name!r}: {reason}") from exc
    return metric


def scalar_values(name: str, value: Any) -> dict[str, float]:
    """The scalar entries of one computed value, as `state.metrics` shows them, as floats.

    A number (or one-element tensor) gives ``{name: float}``; a dict-valued compute gives its
    scalar entries under their own keys (as ``Metric.completed`` publishes them); anything
    else (per-class tensors, confusion matrices) gives nothing.
    """
    if isinstance(value, Mapping):
        out: dict[str, float] = {}
        for key, item in value.items():
            out.update(scalar_values(str(key), item))
        return out
    scalar = _as_float(value)
    return {} if scalar is None else {name: scalar}


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.item())
    if hasattr(value, "item") and getattr(value, "size", None) == 1:  # numpy scalars
        return float(value.item())
    return None


__all__ = [
    "BUILTIN_METRICS",
    "MESSAGE_KEYS",
    "MetricMessageError",
    "MetricNotPortable",
    "UnknownMetricClass",
    "class_name",
    "metric_class",
    "metric_from_message",
    "metric_from_settings",
    "metric_state_message",
    "portable_metric_states",
    "register_metric",
    "registered_metrics",
    "scalar_values",
]
