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


class _Closed(Exception):
    """The tail was closed while a read was being retried."""


def _log_bad(entry: Entry, reason: str) -> None:
    log.warning("skipping entry %s: %s", entry.id, reason)


class Tail:
    """Async iterator over a topic's envelopes from `start` (BEGINNING, NOW or an entry id).

    With `follow` it waits for new entries forever; without, it stops at the entry that was
    the newest when iteration began. Entries that do not decode are skipped and passed to
    `on_bad`. `last_id` is the id of the last entry read, to resume from after a restart.
    A tail never disturbs consumer groups.

    A read that fails with one of `retry_on` (by default BusUnavailable) is retried every
    `retry_delay` seconds. `close()` ends the iteration after the current read. `entries()`
    iterates over the raw entries instead, for a reader that decodes (and dead-letters) itself.
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
        retry_on: tuple[type[Exception], ...] = (BusUnavailable,),
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
        self.retry_on = retry_on
        self.last_id: str | None = None
        self.skipped = 0
        self._after: str | None = None
        self._end: Key | None = None
        self._closed = False

    def __aiter__(self) -> AsyncIterator[Envelope]:
        return self._envelopes()

    def close(self) -> None:
        """End the iteration after the current read (a follow read waits `block` s at most).

        Only sets a flag, so another thread may call it.
        """
        self._closed = True

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        while not self._closed:
            try:
                return await call()
            except self.retry_on as exc:
                if isinstance(exc, BusUnavailable):
                    log.warning("bus unavailable while tailing %r: %s; retrying", self.topic, exc)
                else:
                    log.exception("reading %r failed; retrying", self.topic)
                await asyncio.sleep(self.retry_delay)
        raise _Closed

    async def open(self) -> Tail:
        """Fix where reading starts (NOW becomes the newest id) and, without follow, ends.

        Iterating opens the tail if needed; await this first when entries appended right
        after this point must not be missed by a tail from NOW. A tail closed meanwhile stays
        unopened.
        """
        if self._after is None:
            try:
                # NOW is resolved once: re-reading "$" on every call would miss entries between.
                start = self.start
                if start == NOW:
                    start = await self._retrying(lambda: self.bus.last_id(self.topic))
                if not self.follow:
                    end = await self._retrying(lambda: self.bus.last_id(self.topic))
                    self._end = parse_id(end)
            except _Closed:
                return self
            self._after = start
        return self

    async def entries(self) -> AsyncIterator[Entry]:
        """The topic's raw entries from `start`, undecoded; `last_id` is the one just yielded."""
        await self.open()
        if self._after is None:
            return  # closed before it opened
        end = self._end
        while not self._closed and (end is None or parse_id(self._after) < end):
            try:
                entries = await self._retrying(
                    lambda a=self._after: self.bus.read(
                        self.topic, a, count=self.batch, block=self.block if end is None else None
                    )
                )
            except _Closed:
                return
            if not entries and end is not None:
                return  # the rest was trimmed away meanwhile
            for entry in entries:
                if end is not None and parse_id(entry.id) > end:
                    return  # appended after the tail was opened: not part of the history
                self._after = self.last_id = entry.id
                yield entry

    async def _envelopes(self) -> AsyncIterator[Envelope]:
        async for entry in self.entries():
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
