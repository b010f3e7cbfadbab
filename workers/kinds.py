"""The worker kinds by name, imported only when asked for (`early-stop` never loads torch).

A kind of your own is one file: a `workers.base.Worker` subclass, named by its import path
("package.module:Class") wherever a kind name goes (`trainer worker`, the config's `workers`).
"""

from __future__ import annotations

import re

from trainer.plugins import import_path, is_import_path
from workers.base import Worker

# A kind's name on the bus: its consumer group, worker names and WORKER_JOINED `kind`.
KIND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

# kind name -> "module:Class", for every name of bus.messages.WORKER_KINDS (the wire's and the
# config's names) and no other; a kind's module is imported by load_kind, never here.
KINDS: dict[str, str] = {
    "metrics": "workers.metrics:MetricsWorker",
    "checkpoint": "workers.checkpoint:CheckpointWorker",
    "tracking": "workers.tracking:TrackingWorker",
    "early-stop": "workers.early_stop:EarlyStopWorker",
    "nan-guard": "workers.nan_guard:NanGuardWorker",
    "budget": "workers.budget:BudgetWorker",
    "pruner": "workers.pruner:PrunerWorker",
}


def load_kind(name: str, where: str = "given on the command line") -> type[Worker]:
    """The Worker class of kind `name`: a name of KINDS or an import path "package.module:Class".

    ValueError (one line) naming `name`, `where` it came from and the fix for an unknown name,
    a module that does not import, a missing attribute or a class that is not a Worker.
    """
    target = KINDS.get(name)
    if target is None and not is_import_path(name):
        raise ValueError(
            f"unknown worker kind {name!r}: use one of {', '.join(KINDS)} "
            f"or an import path 'package.module:Class' ({where})"
        )
    spec = target or name
    cls = import_path(spec, what="worker kind", where=where)
    if not (isinstance(cls, type) and issubclass(cls, Worker)):
        what = "a class" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise ValueError(
            f"worker kind {name!r} ({where}): {spec} is {what}, not a subclass of "
            "workers.base.Worker; derive the class from Worker"
        )
    kind = getattr(cls, "kind", None)
    if target is not None and kind != name:
        raise ValueError(
            f"worker kind {name!r}: {target}.kind is {kind!r}; "
            f"set it to {name!r} so that its consumer group and messages name it"
        )
    if not (isinstance(kind, str) and KIND_NAME.fullmatch(kind)):
        raise ValueError(
            f"worker kind {name!r} ({where}): {spec}.kind is {kind!r}; set the class "
            "attribute kind to the name it has on the bus, e.g. kind = 'memory-guard' "
            "(letters, digits, '-', '_', '.')"
        )
    return cls
