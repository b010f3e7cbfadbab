"""Boundaries: where the primary engine obeys the control topic, and only there.

At each ITERATION_COMPLETED (after every user handler) the primary reads one attribute,
`ControlState.pending`; only when it is set does it act: `engine.terminate()` for a decided
stop, a snapshot for a checkpoint request. At each EPOCH_COMPLETED it also serves a request
deferred from the epoch's last iteration and, in barrier mode, waits for the voters' votes on
the epoch and tallies them. A stop requested by the program itself (any other `terminate()`)
is told apart from one the control topic caused, for RUN_FINISHED.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from trainer.bridge.barrier import BarrierResult, epoch_text, wait_for_votes
from trainer.events import Events

if TYPE_CHECKING:
    from trainer.bridge.checkpointer import CheckpointService
    from trainer.bridge.control import ControlState, StopCause
    from trainer.engine import Engine

log = logging.getLogger(__name__)

# After every user handler (validation, checkpointing, early stopping) of the same event.
CONTROL_PRIORITY = -1e9


class Boundaries:
    """Applies what `control` decided at the primary engine's iteration and epoch ends."""

    def __init__(
        self,
        run_id: str,
        control: ControlState,
        *,
        barrier: bool,
        barrier_timeout: float,
        checkpointer: Callable[[], CheckpointService | None],
        before_barrier: Callable[[], None] = lambda: None,
    ) -> None:
        self.run_id = run_id
        self._before_barrier = before_barrier
        self.control = control
        self.barrier = barrier
        self.barrier_timeout = barrier_timeout
        self._checkpointer = checkpointer
        self.barriers: list[BarrierResult] = []
        self.stop_cause: StopCause | None = None  # the control signal that stopped the primary
        self.terminated = False  # the primary fired TERMINATE, whoever asked for it
        self._deferred_request: tuple[str, str] | None = None

    def attach(self, engine: Engine) -> None:
        """Register the boundary handlers on the primary engine."""
        control, serve = self.control, self._serve

        def iteration_boundary(engine: Engine) -> None:
            # The whole per-iteration cost of control: one attribute read.
            if control.pending:
                serve(engine, False)

        engine.add_event_handler(
            Events.ITERATION_COMPLETED, iteration_boundary, priority=CONTROL_PRIORITY
        )
        engine.add_event_handler(
            Events.EPOCH_COMPLETED, self._epoch_boundary, priority=CONTROL_PRIORITY
        )
        engine.add_event_handler(Events.TERMINATE, self._terminated)

    def _terminated(self, engine: Engine) -> None:
        self.terminated = True

    def _epoch_boundary(self, engine: Engine) -> None:
        request, self._deferred_request = self._deferred_request, None
        if request is not None:
            self._checkpoint(engine, request, epoch_end=True)
        if self.barrier and not engine.should_terminate:
            self._before_barrier()
            result = wait_for_votes(
                self.control, engine.state.epoch, self.barrier_timeout, engine.state.max_epochs
            )
            self.barriers.append(result)
            if result.tally.stop:
                self.control.decide_by_tally(result.tally)
        self._serve(engine, True)

    def _serve(self, engine: Engine, epoch_end: bool) -> None:
        """Apply what the control topic asked for: a stop, a checkpoint."""
        control = self.control
        control.pending = False  # cleared before reading: a later signal sets it again
        stop = control.stop
        if stop is not None and self.stop_cause is None and not engine.should_terminate:
            self.stop_cause = stop
            log.info(
                "run %s: stopping in epoch %s, iteration %d (%s from %r: %s)",
                self.run_id,
                epoch_text(engine.state.epoch, engine.state.max_epochs),
                engine.state.iteration,
                stop.signal,
                stop.by,
                stop.reason,
            )
            engine.terminate()
        request = control.take_checkpoint_request()
        if request is None:
            return
        s = engine.state
        if not epoch_end and not engine.should_terminate and s.epoch_iteration == s.epoch_length:
            # The epoch ends right after this iteration: snapshot there, after validation, so
            # that this epoch's metrics score the checkpoint.
            self._deferred_request = request
        else:
            self._checkpoint(engine, request, epoch_end)

    def _checkpoint(self, engine: Engine, request: tuple[str, str], epoch_end: bool) -> None:
        checkpointer = self._checkpointer()
        if checkpointer is None:
            return
        reason, by = request
        taken = checkpointer.take(engine, "requested", epoch_end)
        log.info(
            "run %s: checkpoint requested by %r (%s) %s at iteration %d",
            self.run_id,
            by,
            reason,
            "taken" if taken is not None else "already taken",
            engine.state.iteration,
        )
