"""The web view's sweeps: each sweep a page looks at is read off the bus into a SweepState
(`workers.sweeps`, the model `trainer sweep`'s progress line reads too) and sent to the page
as Server-Sent Events whenever it changes.

Tails only, as everywhere in the web view: nothing here joins a group or acks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from bus import Bus, Topics
from workers.sweeps.bus_reads import find_sweep, known_sweeps
from workers.sweeps.reader import SweepReader
from workers.sweeps.state import SweepState
from workers.web.live import Signal
from workers.web.scrub import Scrubber
from workers.web.sse import comment, event, retry

# Seconds between two snapshots of a moving sweep (its trials' epochs come in bursts), and the
# longest a stream stays silent (a comment keeps the connection open through proxies).
SNAPSHOT_INTERVAL = 0.25
KEEPALIVE = 15.0
# How long a request waits for a sweep's history before it answers with what it has.
HISTORY_WAIT = 10.0


class SweepWatch:
    """One sweep read off the bus for as long as the web view runs."""

    def __init__(self, bus: Bus, topics: Topics, sweep_id: str) -> None:
        self.state = SweepState(sweep_id)
        self.changed = Signal()
        self.reader = SweepReader(bus, topics, self.state, on_change=self.changed.fire)
        self._started: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Start reading (the first call does); return once the history is read (or
        HISTORY_WAIT has passed), whichever request asked first."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._read_history())
        # Shielded: a request that goes away must not cancel the reading others wait for.
        await asyncio.shield(self._started)

    async def _read_history(self) -> None:
        await self.reader.start()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.reader.ready.wait(), HISTORY_WAIT)

    def failed(self) -> bool:
        """Whether starting failed (the bus refused the reads): this watch will never read."""
        started = self._started
        return (
            started is not None
            and started.done()
            and (started.cancelled() or started.exception() is not None)
        )

    async def close(self) -> None:
        """Stop reading."""
        if self._started is not None and not self._started.done():
            self._started.cancel()
        await self.reader.close()


class Sweeps:
    """The sweeps of the bus that pages look at, watched on demand."""

    def __init__(self, bus: Bus, topics: Topics) -> None:
        self.bus = bus
        self.topics = topics
        self.watches: dict[str, SweepWatch] = {}
        self._lock = asyncio.Lock()

    async def ids(self) -> list[str]:
        """Every sweep the registry of sweeps has seen, newest first."""
        return list(reversed(await known_sweeps(self.bus, self.topics)))

    async def watch(self, sweep_id: str) -> SweepWatch | None:
        """The watch of `sweep_id`, None if the bus never saw that sweep start."""
        async with self._lock:
            found = self.watches.get(sweep_id)
            if found is None:
                if await find_sweep(self.bus, self.topics, sweep_id) is None:
                    return None
                found = self.watches[sweep_id] = SweepWatch(self.bus, self.topics, sweep_id)
        # Every caller waits for the history, not only the first: a page asks for the sweep
        # and its stream at once, and the one that came second must not answer half of it.
        try:
            await found.start()
        except BaseException:
            if self.watches.get(sweep_id) is found and found.failed():
                del self.watches[sweep_id]  # the next request starts afresh
            raise
        return found

    async def close(self) -> None:
        """Stop every watch."""
        await asyncio.gather(*(w.close() for w in self.watches.values()), return_exceptions=True)


async def sweep_stream(
    watch: SweepWatch, scrub: Scrubber, drop: asyncio.Event, retry_ms: int
) -> AsyncIterator[bytes]:
    """The SSE stream of one sweep: its state (`event: sweep`) whenever it changed."""
    waiter = watch.changed.subscribe()
    try:
        yield retry(retry_ms)
        last: Any = None
        while not drop.is_set():
            waiter.clear()
            view = scrub.value(watch.state.as_dict())
            if view != last:
                last = view
                yield event(view, kind="sweep")
            else:
                yield comment("unchanged")
            await _first(drop, SNAPSHOT_INTERVAL)  # the throttle: changes within it go together
            await _first(drop, KEEPALIVE, waiter)
    finally:
        watch.changed.unsubscribe(waiter)


async def _first(drop: asyncio.Event, timeout: float, *more: asyncio.Event) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in (drop, *more)]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
