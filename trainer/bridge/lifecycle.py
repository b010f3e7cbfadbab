"""EngineLink: one attached engine's lifecycle events as envelopes on the run's events topic.

Handlers run at PUBLISH_PRIORITY: after the Engine's metrics (infinite priority) and before
user handlers, so the envelope of an event is queued before anything a user handler does in
that event (a validation run, a barrier) and carries this epoch's metrics.
ITERATION_COMPLETED is published every `publish_every` iterations of the engine, coalescing
the ones in between (mean of the scalar outputs, and their `count`); a window left open at
the end of an epoch, a stop or an exception is published before that event's envelope.

Custom events registered on the engine are published under their member name, also those
registered after `attach`: the engine's events are looked at again at every STARTED and
EPOCH_STARTED, so an event registered in the middle of an epoch is published from the next
epoch on.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bus import EnvelopeTooLarge
from bus.messages import (
    COMPLETED,
    EPOCH_COMPLETED,
    EPOCH_STARTED,
    EXCEPTION_RAISED,
    ITERATION_COMPLETED,
    STARTED,
    TERMINATE,
)
from trainer.bridge.metric_payload import MetricStates, scalar_metrics
from trainer.bridge.outputs import OutputWindow, Probes, scalar_outputs
from trainer.errors import TrainerError
from trainer.events import EventEnum, Events

if TYPE_CHECKING:
    from trainer.bridge.sender import Sender
    from trainer.engine import Engine

log = logging.getLogger(__name__)

# After the Engine's metrics (math.inf), before any user handler at an ordinary priority.
PUBLISH_PRIORITY = 1e9
# A traceback longer than this is cut in the middle: the envelope must stay far below 1 MiB.
MAX_TRACEBACK = 64 * 1024

ExceptionHook = Callable[["Engine", BaseException], None]


class RunNotStarted(TrainerError, RuntimeError):
    """An attached engine ran outside the run's start() ... finish()."""


def _traceback_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(text) > MAX_TRACEBACK:
        half = MAX_TRACEBACK // 2
        text = (
            f"{text[:half]}\n... [{len(text) - MAX_TRACEBACK} characters cut] ...\n{text[-half:]}"
        )
    return text


def custom_events(engine: Engine) -> set[EventEnum]:
    """The events registered with `register_events`."""
    return set(engine.custom_events)


class EngineLink:
    """Publishes the lifecycle of `engine` under `split` through `sender`."""

    def __init__(
        self,
        engine: Engine,
        split: str,
        sender: Sender,
        publish_every: int,
        *,
        rank: int,
        world_size: int,
        before_run: Callable[[], None],
        on_exception: ExceptionHook | None = None,
        reduce: bool = False,
        probes: Probes | None = None,
    ) -> None:
        self.engine = engine
        self.split = split
        self.sender = sender
        self.publish_every = publish_every
        self.rank = rank
        self.world_size = world_size
        self._before_run = before_run
        self._on_exception = on_exception
        # EPOCH_COMPLETED carries the metrics of every rank's data, all-reduced (a collective
        # at each of the engine's EPOCH_COMPLETED): ranks that do not share a bus.
        self.reduce = reduce
        self.probes = probes  # read into each published ITERATION_COMPLETED's outputs
        self._window = OutputWindow()
        self._metric_states = MetricStates(split)
        self._custom: set[EventEnum] = set()

    def attach(self) -> None:
        """Register the publishing handlers on the engine."""
        on = self.engine.add_event_handler
        p = PUBLISH_PRIORITY
        on(Events.STARTED, self._started, priority=p)
        on(Events.EPOCH_STARTED, self._epoch_started, priority=p)
        on(Events.ITERATION_COMPLETED, self._iteration_handler(), priority=p)
        on(Events.EPOCH_COMPLETED, self._epoch_completed, priority=p)
        on(Events.COMPLETED, self._completed, priority=p)
        on(Events.TERMINATE, self._terminate, priority=p)
        on(Events.EXCEPTION_RAISED, self._exception_raised, priority=p)
        self.sync_custom_events()

    def sync_custom_events(self) -> None:
        """Publish custom events registered on the engine since the last call too."""
        for event in custom_events(self.engine) - self._custom:
            self.engine.add_event_handler(
                event, self._custom_event, event.name, priority=PUBLISH_PRIORITY
            )
            self._custom.add(event)

    # ---- handlers ---------------------------------------------------------------------------

    def _started(self, engine: Engine) -> None:
        self._before_run()
        self.sync_custom_events()
        self._window.clear()
        self.sender.send(STARTED, {"split": self.split})

    def _epoch_started(self, engine: Engine) -> None:
        # Events registered in the middle of a run are picked up here at the latest.
        self.sync_custom_events()
        self.sender.send(EPOCH_STARTED, {"split": self.split})

    def _iteration_handler(self) -> Callable[[Engine], None]:
        """The ITERATION_COMPLETED handler: the hot path, so built for `publish_every`."""
        send, split, every, probes = (
            self.sender.send_later,
            self.split,
            self.publish_every,
            self.probes,
        )
        if every == 1 and probes is not None:

            def publish_each_probed(engine: Engine) -> None:
                outputs = scalar_outputs(engine.state.output)
                outputs.update(probes.read(engine))
                send("ITERATION_COMPLETED", {"split": split, "outputs": outputs, "count": 1})

            return publish_each_probed
        if every == 1:

            def publish_each(engine: Engine) -> None:
                send(
                    ITERATION_COMPLETED,
                    {"split": split, "outputs": scalar_outputs(engine.state.output), "count": 1},
                )

            return publish_each

        window = self._window
        flush = self._flush

        def coalesce(engine: Engine) -> None:
            state = engine.state
            window.add(state.output)
            if state.iteration % every == 0 or state.epoch_iteration == state.epoch_length:
                flush()

        return coalesce

    def _flush(self) -> None:
        """Publish the coalesced window, if it holds any iteration."""
        if self._window.count:
            outputs, count = self._window.drain()
            if self.probes is not None:
                outputs.update(self.probes.read(self.engine))
            self.sender.send_later(
                ITERATION_COMPLETED, {"split": self.split, "outputs": outputs, "count": count}
            )

    def _epoch_completed(self, engine: Engine) -> None:
        self._flush()
        if self.reduce:
            metrics, states = self._metric_states.reduced(engine)
        else:
            metrics, states = scalar_metrics(engine.state.metrics), self._metric_states(engine)
        data: dict[str, Any] = {
            "split": self.split,
            "metrics": metrics,
            "metric_states": states,
            "rank": self.rank,
            "world_size": self.world_size,
        }
        try:
            self.sender.send(EPOCH_COMPLETED, data)
        except EnvelopeTooLarge as exc:
            # Huge metric states (a confusion matrix over many classes) must not cost the
            # event itself: publish it without them and say which were dropped.
            log.warning(
                "EPOCH_COMPLETED of split %r sent without metric_states: %s", self.split, exc
            )
            dropped = sorted(data["metric_states"])
            self.sender.send(
                EPOCH_COMPLETED, {**data, "metric_states": {}, "metric_states_dropped": dropped}
            )
        self.sender.epoch_ended()

    def _completed(self, engine: Engine) -> None:
        self._flush()
        self.sender.send(COMPLETED, {"split": self.split})

    def _terminate(self, engine: Engine) -> None:
        self._flush()
        self.sender.send(TERMINATE, {"split": self.split})

    def _custom_event(self, engine: Engine, name: str) -> None:
        self.sender.send(name, {"split": self.split})

    def _exception_raised(self, engine: Engine, exc: BaseException) -> None:
        if isinstance(exc, RunNotStarted):
            raise exc  # nothing of this run may be published before its start or after its end
        self._flush()
        self.sender.send(
            EXCEPTION_RAISED,
            {
                "split": self.split,
                "error_type": type(exc).__name__,
                "message": str(exc),
                "traceback": _traceback_text(exc),
            },
        )
        if self._on_exception is not None:
            self._on_exception(engine, exc)
        # Having a handler for EXCEPTION_RAISED tells the Engine the exception is handled.
        # Unless the user registered handlers of their own, it was not: raise it on.
        others = [
            h for h in engine.handlers(Events.EXCEPTION_RAISED) if h != self._exception_raised
        ]
        if not others:
            raise exc
