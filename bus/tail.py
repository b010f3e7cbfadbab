"""Tail: read a topic as a monitor does, with no consumer group and nothing acked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from bus.base import BEGINNING, NOW, Bus, Entry
from bus.codec import decode
from bus.envelope import Envelope
from bus.errors import BusUnavailable, DecodeError
from bus.stream_ids import Key, parse_id

log = logging.getLogger(__name__)
T = TypeVar("T")

# Called with an entry that is not a valid envelope and the reason; the tail goes on.
BadEntryHook = Callable[[Entry, str], None]


def _log_bad(entry: Entry, reason: str) -> None:
    log.warning("skipping entry %s: %s", entry.id, reason)


class Tail:
    """Async iterator over a topic's envelopes from `start` (BEGINNING, NOW or an entry id).

    With `follow` it waits for new entries forever; without, it stops at the entry that was
    the newest when iteration began. Entries that do not decode are skipped and passed to
    `on_bad`. `last_id` is the id of the last entry read, to resume from after a restart.
    A tail never disturbs consumer groups.
    """

    def __init__(
        self,
        bus: Bus,
        topic: str,
        start: str = BEGINNING,
        *,
        follow: bool = True,
        batch: int = 100,
        block: float = 1.0,
        on_bad: BadEntryHook | None = None,
        retry_delay: float = 0.5,
    ) -> None:
        if start not in (BEGINNING, NOW):
            parse_id(start)  # a bad id fails here, naming itself
        self.bus = bus
        self.topic = topic
        self.start = start
        self.follow = follow
        self.batch = batch
        self.block = block
        self.on_bad = on_bad or _log_bad
        self.retry_delay = retry_delay
        self.last_id: str | None = None
        self.skipped = 0
        self._after: str | None = None
        self._end: Key | None = None

    def __aiter__(self) -> AsyncIterator[Envelope]:
        return self._envelopes()

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                return await call()
            except BusUnavailable as exc:
                log.warning("bus unavailable while tailing %r: %s; retrying", self.topic, exc)
                await asyncio.sleep(self.retry_delay)

    async def open(self) -> Tail:
        """Fix where reading starts (NOW becomes the newest id) and, without follow, ends.

        Iterating opens the tail if needed; await this first when entries appended right
        after this point must not be missed by a tail from NOW.
        """
        if self._after is None:
            # NOW is resolved once: re-reading "$" on every call would miss entries in between.
            start = self.start
            if start == NOW:
                start = await self._retrying(lambda: self.bus.last_id(self.topic))
            if not self.follow:
                self._end = parse_id(await self._retrying(lambda: self.bus.last_id(self.topic)))
            self._after = start
        return self

    async def _envelopes(self) -> AsyncIterator[Envelope]:
        await self.open()
        end = self._end
        while end is None or parse_id(self._after) < end:
            entries = await self._retrying(
                lambda a=self._after: self.bus.read(
                    self.topic, a, count=self.batch, block=self.block if end is None else None
                )
            )
            if not entries and end is not None:
                return  # the rest was trimmed away meanwhile
            for entry in entries:
                if end is not None and parse_id(entry.id) > end:
                    return  # appended after the tail was opened: not part of the history
                self._after = self.last_id = entry.id
                try:
                    env = decode(entry.payload)
                except DecodeError as exc:
                    self.skipped += 1
                    self.on_bad(entry, exc.reason)
                    continue
                yield env


def tail(
    bus: Bus,
    topic: str,
    start: str = BEGINNING,
    *,
    follow: bool = True,
    batch: int = 100,
    block: float = 1.0,
    on_bad: BadEntryHook | None = None,
) -> Tail:
    """Iterate over a topic's envelopes from `start` without a group: what a monitor uses."""
    return Tail(bus, topic, start, follow=follow, batch=batch, block=block, on_bad=on_bad)
