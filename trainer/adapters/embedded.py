"""The adapters' embedded default: a run on an in-memory bus with workers beside it.

Without a bus URL a LoopBridge publishes onto an in-memory bus of its own and runs the workers
`trainer run` runs by default (the config schema's `workers`) as tasks in the same process, as
`trainer run CONFIG` does without `--bus`, into a fresh run directory under `runs/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.config_schema import RunSection, TrainerConfig
from trainer.run_dir import CHECKPOINT_DIR, new_run_dir

if TYPE_CHECKING:
    from trainer.bridge import BusRun
    from trainer.cli.embedded import EmbeddedWorkers


def default_workers() -> list[str]:
    """The worker kinds `trainer run` hosts without a bus."""
    return list(TrainerConfig().workers)


def fresh_run_dir(name: str) -> Path:
    """A new run directory `runs/<name>-<timestamp>-<id>` (where `trainer runs` looks)."""
    return new_run_dir(RunSection().dir, name).resolve()


def checkpoint_dir_of(run_dir: Path) -> Path:
    """The checkpoint directory of a run directory, as `trainer run` lays it out."""
    return run_dir / CHECKPOINT_DIR


def start_workers(run: BusRun, kinds: Sequence[str]) -> EmbeddedWorkers:
    """Start one worker of each kind on `run`'s loop; return once each has joined."""
    from trainer.cli.embedded import EmbeddedWorkers

    return EmbeddedWorkers.start(run, list(kinds), namespace=run.namespace)
