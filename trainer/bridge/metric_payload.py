"""EPOCH_COMPLETED's `metrics` and `metric_states`: an engine's metric values and states.

`metric_states` needs the metric objects by name, which the Engine does not expose: the
`add_metric` registrations are read back from its EPOCH_COMPLETED handlers (see
`attached_metrics`). The message form of one metric's state is `metric_state`, the single
switch point onto `trainer.metrics.registry.metric_state_message`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import bus
from trainer.bridge.outputs import scalar

if TYPE_CHECKING:
    from trainer.engine import Engine

log = logging.getLogger(__name__)

try:
    from trainer.metrics.registry import metric_state_message as _registry_message
except ImportError:  # the metric registry is not there yet: a class name, no settings
    _registry_message = None


def metric_state(metric: Any) -> dict[str, Any]:
    """One metric as `{"class", "settings", "state"}` with msgpack-native values."""
    if _registry_message is not None:
        return _registry_message(metric)
    return {
        "class": type(metric).__name__,
        "settings": {},
        "state": bus.to_native(metric.state_dict()),
    }


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The entries of `state.metrics` that are single numbers, as floats."""
    found = {}
    for name, value in metrics.items():
        number = scalar(value)
        if number is not None:
            found[str(name)] = number
    return found


def attached_metrics(engine: Engine) -> dict[str, Any]:
    """The metrics attached to `engine` with `add_metric`, by the name they were attached under."""
    return engine.metrics


class MetricStates:
    """Builds `metric_states` for one engine, logging once each metric it has to leave out."""

    def __init__(self, split: str) -> None:
        self.split = split
        self._left_out: set[str] = set()

    def __call__(self, engine: Engine) -> dict[str, dict[str, Any]]:
        """`metric_states` of `engine`'s attached metrics, by name."""
        states = {}
        for name, metric in attached_metrics(engine).items():
            try:
                states[name] = metric_state(metric)
            except Exception as exc:  # a metric that cannot travel must not stop training
                self._leave_out(name, exc)
        return states

    def reduced(self, engine: Engine) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
        """`metrics` and `metric_states` of `engine` over every rank's data, all-reduced.

        A collective call: every rank of the process group makes it at the same event. A
        metric that cannot be reduced (alike on every rank) is left out of both, rather than
        published with this rank's own value as if it were the job's.
        """
        from trainer.metrics.distributed import Distributed

        values: dict[str, Any] = dict(engine.state.metrics)
        states = {}
        for name, metric in attached_metrics(engine).items():
            wrapped = metric if isinstance(metric, Distributed) else Distributed(metric)
            try:
                twin = wrapped.reduced()
                value = twin.compute()
            except Exception as exc:
                values.pop(name, None)
                self._leave_out(name, exc)
                continue
            values[name] = value
            if isinstance(value, Mapping):
                values.update(value)  # as the Engine stores a metric computing several values
            try:
                states[name] = metric_state(twin)
            except Exception as exc:
                self._leave_out(name, exc)
        return scalar_metrics(values), states

    def _leave_out(self, name: str, exc: Exception) -> None:
        """Log once per metric that it is left out of metric_states, and why."""
        if name not in self._left_out:
            self._left_out.add(name)
            log.warning(
                "metric %r of split %r is left out of metric_states: %s", name, self.split, exc
            )
