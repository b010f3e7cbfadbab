"""The root of every error the trainer package raises, and the tree of them.

Catch `TrainerError` for anything this package refuses; each error also keeps the builtin base
callers caught before there was a root (a `ConfigError` is still a `ValueError`). The errors are
defined next to the code that raises them; this is the whole tree:

    TrainerError
    ├── ConfigError (ValueError) ............ trainer.config: a config that cannot be used
    │   └── SweepSpecError .................. trainer.sweep_spec: a sweep that cannot run
    ├── UsageError (ValueError) ............. trainer.cli.errors: a command line that cannot be used
    ├── ResumeError (ValueError) ............ trainer.run_dir: --resume names nothing usable
    ├── ManifestError (ValueError) .......... trainer.manifest: a missing or unreadable manifest
    ├── CheckpointError ..................... trainer.checkpoint_store: cannot write, read or verify
    │   └── DamagedCheckpoint ............... a truncated or corrupt checkpoint file
    ├── DataExhaustedError (RuntimeError) ... trainer.engine: the data ran out mid-epoch
    ├── NotComputableError (RuntimeError) ... trainer.metrics.base: a metric with no value yet
    ├── UnknownMetricClass (LookupError) .... trainer.metrics.registry: an unregistered metric
    ├── MetricNotPortable (ValueError) ...... trainer.metrics.registry: a state no process can merge
    ├── MetricMessageError (ValueError) ..... trainer.metrics.registry: a bad metric_states entry
    ├── RunNotStarted (RuntimeError) ........ trainer.bridge.lifecycle: an Engine ran outside a run
    ├── DrivenEngineError (RuntimeError) .... trainer.adapters.driven: a driven Engine misused
    ├── MissingFramework (ImportError) ...... trainer.adapters.extras: an adapter's extra is missing
    ├── RankLost (RuntimeError) ............. trainer.cli.launch: another rank of the job was lost
    ├── PluginError (ValueError) ............ trainer.plugins: an import path that imports nothing
    └── TrackingError (RuntimeError) ........ trainer.tracking.errors: cannot write or read a run
        └── RunNotFound (LookupError) ....... no run matches what was asked for

Not errors, so not in the tree: `trainer.cli.launch.RankStopped` is a BaseException, as
KeyboardInterrupt is, so that no `except Exception` swallows a signal to stop. The bus has its
own root (`bus.errors.BusError`) and so have the workers (`workers.errors.WorkerError`).
"""

from __future__ import annotations


class TrainerError(Exception):
    """Something the trainer package refuses or cannot do; the message says what and the fix."""


__all__ = ["TrainerError"]
