"""Consumer: the one group-consumer runtime of both buses (ack, reclaim, retry, dead letters)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any

from bus.base import BEGINNING, Bus, Entry
from bus.codec import decode, encode, peek_type
from bus.dead_letter import dead_letter_envelope
from bus.envelope import Envelope
from bus.errors import (
    BusAuthError,
    BusError,
    BusUnavailable,
    DecodeError,
    InvalidTopic,
    Rejected,
    UnknownGroup,
)
from bus.topics import topics_of
from bus.validate import check_maxlen

log = logging.getLogger(__name__)

# A handler takes the decoded envelope; it may be a plain function or an async one.
Handler = Callable[[Envelope], Any]
# Awaited after the handler took a batch, before the batch is acked (see Consumer).
BatchHook = Callable[[], Awaitable[None]]


def default_consumer_name() -> str:
    """A consumer name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class RecentIds:
    """The most recent `size` ids seen, oldest forgotten first (bounded memory for dedup).

    `add` keeps within `size` at once. A hot loop may instead add a key not yet in with
    `ids.add(key)` and `order.append(key)`, then call `trim()`: bound methods of a set and a
    deque, a fraction of the cost of a method call per id.
    """

    __slots__ = ("ids", "order", "size")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"dedup size must be >= 1, got {size}")
        self.size = size
        self.ids: set[str] = set()
        self.order: deque[str] = deque()  # oldest first

    def __contains__(self, key: str) -> bool:
        return key in self.ids

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, key: str) -> None:
        """Remember `key` as the newest id, forgetting the oldest when full."""
        if key in self.ids:
            self.order.remove(key)  # O(size), but only for an id seen again: rare
        else:
            self.ids.add(key)
        self.order.append(key)
        self.trim()

    def trim(self) -> None:
        """Forget the oldest ids beyond `size`."""
        ids, order = self.ids, self.order
        while len(order) > self.size:
            ids.discard(order.popleft())

    def forget(self, keys: Collection[str]) -> None:
        """Forget `keys` (O(size): for the rare batch whose handling is undone)."""
        gone = set(keys)
        self.ids -= gone
        self.order = deque(key for key in self.order if key not in gone)


@dataclass
class ConsumerStats:
    """Counts of what a consumer did with the deliveries it got."""

    handled: int = 0
    duplicates: int = 0
    failures: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    dead_letters_refused: int = 0  # dead-letter writes the bus refused; those entries stay pending
    skipped: int = 0  # entries of types the consumer was told to pass over, acked unhandled


class Consumer:
    """Consume a topic through a consumer group: at-least-once, acked after the handler returns.

    Each delivery is decoded and given to `handler` (sync or async); on success it is acked.
    A failing delivery stays pending and is retried when reclaimed (by this or another consumer
    of the group) after `claim_idle` seconds; once it has been delivered `max_deliveries` times
    it goes to the dead-letter topic and is acked. Undecodable entries are dead-lettered at once.
    Envelope ids already handled by this consumer are acked without calling the handler again.
    The dead-letter topic is by default that of the consumed topic's namespace; a dead letter
    the bus refuses to write is logged and its entry left pending, and consuming goes on.

    `batch` is the most entries taken per read (fewer when fewer are waiting, so it costs no
    latency); larger reads cost fewer round trips per entry. `claim_idle` must exceed the time
    it takes to handle one batch, or a live consumer's work may be claimed by a replica and
    handled twice: with slow handlers, lower `batch` or raise `claim_idle`.

    `types`, if given, are the envelope types the handler acts on: entries whose type (read
    with `peek_type`, without decoding them) is another are acked without being decoded or
    handed over (counted in `stats.skipped`); an entry whose type cannot be read that way is
    decoded and dealt with as usual, dead letter included. `linger` seconds, if > 0: after a
    read that found fewer than `batch` entries, the next read waits that long first (unless
    stopping), so that entries arriving one by one are taken a batch at a time: the consumer
    wakes at most about 1/linger times a second however fast they come, for up to `linger`
    seconds of delay. A read that finds nothing still blocks until the first entry comes.
    `wake()` ends a linger early. On a bus that filters group reads by type itself (its
    `filters_types`, as InMemoryBus), `types` go with every read: entries of other types are
    passed over there, unread and acked, and only an entry of `types` ends a blocking read.

    `after_batch`, if given, is awaited once the handler has taken a batch's entries and
    before they are acked, so that a handler may keep back what it makes of each entry (rows to
    write, say) and finish them all at once, before anything is acked. If it raises, the
    entries the handler took in that batch are not acked (and not deduplicated): they are
    delivered again after `claim_idle`, up to `max_deliveries` times, as after a handler failure.
    """

    def __init__(
        self,
        bus: Bus,
        topic: str,
        group: str,
        handler: Handler,
        *,
        name: str | None = None,
        start: str = BEGINNING,
        max_deliveries: int = 5,
        claim_idle: float = 30.0,
        claim_every: float | None = None,
        batch: int = 100,
        block: float = 1.0,
        dead_letter_topic: str | None = None,
        dead_letter_maxlen: int | None = None,
        dedup_size: int = 10_000,
        retry_delay: float = 0.5,
        types: Collection[str] | None = None,
        linger: float = 0.0,
        after_batch: BatchHook | None = None,
    ) -> None:
        if max_deliveries < 1:
            raise ValueError(f"max_deliveries must be >= 1, got {max_deliveries}")
        if claim_idle < 0:
            raise ValueError(f"claim_idle must be >= 0 seconds, got {claim_idle}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if not linger >= 0:
            raise ValueError(f"linger must be >= 0 seconds, got {linger}")
        self.bus = bus
        self.topic = topic
        self.group = group
        self.handler = handler
        self.name = name or default_consumer_name()
        self.start_from = start
        self.max_deliveries = max_deliveries
        self.claim_idle = claim_idle
        self.claim_every = max(0.01, claim_idle / 2 if claim_every is None else claim_every)
        self.batch = batch
        self.block = block
        if dead_letter_topic is None:
            try:
                dead_letter_topic = topics_of(topic).dead_letter()
            except InvalidTopic as exc:
                raise InvalidTopic(f"{exc}; or pass the Consumer a dead_letter_topic") from None
        check_maxlen(dead_letter_topic, dead_letter_maxlen)  # here, not at the first dead letter
        self.dead_letter_topic = dead_letter_topic
        self.dead_letter_maxlen = dead_letter_maxlen
        self.retry_delay = retry_delay
        self.types = None if types is None else frozenset(types)
        self.linger = linger
        self.after_batch = after_batch
        # The types go with each read where the bus passes the others over itself.
        self._read_types = (
            {"types": self.types}
            if self.types is not None and getattr(bus, "filters_types", False)
            else {}
        )
        self.stats = ConsumerStats()
        self._seen = RecentIds(dedup_size)
        # Buses that can ack a batch and read the next one in one round trip (both built-in
        # ones) let the consumer do so after each batch; the entries read are handled next.
        self._ack_and_read = getattr(bus, "ack_and_read_group", None)
        self._prefetched: list[Entry] = []
        self._drained = False  # the last read (an ack-and-read) found nothing new
        self._short = False  # the last read found fewer than `batch` entries: linger first
        self._next_claim = 0.0
        self._stop = asyncio.Event()
        # Futures stop() completes: of `_sleep`s and blocking reads it cuts short.
        self._sleepers: set[asyncio.Future[None]] = set()
        self._lingering: asyncio.Future[None] | None = None  # a linger's, for wake()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- one round ------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Create the group on the topic if it does not exist yet (at `start`)."""
        await self.bus.ensure_group(self.topic, self.group, self.start_from)

    async def poll_once(self, block: float | None = None) -> int:
        """Reclaim stale deliveries if due, then read one batch; return how many were handled."""
        handled = 0
        if time.monotonic() >= self._next_claim:
            stale = await self.bus.claim_stale(
                self.topic, self.group, self.name, min_idle=self.claim_idle, count=self.batch
            )
            self._next_claim = time.monotonic() + self.claim_every
            self.stats.claimed += len(stale)
            handled += await self._handle_batch(stale)
        if block is not None:
            block = min(block, max(0.0, self._next_claim - time.monotonic()))
        entries, self._prefetched = self._prefetched, []
        if not entries:
            if self._short and self.linger and self._ack_and_read is None:
                self._short = False
                await self._linger()  # let entries gather (no combined read did)
            entries = await self._read_unless_stopped(block)
            self._short = len(entries) < self.batch
        return handled + await self._handle_batch(entries, read_next=True)

    def _passed_over(self, entries: list[Entry]) -> list[Entry]:
        # Entries a type-filtering bus passed over for this consumer: skipped all the same.
        self.stats.skipped += getattr(entries, "passed_over", 0)
        return entries

    async def _read_unless_stopped(self, block: float | None) -> list[Entry]:
        drained, self._drained = self._drained, False
        if not (drained and block):
            # A busy topic is read without blocking, which spares the race with stop() below;
            # unless a read just now (after the last batch) found nothing.
            entries = self._passed_over(
                await self.bus.read_group(
                    self.topic,
                    self.group,
                    self.name,
                    count=self.batch,
                    block=None,
                    **self._read_types,
                )
            )
            if entries or not block or self._stop.is_set():
                return entries
        if self._stop.is_set():
            return []
        read = self.bus.read_group(
            self.topic, self.group, self.name, count=self.batch, block=block, **self._read_types
        )
        # Race the blocking read against stop() so that stopping never waits a whole block.
        reader = asyncio.ensure_future(read)
        # A bare future stop() completes, not a task on the Event: cheaper, at every idle read.
        stopper: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.add(stopper)
        try:
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._sleepers.discard(stopper)
            stopper.cancel()
            if not reader.done():
                reader.cancel()
                # Entries a server delivered before the cancel stay pending and get reclaimed.
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        return [] if reader.cancelled() else self._passed_over(reader.result())

    async def _handle_batch(self, entries: list[Entry], read_next: bool = False) -> int:
        """Handle deliveries in stream order, then ack the settled ones; return how many the
        handler took. With `read_next` (and a bus that can), the ack also reads the next batch
        (kept for the next poll) in the same round trip, unless the consumer is stopping."""
        if not entries:
            return 0
        done: list[str] = []
        settled = done.append
        handled = 0
        hook = self.after_batch
        # With a hook, what the handler took is acked only once the hook succeeded.
        taken: list[tuple[str, str]] | None = [] if hook is not None else None
        # The common case (a new, valid envelope whose handler succeeds) is handled inline:
        # a coroutine per entry, or method calls per id, would cost as much as decoding it.
        seen = self._seen
        seen_ids = seen.ids
        remember = seen_ids.add
        remember_order = seen.order.append
        handler = self.handler
        max_deliveries = self.max_deliveries
        wanted = self.types
        skipped = 0
        completed = False
        try:
            for entry in entries:
                if wanted is not None:
                    # Passed over unread: most entries of a run are ITERATION_COMPLETED that
                    # a kind acting on epochs ignores, and decoding them costs more.
                    peeked = peek_type(entry.payload)
                    if peeked is not None and peeked not in wanted:
                        skipped += 1
                        settled(entry.id)
                        continue
                try:
                    env = decode(entry.payload)
                except DecodeError as exc:
                    if await self._dead_letter(entry, f"undecodable: {exc.reason}", None):
                        settled(entry.id)
                    continue
                env_id = env.id
                if env_id in seen_ids:
                    self.stats.duplicates += 1
                    settled(entry.id)
                    continue
                if entry.deliveries > max_deliveries:
                    if await self._overdelivered(entry, env):
                        settled(entry.id)
                    continue
                try:
                    result = handler(env)
                    if result is not None and isawaitable(result):
                        await result
                except Exception as exc:
                    if await self._failed(entry, env, exc):
                        settled(entry.id)
                    continue
                # New (checked above, and only this task adds): the fast path of RecentIds.
                remember(env_id)
                remember_order(env_id)
                handled += 1
                if taken is not None:
                    taken.append((entry.id, env_id))
                else:
                    settled(entry.id)
            completed = True
        finally:
            seen.trim()
            self.stats.handled += handled
            self.stats.skipped += skipped
            if taken and completed and hook is not None and await self._finish_batch(hook, taken):
                done.extend(entry_id for entry_id, _ in taken)
            combined = self._ack_and_read
            short = len(entries) < self.batch
            if completed and read_next and combined is not None and self.linger and short:
                # Everything there was has been read: let the next entries gather.
                await self._linger()
            if completed and read_next and combined is not None and not self._stop.is_set():
                # Acked first, then read: the same order as an ack and the next poll's read.
                self._prefetched = self._passed_over(
                    await combined(
                        self.topic,
                        self.group,
                        self.name,
                        done,
                        count=self.batch,
                        **self._read_types,
                    )
                )
                self._drained = not self._prefetched
            elif done:
                await self.bus.ack(self.topic, self.group, done)
        return handled

    async def _finish_batch(self, hook: BatchHook, taken: list[tuple[str, str]]) -> bool:
        """Await `hook` for the entries the handler took; False (logged) if it failed: they
        are then left pending and forgotten by dedup, to be handled again when reclaimed."""
        try:
            await hook()
        except Exception as exc:
            self.stats.failures += 1
            self._seen.forget([env_id for _, env_id in taken])
            log.warning(
                "group %r: finishing a batch of %d entries failed (%s: %s); they will be "
                "delivered again after %.3g s",
                self.group,
                len(taken),
                type(exc).__name__,
                exc,
                self.claim_idle,
                exc_info=exc,
            )
            return False
        return True

    async def _overdelivered(self, entry: Entry, env: Envelope) -> bool:
        """Dead-letter an entry delivered too often to be handled; return whether it is."""
        # Delivered that often without an ack: it probably kills the consumers handling it.
        reason = (
            f"delivered {entry.deliveries} times without being acked "
            f"(max_deliveries={self.max_deliveries})"
        )
        return await self._dead_letter(entry, reason, env)

    async def _failed(self, entry: Entry, env: Envelope, exc: Exception) -> bool:
        """Deal with a handler's failure; return True if the entry is settled (dead-lettered)."""
        self.stats.failures += 1
        if isinstance(exc, Rejected):
            return await self._dead_letter(entry, f"rejected by the handler: {exc}", env)
        failure = f"{type(exc).__name__}: {exc}"
        if entry.deliveries >= self.max_deliveries:
            reason = f"handler failed on all {entry.deliveries} deliveries, last: {failure}"
            return await self._dead_letter(entry, reason, env)
        log.warning(
            "handler of group %r failed on %s entry %s (%s, delivery %d of %d); it will "
            "be retried after %.3g s",
            self.group,
            env.type,
            entry.id,
            failure,
            entry.deliveries,
            self.max_deliveries,
            self.claim_idle,
            exc_info=exc,
        )
        return False

    async def _dead_letter(self, entry: Entry, reason: str, original: Envelope | None) -> bool:
        """Write the entry's dead letter; return False if the bus refused it (entry stays)."""
        log.warning(
            "dead-lettering entry %s of topic %r for group %r: %s",
            entry.id,
            self.topic,
            self.group,
            reason,
        )
        env = dead_letter_envelope(
            entry,
            reason=reason,
            topic=self.topic,
            group=self.group,
            source=self.name,
            original=original,
        )
        try:
            await self.bus.append(
                self.dead_letter_topic, [encode(env)], maxlen=self.dead_letter_maxlen
            )
        except BusUnavailable:
            raise  # an outage: run() waits for the bus, the entry stays pending meanwhile
        except BusError as exc:
            # Refused for good (ACL, wrong key type, ...): not a reason to stop consuming. The
            # entry stays pending, so it is retried once reclaimed, when the cause may be gone.
            self.stats.dead_letters_refused += 1
            if isinstance(exc, BusAuthError):
                problem = (
                    f"the bus user lacks the permission to write it ({exc}); grant it XADD on "
                    f"{self.dead_letter_topic!r} (docs/protocol.md section 7) or give the "
                    "Consumer a dead_letter_topic it may write"
                )
            else:
                problem = f"the server refused the write ({exc})"
            log.error(
                "cannot dead-letter entry %s of topic %r for group %r to topic %r: %s; the "
                "entry stays pending and is retried after claim_idle (%.3g s)",
                entry.id,
                self.topic,
                self.group,
                self.dead_letter_topic,
                problem,
                self.claim_idle,
            )
            return False
        self.stats.dead_lettered += 1
        return True

    # -- running --------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until stop(); ride out an unreachable bus, recreate a vanished group."""
        need_group = True
        while not self._stop.is_set():
            try:
                if need_group:
                    await self.ensure_group()
                    need_group = False
                    self._ready.set()
                await self.poll_once(self.block)
            except BusUnavailable as exc:
                log.warning("bus unavailable for group %r: %s; retrying", self.group, exc)
                await self._sleep(self.retry_delay)
            except UnknownGroup as exc:
                # The server lost the group (e.g. restarted without persistence): recreate it.
                log.warning("%s; recreating group %r", exc, self.group)
                need_group = True
        # Entries read with the last ack are delivered to this consumer: handle them too
        # rather than leave them pending until a replica reclaims them.
        entries, self._prefetched = self._prefetched, []
        if entries:
            await self._handle_batch(entries)

    async def _linger(self) -> None:
        """Let entries gather for `linger` seconds, unless stop() or wake() ends it sooner."""
        loop = asyncio.get_running_loop()
        self._lingering = loop.create_future()
        try:
            await self._sleep(self.linger, self._lingering)
        finally:
            self._lingering = None

    def wake(self) -> None:
        """End a linger in progress: the next read happens now (e.g. the run just ended)."""
        if self._lingering is not None:
            _wake(self._lingering)

    async def _sleep(self, seconds: float, woken: asyncio.Future[None] | None = None) -> None:
        """Wait `seconds`, or until stop()."""
        # A bare future and a timer: asyncio.wait_for(stop.wait()) would make a task, a timeout
        # and a cancellation at each linger, several times the cost, on the loop the embedded
        # stack shares with the trainer's publisher (and the GIL with its training thread).
        if self._stop.is_set():
            return
        loop = asyncio.get_running_loop()
        if woken is None:
            woken = loop.create_future()
        timer = loop.call_later(seconds, _wake, woken)
        self._sleepers.add(woken)
        try:
            await woken
        finally:
            timer.cancel()
            self._sleepers.discard(woken)

    async def start(self) -> None:
        """Run in a background task; return once the group exists (or the task has failed)."""
        if self._task is not None and not self._task.done():
            raise RuntimeError(f"consumer {self.name!r} of group {self.group!r} already runs")
        self._ready.clear()
        self._stop.clear()  # here, not in run(): a stop() right after start() must not be lost
        self._task = asyncio.create_task(self.run(), name=f"consumer:{self.group}:{self.name}")
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait({self._task, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self._task.done():
            self._task.result()  # raises what made it fail

    async def stop(self) -> None:
        """Stop once the batch being handled is done; wait for the background task if any."""
        self._stop.set()
        for woken in self._sleepers:
            _wake(woken)
        task = self._task
        if task is not None and task is not asyncio.current_task():
            await task

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
