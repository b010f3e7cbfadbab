"""Reading the bus for the web view: the registry of runs, and each watched run's topics.

Everything is read as tails (bus.Tail): never a consumer group, never an ack, so the page
disturbs no worker. A RunWatch reads a run's events, control and dead-letter topics from their
beginning into a MonitorState with the monitor's own reader and state model
(`workers.monitor.run_reader`) and keeps the run's metric points with their events-stream
entry ids: a browser that reconnects with `Last-Event-ID` is sent the
points after that id, so it misses none. LiveRuns follows the registry, keeps a watch on each
running run (for the runs list's progress) and on each run a page looks at, and tells whether
the bus answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bus import BEGINNING, Bus, BusError, Envelope, InvalidTopic, Tail, Topics
from bus.messages import EPOCH_COMPLETED, METRICS, RUN_FINISHED, RUN_STARTED
from bus.stream_ids import Key, parse_id
from workers.monitor.run_reader import HISTORY_BATCH, RunItem, RunReader
from workers.monitor.state import EVENTS, MonitorState
from workers.web.options import WebOptions

log = logging.getLogger("workers.web")

# Seconds between two probes of the bus, and the most one probe waits.
HEALTH_EVERY = 2.0
# Seconds between two looks for watches nobody uses any more.
REAP_EVERY = 5.0
# Only the lowest rank's own epoch metrics make points, as in MonitorState.
PRIMARY_SOURCE = "trainer:0"


class Signal:
    """Wakes every subscriber when something changed: one asyncio.Event per subscriber."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()

    def subscribe(self) -> asyncio.Event:
        """A new event that `fire` sets; clear it before looking at what changed."""
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        return waiter

    def unsubscribe(self, waiter: asyncio.Event) -> None:
        """Stop waking `waiter`."""
        self._waiters.discard(waiter)

    def fire(self) -> None:
        """Wake every subscriber."""
        for waiter in self._waiters:
            waiter.set()


@dataclass(frozen=True)
class Point:
    """One epoch's metric values of one split, as an events-stream entry carried them."""

    id: str  # the entry id on the run's events stream: the SSE event id
    key: Key
    kind: str  # METRICS (the aggregator's) or EPOCH_COMPLETED (the trainer's own)
    split: str
    x: int  # the epoch, counted from 1 as people count (the bus carries it from 0)
    values: dict[str, float]
    ts: float

    def as_json(self) -> dict[str, Any]:
        """The point as the page receives it."""
        return {
            "id": self.id,
            "kind": self.kind,
            "split": self.split,
            "x": self.x,
            "values": self.values,
            "ts": self.ts,
        }


def _scalars(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        return {}
    out = {}
    for name, number in value.items():
        if (
            isinstance(name, str)
            and isinstance(number, (int, float))
            and not isinstance(number, bool)
        ):
            out[name] = float(number)
    return out


def point_of(entry_id: str, env: Envelope) -> Point | None:
    """The metric point an events envelope carries: a final METRICS, or rank 0's EPOCH_COMPLETED."""
    data = env.data
    split = data.get("split")
    if not isinstance(split, str):
        return None
    if env.type == METRICS and not data.get("running"):
        epoch = data.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            return None
        values = _scalars(data.get("values"))
    elif env.type == EPOCH_COMPLETED and env.source == PRIMARY_SOURCE:
        epoch, values = env.epoch, _scalars(data.get("metrics"))
    else:
        return None
    if not values:
        return None
    ts = env.ts if isinstance(env.ts, (int, float)) and math.isfinite(env.ts) else 0.0
    return Point(entry_id, parse_id(entry_id), env.type, split, epoch + 1, values, ts)


def _report_failure(task: asyncio.Task[None]) -> None:
    """Log why a reading task ended, if it failed (a tail retries an unreachable bus itself, so
    this is a refusal such as a wrong password, which no retry mends)."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s stopped: %s", task.get_name(), " ".join(str(task.exception()).split()))


class RunWatch:
    """One run's topics read into a MonitorState, with its metric points in stream order."""

    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        run_id: str,
        block: float = 1.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.bus = bus
        self.on_change = on_change
        self.run_id = run_id
        self.block = block
        self.state = MonitorState(run_id, topics.namespace)
        self.reader = RunReader(
            bus,
            topics,
            run_id,
            keep=self.state.concerns,
            on_bad=self.state.note_undecodable,
            block=block,
        )
        self.points: list[Point] = []
        self._keys: list[Key] = []
        self.ready = asyncio.Event()  # set once every topic's history has been read
        self.changed = Signal()  # any envelope taken in
        self.new_points = Signal()  # a metric point among them
        self.version = 0  # counts the envelopes taken in
        self.subscribers = 0
        self.last_used = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> RunWatch:
        """Start reading (history, then live) in a task of the running loop."""
        self._task = asyncio.create_task(self._run(), name=f"web:watch:{self.run_id}")
        self._task.add_done_callback(_report_failure)
        return self

    async def close(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, BusError):
                await self._task

    def points_after(self, after: str | None) -> list[Point]:
        """The points whose entry ids follow `after` (all of them for None)."""
        if after is None:
            return list(self.points)
        return self.points[bisect_right(self._keys, parse_id(after)) :]

    async def _run(self) -> None:
        for item in await self.reader.history():
            self._take(item, fire=False)
        self.ready.set()
        self._fire()
        async with contextlib.aclosing(self.reader.follow()) as items:
            async for item in items:
                self._take(item, fire=True)

    def _take(self, item: RunItem, fire: bool) -> None:
        self.state.feed(item.kind, item.env)
        if item.kind == EVENTS:
            point = point_of(item.entry_id, item.env)
            if point is not None and (not self._keys or point.key > self._keys[-1]):
                self.points.append(point)
                self._keys.append(point.key)
                if fire:
                    self.new_points.fire()
        self.version += 1
        if fire:
            self._fire()

    def _fire(self) -> None:
        self.changed.fire()
        if self.on_change is not None:
            self.on_change()


class LiveRuns:
    """The registry of runs, a watch per running or viewed run, and whether the bus answers."""

    def __init__(self, bus: Bus, options: WebOptions) -> None:
        self.bus = bus
        self.options = options
        self.topics = Topics(options.namespace)
        self.registry: dict[str, MonitorState] = {}  # by run id, oldest announcement first
        self.registry_ready = asyncio.Event()
        self.watches: dict[str, RunWatch] = {}
        self.changed = Signal()  # the registry or a watched run moved
        self.bus_ok: bool | None = None  # None until the first probe answered or failed
        self.bus_problem: str | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start following the registry, probing the bus and retiring unused watches."""
        for name, make in (
            ("registry", self._follow_registry),
            ("health", self._probe),
            ("reaper", self._reap),
        ):
            task = asyncio.create_task(make(), name=f"web:{name}")
            task.add_done_callback(_report_failure)
            self._tasks.append(task)

    async def close(self) -> None:
        """Stop every task and watch."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(w.close() for w in self.watches.values()), return_exceptions=True)
        self.watches.clear()

    # -- runs ------------------------------------------------------------------------------

    def watch(self, run_id: str) -> RunWatch:
        """The watch of `run_id`, started now if there was none."""
        found = self.watches.get(run_id)
        if found is None:
            # A watched run that moves changes the runs list too.
            found = self.watches[run_id] = RunWatch(
                self.bus, self.topics, run_id, self.options.block, on_change=self.changed.fire
            ).start()
        found.last_used = time.monotonic()
        return found

    async def on_bus(self, run_id: str, timeout: float = HEALTH_EVERY) -> bool:
        """Whether the bus knows run `run_id`: announced in the registry, or events on its topic."""
        if run_id in self.registry:
            return True
        if self.bus_ok is False:
            return False
        try:
            events = self.topics.events(run_id)
        except InvalidTopic:
            return False
        try:
            return await asyncio.wait_for(self.bus.length(events), timeout) > 0
        except (BusError, OSError, asyncio.TimeoutError):
            return False

    def running(self) -> list[str]:
        """Ids of the registry's runs that have not finished, newest announcement first."""
        return [i for i, s in reversed(self.registry.items()) if not s.finished]

    # -- tasks -----------------------------------------------------------------------------

    async def _follow_registry(self) -> None:
        registry = self.topics.registry()
        history = Tail(self.bus, registry, BEGINNING, follow=False, batch=HISTORY_BATCH)
        async for env in history:
            self._announce(env, fire=False)
        self.registry_ready.set()
        self._watch_running()
        self.changed.fire()
        live = Tail(self.bus, registry, history.last_id or BEGINNING, block=self.options.block)
        async for env in live:
            self._announce(env, fire=True)

    def _announce(self, env: Envelope, fire: bool) -> None:
        if env.type not in (RUN_STARTED, RUN_FINISHED):
            return
        state = self.registry.get(env.run_id)
        if state is None or env.type == RUN_STARTED:
            if state is None:
                state = MonitorState(env.run_id, self.options.namespace)
            self.registry.pop(env.run_id, None)  # a resumed run moves to the newest end
            self.registry[env.run_id] = state
        state.feed(EVENTS, env)
        if fire:
            self._watch_running()
            self.changed.fire()

    def _watch_running(self) -> None:
        for run_id in self.running()[: self.options.max_watched]:
            self.watch(run_id)

    async def _probe(self) -> None:
        registry = self.topics.registry()
        while True:
            try:
                await asyncio.wait_for(self.bus.length(registry), HEALTH_EVERY)
                ok, problem = True, None
            except (BusError, OSError, asyncio.TimeoutError) as exc:
                ok, problem = False, " ".join(str(exc).split()) or "no answer in time"
            if ok != self.bus_ok:
                # Unreachable from the start is what `trainer web` said already when starting.
                if not ok and self.bus_ok is not None:
                    log.warning(
                        "cannot reach the bus at %s: %s; showing what was read and the tracking "
                        "store until it answers",
                        self.options.shown_url,
                        problem,
                    )
                elif self.bus_ok is False:
                    log.warning("the bus at %s answers again", self.options.shown_url)
                self.bus_ok, self.bus_problem = ok, problem
                self.changed.fire()
            await asyncio.sleep(HEALTH_EVERY)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_EVERY)
            followed = set(self.running()[: self.options.max_watched])
            now = time.monotonic()
            for run_id, watch in list(self.watches.items()):
                idle = now - watch.last_used > self.options.idle_seconds
                if watch.subscribers == 0 and idle and run_id not in followed:
                    del self.watches[run_id]
                    await watch.close()
