"""Ignite's own checkpoints on the bus: the user's `Checkpoint` saves announced, requests served.

A `Checkpoint` fires `CheckpointEvents.SAVED_CHECKPOINT` on the engine it is attached to after
each save; `IgniteSaves.announce_new` (a handler of that event) announces every file it has not
announced yet with CHECKPOINT_READY, read from the handler's public `state_dict()`.
A CHECKPOINT_REQUEST is served by a second `Checkpoint` over the same objects and the same
`DiskSaver`, named `requested_...` and never pruned, so the user's own retention and best-score
rule are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.adapters.extras import require

if TYPE_CHECKING:
    from trainer.adapters.core import LoopBridge

_handlers = require(
    "ignite.handlers", adapter="trainer.adapters.ignite", framework="PyTorch Ignite", extra="ignite"
)
Checkpoint, DiskSaver = _handlers.Checkpoint, _handlers.DiskSaver

log = logging.getLogger(__name__)

# Where requested checkpoints of a `to_save` without a Checkpoint go, under the checkpoint dir.
OWN_DIR = "ignite"
REQUESTED_PREFIX = "requested"


def _iteration(engine: Any, event: Any) -> int:
    """A requested checkpoint's global step: the trainer's iteration."""
    return int(engine.state.iteration)


def _saved_files(checkpoint: Any) -> list[str]:
    """The file names a Checkpoint keeps now (its public state_dict), in its own order."""
    state = checkpoint.state_dict()
    # (priority, filename) pairs, under "_saved" since Ignite 0.5 ("saved" before).
    items = state.get("_saved", state.get("saved", []))
    return [str(item[1]) for item in items]


class IgniteSaves:
    """Announces the user's Checkpoint files; saves requested ones with Ignite's Checkpoint."""

    def __init__(
        self,
        bridge: LoopBridge,
        trainer: Any,
        checkpoints: list[Any],
        to_save: Mapping[str, Any] | None,
        directory: Path | None,
    ) -> None:
        self.bridge = bridge
        self.trainer = trainer
        self.checkpoints = checkpoints
        self._announced: dict[int, set[str]] = {
            id(c): set(_saved_files(c)) for c in checkpoints
        }  # files saved before the run are not this run's
        self._warned: set[int] = set()
        self.requested = self._requested(to_save, directory)

    @property
    def can_serve_requests(self) -> bool:
        """Whether a CHECKPOINT_REQUEST can be saved (a Checkpoint or to_save was given)."""
        return self.requested is not None

    def _requested(self, to_save: Mapping[str, Any] | None, directory: Path | None) -> Any:
        """The Checkpoint that serves requests: the user's objects and DiskSaver, kept all."""
        saver: Any = None
        for checkpoint in self.checkpoints:
            if isinstance(checkpoint.save_handler, DiskSaver):
                saver = checkpoint.save_handler
                to_save = to_save if to_save is not None else checkpoint.to_save
                break
        if to_save is None:
            return None
        if saver is None:
            if directory is None:
                raise ValueError(
                    "attach_bus(to_save=...) needs a directory for the checkpoints it saves on "
                    "request: pass checkpoint_dir=, or a Checkpoint with a DiskSaver"
                )
            saver = DiskSaver(str(directory / OWN_DIR), create_dir=True, require_empty=False)
        return Checkpoint(
            dict(to_save),
            saver,
            filename_prefix=REQUESTED_PREFIX,
            n_saved=None,
            global_step_transform=_iteration,
        )

    def save_requested(self, engine: Any) -> None:
        """Save a checkpoint now, as asked on the bus, and announce it."""
        if self.requested is None:
            return
        self.requested(engine)
        files = _saved_files(self.requested)
        if files:
            path = Path(self.requested.save_handler.dirname) / files[-1]
            self._announce(path, "requested")

    def announce_new(self, engine: Any) -> None:
        """Handler of SAVED_CHECKPOINT: announce the files the user's Checkpoints just saved."""
        for checkpoint in self.checkpoints:
            announced = self._announced[id(checkpoint)]
            files = _saved_files(checkpoint)
            new = [name for name in files if name not in announced]
            announced.intersection_update(files)  # pruned names may come back later
            if not new:
                continue
            announced.update(new)
            if not isinstance(checkpoint.save_handler, DiskSaver):
                if id(checkpoint) not in self._warned:
                    self._warned.add(id(checkpoint))
                    log.warning(
                        "Checkpoint %r does not save to disk (save_handler %r): its files are "
                        "not announced on the bus",
                        checkpoint,
                        checkpoint.save_handler,
                    )
                continue
            for name in new:
                self._announce(Path(checkpoint.save_handler.dirname) / name, "scheduled")

    def _announce(self, path: Path, reason: str) -> None:
        if not path.exists():  # another rank's DiskSaver (save_on_rank) wrote it, not this one
            return
        state = self.trainer.state
        length = state.epoch_length
        # Between two epochs of the trainer (e.g. saved after validation): that epoch's
        # metrics score it.
        epoch_end = bool(length) and state.iteration > 0 and state.iteration % length == 0
        self.bridge.checkpoint_ready(path, reason=reason, epoch_end=epoch_end)
