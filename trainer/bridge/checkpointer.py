"""Checkpointer: snapshots on the training thread, written by one writer thread, announced.

The training thread only copies the state (`snapshot`) and hands it over: with `overlap` (the
default) it copies only what the next step may change before its optimizer step, and a stager
thread copies the parameters and optimizer state meanwhile (trainer.bridge.staging). The writer
thread saves it atomically to `<dir>/.incoming/<name>_<iteration>.pt` (`save_atomic`: temporary
file, fsync, rename; hashed while written), then publishes CHECKPOINT_READY for the checkpoint
worker, which verifies the file and files it into `<dir>`. At most `max_pending` snapshots
wait for the writer; a training thread that outruns the disk waits for room, and that wait is
part of the blocked time recorded in `stats`.

With several ranks every rank takes each checkpoint at the same iteration, because `to_save`
may hold collective objects (`trainer.distributed.DistributedRNGState`) whose `state_dict()`
every rank must call at the same point; only the writing rank (rank 0, `write=True`) copies,
writes and announces it, the others call the `state_dict()`s and drop what they return.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bus.messages import CHECKPOINT_READY
from trainer.bridge.snapshot import Pending, Snapshots
from trainer.bridge.staging import Stager, Staging
from trainer.checkpoint_store import check_stateful, collect_state, save_atomic
from trainer.events import Events

if TYPE_CHECKING:
    from trainer.bridge.sender import Sender
    from trainer.engine import Engine

log = logging.getLogger(__name__)

# After user handlers (validation, in-process early stopping), before the barrier.
CHECKPOINT_PRIORITY = -1e6
INCOMING = ".incoming"
UNITS = ("epoch", "iteration")


class CheckpointService(Protocol):
    """What a run's boundaries need of whatever takes its checkpoints: `Checkpointer` here, a
    framework's own saving in trainer.adapters."""

    stats: list[CheckpointStat]

    def attach(self, engine: Engine) -> None:
        """Take scheduled checkpoints of the primary `engine`."""

    def prepare(self) -> None:
        """Get ready before the run starts."""

    def take(self, engine: Engine, reason: str, epoch_end: bool) -> object | None:
        """Take one now ("scheduled", "requested" or "final"); None if nothing was taken."""

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until what was taken is written; False on timeout."""

    def close(self, timeout: float | None = None) -> None:
        """Finish the writes and stop."""


@dataclass
class CheckpointStat:
    """One checkpoint: what it holds, how long training waited, how the write went."""

    path: str
    epoch: int
    iteration: int
    reason: str  # "scheduled", "requested" or "final"
    epoch_end: bool
    # seconds the training thread spent: the copy, waiting for the writer, and with `overlap`
    # the wait for the stager's copy before the next optimizer step
    blocked: float
    copy: float  # of which copying the state (on the training thread)
    write: float | None = None  # seconds the writer spent (save, fsync, rename); None until done
    size: int | None = None
    sha256: str | None = None
    error: str | None = None  # why the write failed, if it did


@dataclass
class _Job:
    state: dict[str, Any]
    stat: CheckpointStat
    staging: Staging | None = None  # copies still being made off the training thread


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"checkpoint {name} must be a positive int, got {value!r}")
    return value


class Checkpointer:
    """Takes checkpoints of `to_save` for one run and writes them off the training thread."""

    def __init__(
        self,
        sender: Sender,
        to_save: Mapping[str, Any],
        *,
        every: int,
        unit: str,
        directory: Path,
        name: str,
        max_pending: int = 2,
        write: bool = True,
        overlap: bool = True,
    ) -> None:
        if not isinstance(to_save, Mapping) or not to_save:
            raise TypeError(
                f"checkpoint to_save must be a non-empty mapping of name -> object with "
                f"state_dict(), got {to_save!r}"
            )
        check_stateful(to_save, "state_dict")
        if unit not in UNITS:
            raise ValueError(f"checkpoint unit must be one of {UNITS}, got {unit!r}")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(
                f"checkpoint name {name!r} must be a plain file name part (no '/', not hidden)"
            )
        self.sender = sender
        self.to_save = dict(to_save)
        self.every = _positive_int("every", every)
        self.unit = unit
        self.directory = directory
        self.name = name
        self.write = bool(write)  # False: another rank writes; this one only takes part
        self.incoming = directory / INCOMING
        if self.write:
            self.incoming.mkdir(parents=True, exist_ok=True)
        self.stats: list[CheckpointStat] = []
        self.last_iteration: int | None = None
        self._snapshots = Snapshots()
        # Set back to False by the writer if a snapshot was changed while being copied.
        self.overlap = bool(overlap)
        self._stager = Stager()
        self._queue: queue.Queue[_Job | None] = queue.Queue(
            _positive_int("max_pending", max_pending)
        )
        self._pending = 0
        self._idle = threading.Condition()
        self._writer: threading.Thread | None = None
        if self.write:
            self._writer = threading.Thread(
                target=self._write_loop, name="checkpoint-writer", daemon=True
            )
            self._writer.start()

    def attach(self, engine: Engine) -> None:
        """Take scheduled checkpoints every `every` epochs or iterations of `engine`."""
        if self.unit == "epoch":
            event = Events.EPOCH_COMPLETED(every=self.every)
            engine.add_event_handler(event, self._scheduled, True, priority=CHECKPOINT_PRIORITY)
        else:
            event = Events.ITERATION_COMPLETED(every=self.every)
            engine.add_event_handler(event, self._scheduled, False, priority=CHECKPOINT_PRIORITY)

    def prepare(self) -> None:
        """Allocate the snapshot buffers now, before training, so checkpoints only copy.

        A fresh buffer costs the training thread its page faults on top of the copy (about
        three times the copy for a 100 MB model); state created later (e.g. Adam's moments
        after the first step) is allocated by the first checkpoint that holds it.
        """
        if not self.write:
            collect_state(self.to_save)  # the writing rank's take() calls collectives too
            return
        self._snapshots.recycle(self._snapshots.take(self.to_save))

    def _scheduled(self, engine: Engine, epoch_end: bool) -> None:
        self.take(engine, "scheduled", epoch_end)

    def take(self, engine: Engine, reason: str, epoch_end: bool) -> CheckpointStat | None:
        """Snapshot now and queue the write; None if this iteration is already checkpointed
        (or this rank does not write: it only calls the `state_dict()`s)."""
        state = engine.state
        if self.last_iteration == state.iteration:
            log.debug(
                "%s checkpoint at iteration %d skipped: already taken", reason, state.iteration
            )
            return None
        if not self.write:
            collect_state(self.to_save)
            self.last_iteration = state.iteration
            return None
        started = time.perf_counter()
        self._stager.settle()  # the last snapshot's copy, made by now unless no step came since
        pending: list[Pending] = []
        if self.overlap:
            frozen, pending = self._snapshots.take_overlapped(self.to_save)
        else:
            frozen = self._snapshots.take(self.to_save)
        copied = time.perf_counter()
        path = self.incoming / f"{self.name}_{state.iteration}.pt"
        stat = CheckpointStat(
            path=str(path),
            epoch=state.epoch,
            iteration=state.iteration,
            reason=reason,
            epoch_end=epoch_end,
            blocked=0.0,
            copy=copied - started,
        )
        job = _Job(frozen, stat)
        if pending:
            job.staging = self._stager.stage(pending, lambda waited: _add_blocked(stat, waited))
        with self._idle:
            self._pending += 1
        self._queue.put(job)
        _add_blocked(stat, time.perf_counter() - started)
        self.last_iteration = state.iteration
        self.stats.append(stat)
        return stat

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every queued checkpoint is written (or failed); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued writes, then stop the writer thread."""
        self._stager.close()
        self.wait(timeout)
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout)

    # ---- the writer thread ------------------------------------------------------------------

    def _write_loop(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                self._write(job)
            finally:
                # The next snapshot copies into these buffers instead of fresh memory.
                self._snapshots.recycle(job.state)
                job.state = {}
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _write(self, job: _Job) -> None:
        stat = job.stat
        if job.staging is not None and not self._staged(job.staging, stat):
            return
        started = time.perf_counter()
        try:
            saved = save_atomic(job.state, stat.path)
        except Exception as exc:  # a full disk must not kill the writer or training
            stat.error = str(exc)
            log.error(
                "checkpoint at iteration %d was not written: %s; no CHECKPOINT_READY is sent",
                stat.iteration,
                exc,
            )
            return
        stat.write = time.perf_counter() - started
        stat.size, stat.sha256 = saved.size, saved.sha256
        data = {
            "path": str(saved.path),
            "size": saved.size,
            "sha256": saved.sha256,
            "epoch": stat.epoch,
            "iteration": stat.iteration,
            "dir": str(self.directory),
            "name": self.name,
            "epoch_end": stat.epoch_end,
            "reason": stat.reason,
        }
        # Stamped with the snapshot's progress: that is what the file holds.
        env = self.sender.envelope(CHECKPOINT_READY, data, at=(stat.epoch, stat.iteration))
        self.sender.publish(self.sender.events_topic, env)

    def _staged(self, staging: Staging, stat: CheckpointStat) -> bool:
        """Wait for the stager's copies of a snapshot; False (and why, logged) if it is torn."""
        staging.copied.wait()
        if staging.error is None and staging.torn is None:
            return True
        if staging.torn is not None:
            stat.error = (
                f"{staging.torn.owner!r} was changed in place, not by an optimizer step, before "
                f"its copy for the checkpoint at iteration {stat.iteration} was made"
            )
            # The rest of the run copies on the training thread, where nothing can interfere.
            self.overlap = False
        else:
            stat.error = f"copying the state failed: {staging.error!r}"
        log.error(
            "checkpoint at iteration %d was not written: %s; no CHECKPOINT_READY is sent%s",
            stat.iteration,
            stat.error,
            "; later checkpoints are copied on the training thread" if staging.torn else "",
        )
        return False


def _add_blocked(stat: CheckpointStat, seconds: float) -> None:
    stat.blocked += seconds
