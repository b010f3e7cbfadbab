"""RankBoundaries: the boundaries of one rank among several, where every stop is agreed.

With several ranks a stop (or checkpoint) that only some ranks act on would leave the others
waiting in a collective (DDP's gradient all-reduce, a metric's reduction) forever. So on each
rank every stop request is held back, never acted on at once:

- control: TERMINATE, a vote tally (also a barrier's, in barrier mode), a CHECKPOINT_REQUEST;
- the program: any `engine.terminate()` on the primary (TerminateOnNan, EarlyStopping, a
  handler), taken back at once by the last handler of the event it was called in;

and the ranks agree on them with `trainer.distributed.StopAgreement` at agreement points: every
`every` iterations (ITERATION_COMPLETED of iterations divisible by it) and at every
EPOCH_COMPLETED, after the barrier. On an agreed stop every rank terminates at that same
iteration and takes the cause of the lowest rank that asked to stop, so every rank's
RUN_FINISHED names the same `by` and `reason`; on an agreed checkpoint every rank takes it
(only rank 0 writes it). Iterations that are not agreement points cost one attribute read and a
modulo; the agreement itself is one all-reduce of two int64 flags. At an iteration that is an
agreement point the all-reduce starts in ITERATION_STARTED, with what was held by then, and is
waited for in ITERATION_COMPLETED: it runs while the rank takes its step (a stop asked for
during that step is agreed at the next point); the one at EPOCH_COMPLETED is waited for at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trainer.bridge.barrier import epoch_text, wait_for_votes
from trainer.bridge.boundaries import Boundaries
from trainer.bridge.control import StopCause
from trainer.events import Events

if TYPE_CHECKING:
    from trainer.bridge.checkpointer import CheckpointService
    from trainer.bridge.control import ControlState
    from trainer.distributed import Launched, StopAgreement
    from trainer.engine import Engine

log = logging.getLogger(__name__)

# After every other handler of the event, so that any terminate() of it is seen and held.
RANK_PRIORITY = -math.inf
# The signal of a stop the program asked for (a handler's engine.terminate()).
PROGRAM = "PROGRAM"


class RankBoundaries(Boundaries):
    """Boundaries that act only on what every rank agreed, at the same iteration."""

    def __init__(
        self,
        run_id: str,
        control: ControlState,
        *,
        agreement: StopAgreement,
        every: int,
        rank: int,
        source: str,
        barrier: bool,
        barrier_timeout: float,
        checkpointer: Callable[[], CheckpointService | None],
        before_barrier: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(
            run_id,
            control,
            barrier=barrier,
            barrier_timeout=barrier_timeout,
            checkpointer=checkpointer,
            before_barrier=before_barrier,
        )
        self.agreement = agreement
        self.every = every
        self.rank = rank
        self.source = source
        self._held: dict[str, Any] | None = None  # this rank's stop, until the ranks agree
        self._wanted: tuple[str, str] | None = None  # this rank's checkpoint request, likewise
        self._deferred_checkpoint = False  # agreed at an epoch's last iteration: taken at its end
        self._stopping = False  # a stop was agreed: the terminate() is ours
        self._launched: Launched | None = None  # an agreement under way (launched, not finished)

    def attach(self, engine: Engine) -> None:
        """Register the holding and agreeing handlers on the primary engine."""
        every, hold, launch, settle = self.every, self._hold, self._launch, self._settle

        def iteration_started(engine: Engine) -> None:
            # The per-iteration cost: an attribute read, and a modulo.
            if engine.should_terminate:
                hold(engine)
            if engine.state.iteration % every == 0:
                launch()  # the all-reduce runs during this iteration's step

        def iteration_completed(engine: Engine) -> None:
            if engine.should_terminate:
                hold(engine)  # agreed at the next point
            if self._launched is not None:
                settle(engine, False)

        def held_back(engine: Engine) -> None:
            if engine.should_terminate:
                hold(engine)

        on = engine.add_event_handler
        on(Events.STARTED, self._started, priority=RANK_PRIORITY)
        # Held back in ITERATION_STARTED too: the step must still run on this rank (its
        # collectives wait for it on the others) until every rank stops.
        on(Events.EPOCH_STARTED, held_back, priority=RANK_PRIORITY)
        on(Events.ITERATION_STARTED, iteration_started, priority=RANK_PRIORITY)
        on(Events.ITERATION_COMPLETED, iteration_completed, priority=RANK_PRIORITY)
        on(Events.EPOCH_COMPLETED, self._epoch_boundary, priority=RANK_PRIORITY)
        on(Events.COMPLETED, self._finish_launched, priority=RANK_PRIORITY)
        on(Events.TERMINATE, self._terminated)

    def _started(self, engine: Engine) -> None:
        self._launched = None
        self._stopping = False
        self._deferred_checkpoint = False
        if engine.should_terminate:
            self._hold(engine)

    def _hold(self, engine: Engine) -> None:
        """Take back a terminate() nobody agreed on yet; it is this rank's request now."""
        if self._stopping:
            return
        if self._held is None:
            said = engine.stop_reason or "terminated by the program"
            self._held = {
                "signal": PROGRAM,
                "reason": f"{said} on rank {self.rank}",
                "by": self.source,
            }
            log.info(
                "run %s: rank %d asks to stop (its program called terminate() at iteration %d); "
                "held until the ranks agree",
                self.run_id,
                self.rank,
                engine.state.iteration,
            )
        engine.withdraw_stop()

    def _epoch_boundary(self, engine: Engine) -> None:
        if engine.should_terminate:
            self._hold(engine)
        if self.barrier and self._held is None:
            self._before_barrier()
            result = wait_for_votes(
                self.control, engine.state.epoch, self.barrier_timeout, engine.state.max_epochs
            )
            self.barriers.append(result)
            if result.tally.stop:
                self.control.decide_by_tally(result.tally)
        self._agree(engine, True)

    def _finish_launched(self, engine: Engine) -> None:
        """Finish an agreement whose ITERATION_COMPLETED never came (the loop broke off)."""
        if self._launched is not None:
            self._settle(engine, False)

    def _agree(self, engine: Engine, epoch_end: bool) -> None:
        """Collective: agree with the other ranks on a stop and a checkpoint, then act."""
        self._finish_launched(engine)
        self._launch()
        self._settle(engine, epoch_end)

    def _launch(self) -> None:
        """Collective, started: this rank's held stop and checkpoint wish, as of now."""
        control = self.control
        if control.pending:
            control.pending = False  # cleared before reading: a later signal sets it again
            stop = control.stop
            if stop is not None and self._held is None:
                self._held = {
                    "signal": stop.signal,
                    "reason": stop.reason,
                    "by": stop.by,
                    "voter": stop.voter,
                }
            request = control.take_checkpoint_request()
            if request is not None:
                self._wanted = request
        self._launched = self.agreement.launch(self._held, self._wanted is not None)
        self._wanted = None

    def _settle(self, engine: Engine, epoch_end: bool) -> None:
        """Collective: wait for the launched agreement, then act on it."""
        launched, self._launched = self._launched, None
        assert launched is not None
        agreed = self.agreement.finish(launched)
        if agreed.stop and not self._stopping:
            cause = agreed.cause or {}
            self.stop_cause = StopCause(
                str(cause.get("signal", PROGRAM)),
                str(cause.get("reason", "")),
                cause.get("by"),
                voter=cause.get("voter"),
            )
            self._held = None
            self._stopping = True
            log.info(
                "run %s: all ranks stop in epoch %s, iteration %d (%s from %r on rank %s: %s)",
                self.run_id,
                epoch_text(engine.state.epoch, engine.state.max_epochs),
                engine.state.iteration,
                self.stop_cause.signal,
                self.stop_cause.by,
                cause.get("rank"),
                self.stop_cause.reason,
            )
            engine.terminate()
        if not (agreed.checkpoint or (epoch_end and self._deferred_checkpoint)):
            return
        s = engine.state
        if not epoch_end and not agreed.stop and s.epoch_iteration == s.epoch_length:
            # As with one rank: the epoch ends right after this iteration, so snapshot there,
            # after validation, so that this epoch's metrics score the checkpoint.
            self._deferred_checkpoint = True
            return
        self._deferred_checkpoint = False
        checkpointer = self._checkpointer()
        if checkpointer is not None:
            checkpointer.take(engine, "requested", epoch_end)
            log.info(
                "run %s: checkpoint agreed by the ranks at iteration %d",
                self.run_id,
                s.iteration,
            )
