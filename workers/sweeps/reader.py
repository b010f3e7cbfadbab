"""Reading a sweep off the bus into a SweepState: tails only, never a group, never an ack.

It follows the registry of sweeps (this sweep's SWEEP_STARTED/FINISHED), the sweep's queue
(which trials there are), its events (which agent runs what, how it ended) and, for each trial
that started, the trial run's events (RUN_STARTED, its figures, RUN_FINISHED). A trial's tail
closes once the trial has ended, so a long sweep holds open reads for its running trials only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from bus import BEGINNING, Bus, DecodeError, Tail, Topics, decode
from bus.codec import peek_type
from bus.messages import EPOCH_COMPLETED, METRICS, RUN_FINISHED, RUN_STARTED
from bus.stream_ids import Key, parse_id
from workers.sweeps.state import SweepState

log = logging.getLogger("workers.sweeps")

# The types of a trial's events the state uses (the rest is passed over undecoded).
_TRIAL_TYPES = frozenset({RUN_STARTED, METRICS, EPOCH_COMPLETED, RUN_FINISHED})
# Seconds a trial's tail reads on after its end (a late METRICS of its last epoch).
LINGER = 1.0


class SweepReader:
    """Keeps `state` up to date from the bus until `close()`; `changed` fires on each change."""

    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        state: SweepState,
        on_change: Callable[[], None] | None = None,
        *,
        block: float = 0.5,
    ) -> None:
        self.bus = bus
        self.topics = topics
        self.state = state
        self.on_change = on_change or (lambda: None)
        self.block = block
        self._tails: list[Tail] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._trial_tails: dict[str, Tail] = {}
        self._closing: set[str] = set()
        self.ready = asyncio.Event()  # set once the sweep's history has been read

    async def start(self) -> None:
        """Start the tails of the sweep's own topics; `ready` is set once they have read what
        the topics held at this moment."""
        sweep_id = self.state.sweep_id
        topics = (
            self.topics.sweeps(),
            self.topics.trials(sweep_id),
            self.topics.sweep_events(sweep_id),
        )
        marks = [parse_id(await self.bus.last_id(topic)) for topic in topics]
        caught_up = [asyncio.Event() for _ in topics]
        for topic, mark, event in zip(topics, marks, caught_up, strict=True):
            self._spawn(self._follow(topic, mark, event))

        async def all_caught_up() -> None:
            for event in caught_up:
                await event.wait()
            self.ready.set()

        self._spawn(all_caught_up())

    async def close(self) -> None:
        """Stop every tail and wait for them."""
        for tail in [*self._tails, *self._trial_tails.values()]:
            tail.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow(self, topic: str, mark: Key, caught_up: asyncio.Event) -> None:
        tail = Tail(self.bus, topic, BEGINNING, block=self.block)
        self._tails.append(tail)
        if mark <= (0, 0):
            caught_up.set()
        async for entry in tail.entries():
            with contextlib.suppress(DecodeError):
                self._observe(decode(entry.payload))
            if parse_id(entry.id) >= mark:
                caught_up.set()

    def _observe(self, env) -> None:  # type: ignore[no-untyped-def]
        if self.state.observe(env):
            self._watch_trials()
            self.on_change()

    def _watch_trials(self) -> None:
        """Tail the events of every trial that started and is not watched yet."""
        for trial in self.state.trials.values():
            run_id = trial.run_id
            if run_id in self._trial_tails and trial.ended and run_id not in self._closing:
                self._closing.add(run_id)
                asyncio.get_running_loop().call_later(LINGER, self._trial_tails[run_id].close)
            if run_id is None or run_id in self._trial_tails or trial.status == "queued":
                continue
            tail = Tail(self.bus, self.topics.events(run_id), BEGINNING, block=self.block)
            self._trial_tails[run_id] = tail
            self._spawn(self._follow_trial(trial.trial, tail))

    async def _follow_trial(self, number: int, tail: Tail) -> None:
        async for entry in tail.entries():
            kind = peek_type(entry.payload)
            if kind is not None and kind not in _TRIAL_TYPES:
                continue
            try:
                env = decode(entry.payload)
            except DecodeError:
                continue
            if self.state.observe(env):
                self.on_change()
