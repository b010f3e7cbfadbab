"""Reading one run off the bus, as the monitor and the web view do: history, then live.

A run is read from three topics: its events, its control, and the namespace's dead letters
(of which only those about the run are kept). Each is read as a tail (`bus.Tail`: no consumer
group, nothing acked, an unreachable bus retried), so reading disturbs no worker. `history`
reads every topic from its beginning up to now and interleaves them by timestamp, each topic's
own order kept; `follow` then yields what arrives after that, in arrival order. Every item
carries its entry id on its topic: the web view's metric points are resumed by it
(`Last-Event-ID`). `ReplayPacer` says when each envelope of a history played back is due.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from bus import BEGINNING, Bus, Entry, Envelope, Tail, Topics
from workers.monitor.state import CONTROL, DEAD_LETTERS, EVENTS

# Entries per read of a topic's history (a long run has millions: fewer round trips).
HISTORY_BATCH = 1000
# Items read live and not yet taken by the reader's user (the tails wait while it is full).
FOLLOW_QUEUE = 10_000

# Whether the envelope read from a topic kind is about the run (e.g. MonitorState.concerns).
Keep = Callable[[str, Envelope], bool]
# Called with the topic kind and the reason of an entry that is not a valid envelope.
OnBad = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class RunItem:
    """One envelope of a run, the kind of topic it was read from, and its entry id there."""

    kind: str  # EVENTS, CONTROL or DEAD_LETTERS
    env: Envelope
    entry_id: str


def run_topics(topics: Topics, run_id: str) -> dict[str, str]:
    """The topics a run is read from, by kind."""
    return {
        EVENTS: topics.events(run_id),
        CONTROL: topics.control(run_id),
        DEAD_LETTERS: topics.dead_letter(),
    }


class RunReader:
    """A run's topics read as tails: `history` once, then `follow`.

    `keep` leaves out envelopes that are not about the run (the dead-letter topic holds the
    whole namespace's); `on_bad` hears of entries that do not decode. `last_ids` says, per
    topic kind, the last entry read: where following goes on from.
    """

    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        run_id: str,
        *,
        keep: Keep | None = None,
        on_bad: OnBad | None = None,
        block: float = 1.0,
        batch: int = HISTORY_BATCH,
    ) -> None:
        self.bus = bus
        self.run_id = run_id
        self.topics = run_topics(topics, run_id)
        self.keep = keep
        self.on_bad = on_bad
        self.block = block
        self.batch = batch
        self.last_ids = dict.fromkeys(self.topics, BEGINNING)

    def _tail(self, kind: str, follow: bool) -> Tail:
        on_bad = self.on_bad

        def bad(entry: Entry, reason: str) -> None:
            if on_bad is not None:
                on_bad(kind, reason)

        return Tail(
            self.bus,
            self.topics[kind],
            self.last_ids[kind],
            follow=follow,
            batch=self.batch,
            block=self.block,
            on_bad=bad,
        )

    async def _read(self, kind: str, tail: Tail) -> AsyncIterator[RunItem]:
        """`tail`'s envelopes that are about the run, as items; `last_ids` kept up to date."""
        async for env in tail:
            # Tail sets last_id before it yields, so it is the id of the envelope just read.
            entry_id = tail.last_id or BEGINNING
            self.last_ids[kind] = entry_id
            if self.keep is None or self.keep(kind, env):
                yield RunItem(kind, env, entry_id)
        if tail.last_id is not None:  # entries that did not decode were read too
            self.last_ids[kind] = tail.last_id

    async def history(self) -> list[RunItem]:
        """Every topic's envelopes up to now, interleaved by timestamp (each topic's own order
        kept): the order a replay plays them in."""

        async def read(kind: str) -> list[RunItem]:
            return [item async for item in self._read(kind, self._tail(kind, follow=False))]

        histories = await asyncio.gather(*(read(kind) for kind in self.topics))
        return list(heapq.merge(*histories, key=lambda item: item.env.ts))

    async def follow(self) -> AsyncIterator[RunItem]:
        """What arrives on the topics after `last_ids`, as it arrives, until closed.

        Use it in `contextlib.aclosing`, so that its tails stop with it; a tail that fails
        (e.g. the bus refuses the password) raises here.
        """
        queue: asyncio.Queue[RunItem | BaseException] = asyncio.Queue(FOLLOW_QUEUE)

        async def pump(kind: str) -> None:
            try:
                async for item in self._read(kind, self._tail(kind, follow=True)):
                    await queue.put(item)
            except Exception as exc:
                await queue.put(exc)

        pumps = [
            asyncio.create_task(pump(kind), name=f"run-reader:{self.run_id}:{kind}")
            for kind in self.topics
        ]
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)


class ReplayPacer:
    """When each envelope of a replay is due: at `t0 + (ts - ts0) / speed`, where `ts0` is the
    first envelope's timestamp and `t0` the moment it was fed.

    Every wait is measured from that one anchor, not from the previous envelope, so the time
    spent feeding and rendering (and a sleep's overshoot) is taken out of the next wait instead
    of adding up over thousands of envelopes.
    """

    def __init__(self, speed: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.speed = speed
        self.clock = clock  # seconds, monotonic
        self._anchor: tuple[float, float] | None = None  # (ts0, t0)

    def wait(self, ts: float) -> float:
        """Seconds to wait before feeding the envelope stamped `ts` (0 when it is due)."""
        now = self.clock()
        if self._anchor is None:
            self._anchor = (ts, now)
            return 0.0
        ts0, t0 = self._anchor
        return max(0.0, t0 + (ts - ts0) / self.speed - now)

    def stream_time(self) -> float | None:
        """The replay clock: the run's time (seconds since the epoch) the replay stands at
        now; None before the first envelope."""
        if self._anchor is None:
            return None
        ts0, t0 = self._anchor
        return ts0 + (self.clock() - t0) * self.speed
