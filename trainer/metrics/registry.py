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

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, TypeVar

import torch

from trainer.errors import TrainerError
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


class UnknownMetricClass(TrainerError, LookupError):
    """A metric class name that is not registered; the message lists the registered ones."""


class MetricNotPortable(TrainerError, ValueError):
    """A metric whose state cannot be published for another process to merge; says why."""


class MetricMessageError(TrainerError, ValueError):
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


def _message_parts(message: Any, where: str) -> tuple[str, Any, Mapping[str, Any]]:
    """(class name, settings, state) of a metric state message; MetricMessageError if malformed."""
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
    return name, message["settings"], state


def _built(name: str, settings: Any, where: Callable[[], str]) -> Metric:
    """metric_from_settings, its errors naming the message by `where()`."""
    try:
        return metric_from_settings(name, settings)
    except UnknownMetricClass as exc:
        raise UnknownMetricClass(f"{where()}: {exc}") from None
    except MetricMessageError as exc:
        raise MetricMessageError(f"{where()}: {exc}") from exc


def _misfit(name: str, exc: Exception, where: str) -> MetricMessageError:
    """The error for a state that class `name` cannot load."""
    # KeyError's str() quotes its message; take the argument itself.
    reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return MetricMessageError(f"{where}: state does not fit class {name!r}: {reason}")


def metric_from_message(message: Any, where: str = "metric state message") -> Metric:
    """Rebuild the metric a `metric_state_message` describes, its state loaded.

    `where` names the message in errors (e.g. "metric_states['accuracy'] of EPOCH_COMPLETED
    <id>"); every problem raises MetricMessageError (or UnknownMetricClass) naming it.
    """
    name, settings, state = _message_parts(message, where)
    metric = _built(name, settings, lambda: where)
    try:
        metric.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise _misfit(name, exc, where) from exc
    return metric


def _identity(name: str, settings: Mapping[str, Any]) -> tuple[str, str]:
    """Class name and settings in a form equal for equal settings, whatever their key order."""
    items = list(settings.items())
    try:
        items.sort()
    except TypeError:  # keys of mixed types: order them by their repr instead
        items.sort(key=lambda item: repr(item[0]))
    return name, repr(items)


class MetricTemplate:
    """One (class, settings) of a metric state message, rebuilt once and reused for every merge.

    `check_state` vets a state cheaply (its entries and their kinds); `merged` resets the
    rebuilt metric, merges states into it with the class's own `merge` and returns its
    `compute()`: the value a fresh twin would give. Not for concurrent use.
    """

    __slots__ = ("cls", "entries", "identity", "metric", "name", "settings")

    def __init__(self, name: str, cls: type[Metric], metric: Metric, settings: Mapping) -> None:
        self.name = name
        self.cls = cls  # the class registered under `name` when built (a stale template differs)
        self.metric = metric
        self.settings = dict(settings)
        self.entries = metric._reductions.keys()  # the state entries the class declares
        # Templates whose identities are equal merge with one another (settings key order aside).
        self.identity = _identity(name, settings)

    def check_state(self, state: Mapping[str, Any], where: Callable[[], str]) -> None:
        """Raise MetricMessageError (naming `where()`) unless `state` has exactly the declared
        entries, each a number or a list; lists are only checked when merged."""
        if type(state) is dict and state.keys() == self.entries and _plain(state):
            return
        try:
            self.metric._restore(state)  # the full checks, for what is unusual or wrong
        except (KeyError, TypeError, ValueError) as exc:
            raise _misfit(self.name, exc, where()) from exc

    def merged(self, states: Iterable[Mapping[str, Any]]) -> Any:
        """The value of the metric once every state of `states` is merged into a fresh one."""
        metric = self.metric
        metric.reset()
        metric.merge_all(states)
        return metric.compute()

    def __repr__(self) -> str:
        return f"MetricTemplate({self.identity[0]!r}, settings={self.identity[1]})"


def _plain(state: dict[str, Any]) -> bool:
    """Whether every entry of `state` is a number or a list (what a metric state travels as)."""
    for value in state.values():
        kind = type(value)
        if kind is not float and kind is not int and kind is not list:
            return False
    return True


# One metric of a `metric_states` map: its template and its state as received.
MetricPart = tuple[MetricTemplate, Mapping[str, Any]]


class MetricTemplates:
    """The templates of the metric state messages seen, by class name and settings; bounded.

    What an aggregator keeps instead of rebuilding a metric from every message it receives.
    Settings equal as values share a template (``{"k": 1}`` and ``{"k": 1.0}`` alike), whatever
    their key order. A template built before its class name was registered again is rebuilt.
    """

    def __init__(self, limit: int = 256) -> None:
        if limit < 1:
            raise ValueError(f"MetricTemplates limit must be >= 1, got {limit}")
        self.limit = limit
        self._templates: dict[tuple[str, Any], MetricTemplate] = {}
        # The last template of each class name: what the next message of that class most
        # likely needs, found by comparing settings rather than hashing them.
        self._last: dict[str, MetricTemplate] = {}

    def parse(
        self, states: Mapping[Any, Any], where: Callable[[Any], str]
    ) -> tuple[dict[str, MetricPart], dict[str, UnknownMetricClass]]:
        """Every metric of a `metric_states` map, by name: its template and its state, checked as
        far as is cheap (see `lookup`); and, by class name, the errors of the metrics left out
        because their class is not registered.

        Raises MetricMessageError for any other problem, naming the metric by `where(name)`.
        """
        parts: dict[str, MetricPart] = {}
        unknown: dict[str, UnknownMetricClass] = {}
        last = self._last
        for name, message in states.items():
            # The usual message (a known class with the settings of the last one, a state of
            # numbers and lists) is checked here, inline; anything else goes to `lookup`.
            if type(message) is dict:
                cls_name, state = message.get("class"), message.get("state")
                if type(cls_name) is str and type(state) is dict and type(name) is str:
                    template = last.get(cls_name)
                    if (
                        template is not None
                        and template.settings == message.get("settings")
                        and _by_name.get(cls_name) is template.cls
                        and state.keys() == template.entries
                        and _plain(state)
                    ):
                        parts[name] = (template, state)
                        continue
            if not isinstance(name, str):
                raise MetricMessageError(f"{where(name)}: metric names must be str")
            try:
                parts[name] = self.lookup(message, partial(where, name))
            except UnknownMetricClass as exc:
                unknown.setdefault(message["class"], exc)
        return parts, unknown

    def lookup(self, message: Any, where: Callable[[], str]) -> MetricPart:
        """The template of the metric `message` describes, and its state, checked cheaply: the
        class is registered, the settings build it, the state has the entries it declares, each a
        number or a list (lists are only converted, and so checked, when merged).

        Raises MetricMessageError or UnknownMetricClass, as metric_from_message does, naming
        the message by `where()` (only called on an error).
        """
        if (
            type(message) is dict
            and type(message.get("class")) is str
            and type(message.get("state")) is dict
            and "settings" in message
        ):
            name, settings, state = message["class"], message["settings"], message["state"]
        else:  # the full checks: what is unusual (a Mapping of another type) or wrong
            name, settings, state = _message_parts(message, where())
        template = self._last.get(name)
        if (
            template is None
            or template.settings != settings
            or _by_name.get(name) is not template.cls
        ):
            template = self._find(name, settings, where)
        template.check_state(state, where)
        return template, state

    def _find(self, name: str, settings: Any, where: Callable[[], str]) -> MetricTemplate:
        """The template of (class `name`, `settings`), built if there is none (or a stale one)."""
        try:
            key = (name, frozenset(settings.items()))
        except (AttributeError, TypeError):  # nested lists or maps, or settings that are no map
            key = (name, repr(settings))
        template = self._templates.get(key)
        if template is None or _by_name.get(name) is not template.cls:
            metric = _built(name, settings, where)
            template = MetricTemplate(name, metric_class(name), metric, settings)
            if len(self._templates) >= self.limit:
                self._templates.clear()  # settings that vary without end: start over
            self._templates[key] = template
        self._last[name] = template
        return template

    def __len__(self) -> int:
        return len(self._templates)


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
    "MetricPart",
    "MetricTemplate",
    "MetricTemplates",
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
