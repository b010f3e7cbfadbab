"""A framework's own checkpoints on the bus: requests handed to it, its files announced.

`FrameworkSaves` stands where `trainer.bridge.Checkpointer` stands for our Engine: the run's
boundaries call its `take()` when a CHECKPOINT_REQUEST is to be served (with several ranks, on
every rank at the same step), and it only notes that the framework must save now; the adapter
reads that as `StepDecision.checkpoint`. Scheduled and final checkpoints are the framework's
own business.

`stage()` makes a file the framework wrote known to the checkpoint worker: the worker moves
what a CHECKPOINT_READY names into the run's checkpoint directory, so the READY names a hard
link to the file under `<checkpoint_dir>/.incoming/` (a copy where links cannot be made), and
the framework keeps its own file, its names and its own retention. A folder (Hugging Face's
`checkpoint-<step>/`) is announced the same way, as a folder of links to its files.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.checkpoint_names import INCOMING_DIR
from trainer.checkpoint_tree import checkpoint_digest, link_or_copy, link_tree

if TYPE_CHECKING:
    from trainer.bridge.checkpointer import CheckpointStat
    from trainer.engine import Engine

log = logging.getLogger(__name__)

# CHECKPOINT_READY `reason`s, as the bridge's own Checkpointer says them.
REASONS = ("scheduled", "requested", "final")


class FrameworkSaves:
    """Checkpoint requests agreed at a boundary, waiting for the framework to save."""

    def __init__(self) -> None:
        self.stats: list[CheckpointStat] = []  # the framework's saves are not timed here
        self.requested = False  # a request to serve: the adapter saves, then `served()`

    def attach(self, engine: Engine) -> None:
        """Nothing is scheduled here: the framework schedules its own checkpoints."""

    def prepare(self) -> None:
        """Nothing to allocate: the framework saves."""

    def take(self, engine: Engine, reason: str, epoch_end: bool) -> object | None:
        """Note a requested checkpoint for the framework to save; others are its own."""
        if reason != "requested":
            return None
        self.requested = True
        return reason

    def served(self) -> bool:
        """Whether a request was waiting (it is cleared: the adapter saves now)."""
        waiting, self.requested = self.requested, False
        return waiting

    def wait(self, timeout: float | None = None) -> bool:
        """Nothing is written here."""
        return True

    def close(self, timeout: float | None = None) -> None:
        """Nothing to stop."""


@dataclass(frozen=True)
class Announced:
    """A framework checkpoint file as its CHECKPOINT_READY names it."""

    path: Path  # the link (or copy) under .incoming/ that the checkpoint worker files
    source: Path  # the framework's own file
    directory: Path  # the checkpoint directory it is filed into
    size: int
    sha256: str


def stage(source: str | os.PathLike[str], directory: Path | None, name: str) -> Announced:
    """Put the framework's file or folder `source` where the checkpoint worker takes it from.

    `directory` is the run's checkpoint directory (None: the checkpoint's own directory). A
    folder (Hugging Face's `checkpoint-<step>/`) is announced as a folder of links to its files,
    with `trainer.checkpoint_tree`'s size and sha256. Raises FileNotFoundError naming the path
    when the framework did not write it.
    """
    source = Path(source).resolve()
    if not source.exists():
        raise FileNotFoundError(
            f"checkpoint_ready({str(source)!r}): no such file or folder; announce a checkpoint "
            "after the framework has written it"
        )
    chosen = directory if directory is not None else source.parent
    incoming = chosen / INCOMING_DIR
    incoming.mkdir(parents=True, exist_ok=True)
    # Unique: two announcements of one step (a request and the final one) must not collide.
    unique = f"{name}_{uuid.uuid4().hex[:12]}"
    if source.is_dir():
        target = incoming / unique
        link_tree(source, target)
    else:
        target = incoming / f"{unique}{source.suffix or '.pt'}"
        link_or_copy(source, target)
    size, sha256 = checkpoint_digest(target)
    return Announced(target, source, chosen, size, sha256)


def ready_data(
    announced: Announced,
    *,
    epoch: int,
    iteration: int,
    name: str,
    epoch_end: bool,
    reason: str,
    framework: str | None,
) -> dict[str, Any]:
    """CHECKPOINT_READY's data for an announced file (the catalogue's keys, and the worker's)."""
    return {
        "path": str(announced.path),
        "size": announced.size,
        "sha256": announced.sha256,
        "epoch": epoch,
        "iteration": iteration,
        "dir": str(announced.directory),
        "name": name,
        "epoch_end": epoch_end,
        "reason": reason,
        "framework_path": str(announced.source),
        "framework": framework,
    }
