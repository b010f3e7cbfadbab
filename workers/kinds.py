"""The worker kinds by name, imported only when asked for (`early-stop` never loads torch)."""

from __future__ import annotations

import importlib

from workers.base import Worker

# kind name -> "module:Class", for every name of bus.messages.WORKER_KINDS (the wire's and the
# config's names) and no other; a kind's module is imported by load_kind, never here.
KINDS: dict[str, str] = {
    "metrics": "workers.metrics:MetricsWorker",
    "checkpoint": "workers.checkpoint:CheckpointWorker",
    "tracking": "workers.tracking:TrackingWorker",
    "early-stop": "workers.early_stop:EarlyStopWorker",
    "nan-guard": "workers.nan_guard:NanGuardWorker",
    "budget": "workers.budget:BudgetWorker",
}


def load_kind(name: str) -> type[Worker]:
    """Import and return the Worker class of kind `name`; ValueError for an unknown kind."""
    target = KINDS.get(name)
    if target is None:
        raise ValueError(f"unknown worker kind {name!r}: use one of {', '.join(KINDS)}")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Worker)):
        raise TypeError(f"worker kind {name!r}: {target} is not a workers.base.Worker subclass")
    if getattr(cls, "kind", None) != name:
        raise TypeError(
            f"worker kind {name!r}: {target}.kind is {getattr(cls, 'kind', None)!r}; "
            f"set it to {name!r} so that its consumer group and messages name it"
        )
    return cls
