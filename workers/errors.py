"""The root of every error the workers package raises, and the tree of them.

Catch `WorkerError` for anything a worker, the monitor or the web view refuses; each error also
keeps the builtin base callers caught before there was a root. The errors are defined next to the
code that raises them; this is the whole tree:

    WorkerError
    ├── MonitorError ........................ workers.monitor.errors: the monitor cannot start
    │   ├── RunNotOnBus ..................... the run is neither on the registry nor has topics
    │   └── BusUnreachable .................. the bus cannot be reached or refuses the monitor
    ├── WebError ............................ workers.web.errors: the web view cannot start
    ├── BadReason (ValueError) .............. workers.web.stop: a stop reason that cannot be sent
    ├── VerificationError ................... workers.checkpoint_files: a file unlike its READY
    └── SamplerUnavailable (ImportError) .... workers.sweeps.sampler: Optuna is not installed

Not errors, so not in the tree: `workers.base.WorkerStopping` tells the runtime that a kind gave
up waiting because the worker stops (the delivery stays pending), and the monitor's private
`_Stopped` ends a wait for the bus. The workers' own root and not `trainer.errors.TrainerError`:
a worker is a separate service, and its errors are about the bus and its runs, not about a
training process. The bus has its own root too (`bus.errors.BusError`).
"""

from __future__ import annotations


class WorkerError(Exception):
    """Something a worker, the monitor or the web view refuses; the message says what and why."""


__all__ = ["WorkerError"]
