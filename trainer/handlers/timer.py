"""Timer: measure (average) time between engine events, as Ignite's Timer does."""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any

from trainer.events import AnyEvent, Events

if TYPE_CHECKING:
    from trainer.engine import Engine


class Timer:
    """Accumulates running time between ``resume``/``pause`` and counts ``step`` calls.

    ``value()`` is the total running time, or with ``average=True`` the total divided by the
    number of steps. ``step_time()`` is the running time within the last completed step (the
    span between the two latest ``step`` calls), e.g. the last iteration's duration.
    """

    def __init__(self, average: bool = False) -> None:
        self._average = average
        self.reset()

    def attach(
        self,
        engine: Engine,
        start: AnyEvent = Events.STARTED,
        pause: AnyEvent = Events.COMPLETED,
        resume: AnyEvent | None = None,
        step: AnyEvent | None = None,
    ) -> Timer:
        """Reset at ``start``, pause at ``pause``, and resume/step at the optional events."""
        engine.add_event_handler(start, self.reset)
        engine.add_event_handler(pause, self.pause)
        if resume is not None:
            engine.add_event_handler(resume, self.resume)
        if step is not None:
            engine.add_event_handler(step, self.step)
        return self

    def reset(self, *args: Any) -> Timer:
        """Zero the timer and start it running."""
        self._t0 = perf_counter()
        self.total = 0.0
        self.step_count = 0
        self.running = True
        self._total_at_step = 0.0
        self._last_step_time = 0.0
        return self

    def pause(self, *args: Any) -> None:
        """Stop accumulating time (no effect if already paused)."""
        if self.running:
            self.total += perf_counter() - self._t0
            self.running = False

    def resume(self, *args: Any) -> None:
        """Accumulate time again (no effect if already running)."""
        if not self.running:
            self.running = True
            self._t0 = perf_counter()

    def _total_now(self) -> float:
        return self.total + (perf_counter() - self._t0 if self.running else 0.0)

    def step(self, *args: Any) -> None:
        """Count one step and remember the time it took."""
        now = self._total_now()
        self._last_step_time = now - self._total_at_step
        self._total_at_step = now
        self.step_count += 1

    def value(self) -> float:
        """Total running time in seconds, or its average per step with ``average=True``."""
        total = self._total_now()
        return total / max(self.step_count, 1) if self._average else total

    def step_time(self) -> float:
        """Running time in seconds of the last completed step (0.0 before the first)."""
        return self._last_step_time
