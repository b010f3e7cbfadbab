"""DrivenEngine: an Engine whose events another framework's loop fires, one at a time.

The bridge (`trainer.bridge.BusRun`) publishes an Engine and obeys control through handlers it
attaches to it. A DrivenEngine takes those handlers like any Engine, but never runs a loop of
its own: an adapter sets its state from the framework's (epoch, iteration, outputs, metrics)
and fires each event when the framework reaches it. The bridge's `engine.terminate()` only
raises `should_terminate`; the adapter turns that into the framework's own stop.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from trainer.engine import Engine
from trainer.errors import TrainerError
from trainer.events import EventEnum, Events
from trainer.state import State


class DrivenEngineError(TrainerError, RuntimeError):
    """A DrivenEngine was asked to run a loop, or a handler of it is async."""


def _no_process(engine: Engine, batch: Any) -> Any:
    raise DrivenEngineError("a DrivenEngine processes no batch: its framework's loop does")


def _handled_by_the_framework(engine: Engine, exc: BaseException) -> None:
    """The framework raises its own exceptions; the bridge only publishes them."""


class DrivenEngine(Engine):
    """An Engine fired from outside: `fire(event)` runs its handlers now, synchronously."""

    def __init__(self) -> None:
        super().__init__(_no_process)
        # With a handler of its own for EXCEPTION_RAISED the bridge's does not raise the
        # exception again: the framework raises it (and the adapter ends the run).
        self.add_event_handler(Events.EXCEPTION_RAISED, _handled_by_the_framework)

    def fire(self, event: EventEnum, *args: Any) -> None:
        """Run the handlers of `event` now, in order (the bridge's handlers are all sync)."""
        self._fired[event] = self._fired.get(event, 0) + 1
        for invoke in self._invokers[event]:
            result = invoke(self, *args)
            if result is not None and inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise DrivenEngineError(
                    f"a handler of {event} on a DrivenEngine is async; attach only plain "
                    "functions to it (its framework's loop is not awaited)"
                )

    def restart(self, max_epochs: int | None, epoch_length: int | None) -> State:
        """A fresh State for a new run of this split (an evaluation, say); returned."""
        self.state = State()
        self.state.max_epochs = max_epochs
        self.state.epoch_length = epoch_length
        self._epochs_completed = 0
        self._fired.clear()
        self.should_terminate = self.should_terminate_single_epoch = False
        self.stop_reason = None
        self._stop_requested = False
        return self.state

    def epoch_done(self, metrics: Mapping[str, Any], objects: Mapping[str, Any]) -> None:
        """Record an epoch's end: its metric values, and the metric objects behind the states."""
        self._epochs_completed = self.state.epoch + 1
        self.state.metrics = dict(metrics)
        # What trainer.bridge.metric_payload reads for `metric_states` (as add_metric's).
        self._metrics = dict(objects)

    def run(
        self, data: Iterable[Any], max_epochs: int | None = None, epoch_length: int | None = None
    ) -> State:
        """Refused: the framework runs the loop."""
        raise DrivenEngineError(
            "DrivenEngine.run(): this engine is driven by an adapter's framework loop; run "
            "that loop (trainer.adapters) instead"
        )

    async def arun(
        self, data: Iterable[Any], max_epochs: int | None = None, epoch_length: int | None = None
    ) -> State:
        """Refused: the framework runs the loop."""
        self.run(data, max_epochs, epoch_length)
        raise AssertionError("unreachable")
