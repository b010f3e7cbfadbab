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
from bus.stream_ids import parse_id

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

    def __aiter__(self) -> AsyncIterator[Envelope]:
        return self._envelopes()

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                return await call()
            except BusUnavailable as exc:
                log.warning("bus unavailable while tailing %r: %s; retrying", self.topic, exc)
                await asyncio.sleep(self.retry_delay)

    async def _envelopes(self) -> AsyncIterator[Envelope]:
        after = self.start
        if after == NOW:
            # Resolved once: re-reading "$" on every call would miss entries between calls.
            after = await self._retrying(lambda: self.bus.last_id(self.topic))
        end = (
            None
            if self.follow
            else parse_id(await self._retrying(lambda: self.bus.last_id(self.topic)))
        )
        while end is None or parse_id(after) < end:
            block = self.block if end is None else None
            entries = await self._retrying(
                lambda a=after, b=block: self.bus.read(self.topic, a, count=self.batch, block=b)
            )
            if not entries and end is not None:
                return  # the rest was trimmed away meanwhile
            for entry in entries:
                if end is not None and parse_id(entry.id) > end:
                    return  # appended after the iteration began: not part of the history
                after = self.last_id = entry.id
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
