"""The trainer's publisher: an in-order outbox drained in pipelined batches, surviving outages.

Producers hand envelopes over cheaply (encoding happens in the caller, so a bad envelope fails
there; or, for the trainer's own per-iteration envelopes, whose data it knows sound, in the
writer: see `publish_later_from_thread`); a background task writes them with `Bus.append`, one
call per run of consecutive envelopes for the same topic, so the order in which they were
published is the order in which they are written, across topics too. While the bus is
unreachable the batch in flight is kept and retried with capped exponential backoff; the outbox
is bounded and a producer that finds it full waits (nothing is dropped).

A failed append is ambiguous: the server may have applied some or all of the batch before the
connection dropped. Before retrying, the publisher reads the topic after its last confirmed
entry and leaves out what is already there, so a server crash or restart does not duplicate
envelopes. Delivery remains at-least-once in the corner cases (other writers buried our
entries under more than 10,000 of theirs, the bus has no `last_id`, or the bus user may not
read the topic back); consumers are idempotent by envelope id (docs/protocol.md), and first
occurrences are never reordered.

`Publisher` lives in the caller's event loop; `bus.threaded_publisher.ThreadedPublisher` runs
one in a thread of its own, for synchronous callers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bus.base import Bus
from bus.codec import encode, encode_map, wire_map
from bus.envelope import Envelope, new_id
from bus.errors import (
    BusAuthError,
    BusUnavailable,
    EnvelopeTooLarge,
    OutboxFull,
    PublisherClosed,
    PublisherFailed,
)

log = logging.getLogger(__name__)

# What a failed append may raise when the transport, not the request, is at fault. A bus is
# supposed to turn these into BusUnavailable; the builtin ones are caught in case one leaks.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    BusUnavailable,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
)

# A producer that keeps finding the outbox full is told so at most this often.
_FULL_WARNING_INTERVAL = 10.0
# The writer naps (looks again every flush_interval) for this many flush intervals after it
# last took envelopes, then sleeps until woken (see Publisher._naps_pay).
_NAP_WHILE_FED = 20

# An envelope the writer builds and encodes (`publish_later_from_thread`): its type, run_id,
# source, data, epoch, iteration and ts, as the producer gave them.
Later = tuple[str, str, str, dict, int, int, float]


@dataclass(frozen=True, slots=True)
class PublisherStats:
    """A snapshot of a publisher's counters."""

    enqueued: int  # envelopes accepted from producers
    published: int  # envelopes whose write the bus confirmed
    retried: int  # failed write attempts that were retried
    outbox: int  # envelopes accepted but not yet confirmed (waiting or in flight)
    batches: int  # confirmed appends
    bytes: int  # payload bytes confirmed
    outages: int  # times the bus became unreachable
    blocked: int  # times a producer had to wait for room in the outbox
    recovered: int  # envelopes of a failed batch found already written, so not repeated
    connected: bool  # False while the bus is unreachable


def _positive(name: str, value: float, *, integer: bool) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        raise ValueError(f"Publisher {name} must be {what}, got {value!r}")


class Publisher:
    """Publishes envelopes from the running event loop without waiting for the bus."""

    def __init__(
        self,
        bus: Bus,
        *,
        max_batch: int = 1000,
        max_outbox: int = 100_000,
        flush_interval: float = 0.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        maxlen: int | Mapping[str, int] | None = None,
    ) -> None:
        """Wrap `bus`; the caller keeps owning it (close() does not close the bus).

        `max_batch`: most envelopes per append. `max_outbox`: most envelopes accepted and not
        yet written before producers wait. `flush_interval`: seconds the writer lingers after
        waking so that envelopes published together share a batch (0 writes at once).
        `backoff_initial`/`backoff_max`: first and longest pause between retries, in seconds.
        `maxlen`: approximate cap on every topic's length, or a mapping topic -> cap for some
        topics only (the others are never trimmed), passed to `Bus.append`. None: no trimming.
        """
        _positive("max_batch", max_batch, integer=True)
        _positive("max_outbox", max_outbox, integer=True)
        _positive("backoff_initial", backoff_initial, integer=False)
        _positive("backoff_max", backoff_max, integer=False)
        if isinstance(flush_interval, bool) or not isinstance(flush_interval, (int, float)):
            raise ValueError(f"Publisher flush_interval must be a number, got {flush_interval!r}")
        if flush_interval < 0:
            raise ValueError(f"Publisher flush_interval must be >= 0, got {flush_interval!r}")
        caps = maxlen if isinstance(maxlen, Mapping) else {}
        for topic, cap in caps.items():
            _positive(f"maxlen for topic {topic!r}", cap, integer=True)
        if maxlen is not None and not isinstance(maxlen, Mapping):
            _positive("maxlen", maxlen, integer=True)
        self.bus = bus
        self.max_batch = max_batch
        self.max_outbox = max_outbox
        self.flush_interval = float(flush_interval)
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(max(backoff_max, backoff_initial))
        self.maxlen = maxlen
        self._maxlen_for: Callable[[str], int | None] = (
            dict(maxlen).get if isinstance(maxlen, Mapping) else lambda topic: maxlen
        )

        # Producers only append on the right; only the writer task pops on the left. Both are
        # atomic on a deque, which is what lets ThreadedPublisher's callers skip the loop.
        self._outbox: deque[tuple[str, bytes | Later]] = deque()
        self._inflight: list[bytes] = []
        self._inflight_topic = ""
        # Our newest confirmed entry per topic, and whether the batch in flight may have been
        # applied by the server without the confirmation reaching us.
        self._last_ids: dict[str, str] = {}
        self._unsure = False
        self._can_reconcile = callable(getattr(bus, "last_id", None))
        self._recovered = 0
        self._enqueued = 0
        self._taken = 0  # envelopes the writer has taken off the outbox so far
        self._hurried = 0  # hurry(): the envelopes up to this count are written without linger
        self._last_taken = -math.inf  # monotonic time the writer last took envelopes
        self._published = 0
        self._retried = 0
        self._batches = 0
        self._bytes = 0
        self._outages = 0
        self._blocked = 0
        self._connected = True
        self._closing = False
        self._abort = False  # close() gave up waiting: the writer stops at its next step
        self._failure: BaseException | None = None

        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._idle = False
        self._room = asyncio.Event()
        self._room_waiters = 0
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        # For producers in other threads (ThreadedPublisher) waiting for room.
        # The lock alone on the hot path (a Condition's `with` is Python-level code, and the
        # training thread takes it at every published step); the condition over the same lock
        # for producers that wait for room.
        self._room_lock = threading.Lock()
        self._room_cv = threading.Condition(self._room_lock)
        self._thread_waiters = 0
        self._last_full_warning = -_FULL_WARNING_INTERVAL
        self._full_since_warning = 0

    # ---- producer side -------------------------------------------------------------------

    def stats(self) -> PublisherStats:
        """Return the current counters."""
        return PublisherStats(
            enqueued=self._enqueued,
            published=self._published,
            retried=self._retried,
            outbox=self.depth,
            batches=self._batches,
            bytes=self._bytes,
            outages=self._outages,
            blocked=self._blocked,
            recovered=self._recovered,
            connected=self._connected,
        )

    @property
    def enqueued(self) -> int:
        """Envelopes accepted from producers so far (a `flush(upto=...)` target)."""
        return self._enqueued

    @property
    def depth(self) -> int:
        """Envelopes accepted but not yet confirmed written (waiting or in flight)."""
        return len(self._outbox) + len(self._inflight)

    async def publish(self, topic: str, env: Envelope) -> None:
        """Queue `env` for `topic`; waits only while the outbox is full, never for the bus."""
        payload = self._encode(topic, env)
        self.start()
        if self.depth >= self.max_outbox:
            self._note_full()
        while self.depth >= self.max_outbox:
            self._check_usable()
            self._room.clear()
            self._room_waiters += 1
            try:
                await self._room.wait()
            finally:
                self._room_waiters -= 1
        self._check_usable()
        self._put(topic, payload)

    def publish_nowait(self, topic: str, env: Envelope) -> None:
        """Queue `env` for `topic` from the loop's thread, or raise OutboxFull if it is full."""
        payload = self._encode(topic, env)
        self.start()
        if self.depth >= self.max_outbox:
            self._note_full()
            raise OutboxFull(
                f"publisher outbox is full ({self.depth} envelopes waiting for the bus); "
                "use `await publish()` to wait for room"
            )
        self._put(topic, payload)

    async def flush(self, timeout: float | None = None, *, upto: int | None = None) -> None:
        """Wait until everything published so far is written; TimeoutError after `timeout` s.

        `upto`: wait only for the first `upto` envelopes accepted (a count `enqueued` gave), so
        that a producer in another thread waits for what it published, not for what came after.
        """
        await self._written(self._enqueued if upto is None else upto, timeout)

    def hurry_from_thread(self) -> None:
        """Cut the linger short for what was published so far, from any thread, without waiting.

        For an envelope someone waits to act on (an epoch's figures a voter judges): it is
        written in the next round, which starts now, rather than up to `flush_interval` later.
        """
        self._hurried = self._enqueued
        if self._loop is not None:
            # The writer may be lingering, not idle: only `_wake` ends a linger early.
            # RuntimeError: the loop is closed, and nothing is left to hurry.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake.set)

    def publish_from_thread(self, topic: str, env: Envelope, timeout: float | None = None) -> None:
        """Queue `env` for `topic` from a thread other than the loop's, never waiting for the bus.

        Blocks only while the outbox is full (TimeoutError after `timeout` s). The writer must
        have been started on its loop (`start()`) first.
        """
        self._put_from_thread(topic, self._encode(topic, env), timeout)

    def publish_later_from_thread(
        self,
        topic: str,
        type: str,
        run_id: str,
        source: str,
        data: dict,
        epoch: int,
        iteration: int,
    ) -> None:
        """Queue an envelope the writer builds and encodes, from a thread other than the loop's.

        For envelopes made at every training step whose `data` the caller knows to be small and
        msgpack-native: the producer pays for a tuple, the writer for the envelope, in batches.
        (On this 2-core machine a step between two sends leaves the caches cold: building and
        encoding one envelope there costs 30-45 us, in a batch a tenth of it.) Its `ts` is taken
        now and its id made from it, so the envelope says when it was published. Blocks only
        while the outbox is full, as `publish_from_thread` does.
        """
        later = (type, run_id, source, data, epoch, iteration, time.time())
        self._put_from_thread(topic, later, None)

    def start(self) -> None:
        """Start the writer task on the running event loop (publishing starts it too)."""
        if self._task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "Publisher needs a running event loop; from synchronous code use ThreadedPublisher"
            ) from None
        self._loop = loop
        self._task = loop.create_task(self._run(), name="bus-publisher")
        self._task.add_done_callback(self._writer_done)

    async def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the writer; TimeoutError (envelopes left unwritten) after `timeout`."""
        self._closing = True
        task = self._task
        if task is None:
            return
        self._wake.set()
        try:
            await self._written(self._enqueued, timeout)
        except BaseException:
            # Timed out, failed or cancelled: the writer must not outlive close(). The flag is
            # what stops it for sure: on Python 3.11 redis-py can swallow a cancel() (its
            # asyncio.wait_for around socket writes), and the writer would then retry forever.
            self._abort = True
            task.cancel()
            await asyncio.wait({task})
            raise
        await task  # returns at once: closing, and nothing left to write

    async def __aenter__(self) -> Publisher:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- internals of the producer side -------------------------------------------------

    def _encode(self, topic: str, env: Envelope) -> bytes:
        self._check_usable()
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic must be a non-empty str, got {topic!r}")
        if not isinstance(env, Envelope):
            raise TypeError(f"publish() takes an Envelope, got {type(env).__name__}")
        return encode(env)

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise PublisherFailed(
                f"publisher stopped after the bus refused a write: {self._failure!r}; "
                f"{self.depth} envelopes were not written"
            ) from self._failure
        if self._closing:
            raise PublisherClosed("publisher is closed: nothing more can be published")

    def _put(self, topic: str, payload: bytes) -> None:
        self._outbox.append((topic, payload))
        self._enqueued += 1
        if self._idle:
            self._idle = False
            self._wake.set()

    def _put_from_thread(self, topic: str, payload: bytes | Later, timeout: float | None) -> None:
        """Queue a payload from a thread other than the loop's, waiting while the outbox is full."""
        # Called at every published training step: the common case reads two flags and two
        # lengths inline, the checks that raise run only when one of them says they would.
        with self._room_lock:
            if len(self._outbox) + len(self._inflight) >= self.max_outbox:
                self._wait_for_room(timeout)
            if self._failure is not None or self._closing:
                self._check_usable()
            self._outbox.append((topic, payload))
            self._enqueued += 1
        if self._idle:
            self._idle = False
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._wake.set)

    def _wait_for_room(self, timeout: float | None) -> None:
        """Wait (holding `_room_lock`) until the outbox has room; TimeoutError after `timeout`."""
        self._note_full()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.depth >= self.max_outbox:
            self._check_usable()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(
                    f"publisher outbox stayed full ({self.depth} envelopes) for {timeout} s"
                )
            self._thread_waiters += 1
            try:
                # Bounded wait: a missed notify costs at most this long, never a hang.
                self._room_cv.wait(0.1 if remaining is None else min(remaining, 0.1))
            finally:
                self._thread_waiters -= 1

    def _note_full(self) -> None:
        self._blocked += 1
        self._full_since_warning += 1
        now = time.monotonic()
        if now - self._last_full_warning >= _FULL_WARNING_INTERVAL:
            log.warning(
                "publisher outbox is full (%d envelopes not yet written, bus %s); the producer "
                "waits for room (%d time(s) since the last warning)",
                self.depth,
                "unreachable" if not self._connected else "busy",
                self._full_since_warning,
            )
            self._last_full_warning = now
            self._full_since_warning = 0

    async def _written(self, target: int, timeout: float | None) -> None:
        if self._published >= target:
            return
        if self._failure is not None:
            self._check_usable()
        if self._task is None or self._task.done():
            raise PublisherClosed(f"publisher stopped with {self.depth} envelopes unwritten")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (target, future)
        self._flush_waiters.append(waiter)
        self._wake.set()  # a flush cuts the linger short
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(
                f"{target - self._published} envelopes still unwritten after {timeout} s "
                f"(bus {'reachable' if self._connected else 'unreachable'})"
            ) from None
        finally:
            if waiter in self._flush_waiters:
                self._flush_waiters.remove(waiter)

    # ---- the writer task -----------------------------------------------------------------

    def _take_batch(self) -> None:
        # Consecutive envelopes for one topic, up to max_batch; a topic change ends the batch
        # so that the order across topics is the publishing order.
        outbox = self._outbox
        topic, payload = outbox.popleft()
        batch = [payload]
        while len(batch) < self.max_batch and outbox and outbox[0][0] == topic:
            batch.append(outbox.popleft()[1])
        self._taken += len(batch)
        self._last_taken = time.monotonic()
        if any(type(p) is tuple for p in batch):
            batch = self._encoded(topic, batch)
        self._inflight_topic = topic
        self._inflight = batch

    def _encoded(self, topic: str, batch: list) -> list[bytes]:
        """`batch` with the envelopes queued by `publish_later_from_thread` built and encoded."""
        done = []
        for payload in batch:
            if type(payload) is not tuple:
                done.append(payload)
                continue
            type_, run_id, source, data, epoch, iteration, ts = payload
            try:
                wire = wire_map(type_, run_id, source, data, epoch, iteration, new_id(ts), ts)
                done.append(encode_map(wire))
            except (TypeError, EnvelopeTooLarge) as exc:
                # The caller vouched for the data, and it cannot be told any more: the envelope
                # is lost, and counted as done so that nobody's flush waits for it.
                self._published += 1
                log.error("%s of run %s for %s dropped: %s", type_, run_id, topic, exc)
        return done

    def _lingering(self) -> bool:
        return (
            self.flush_interval > 0
            and len(self._outbox) < self.max_batch
            and not self._flush_waiters
            and not self._closing
            and self._taken >= self._hurried
        )

    async def _linger(self, seconds: float) -> None:
        """Wait `seconds`, or less if a flush or close() comes meanwhile."""
        wake = self._wake
        wake.clear()
        # Producers set `_wake` only while the writer is idle, which it is not here: what can
        # set it now is a flush, close() or hurry, each registered before it sets it.
        if not self._lingering():
            return
        timer = asyncio.get_running_loop().call_later(seconds, wake.set)
        try:
            await wake.wait()
        finally:
            timer.cancel()

    def _naps_pay(self) -> bool:
        """Whether the empty writer looks again after a linger rather than wait to be woken."""
        # A publisher fed steadily (a training loop's steps) would otherwise go idle after every
        # round and be woken by the next envelope: a producer in another thread pays for that
        # wake with a syscall and then waits for the GIL while the writer's round runs, about
        # half of what a published step cost the training thread. Napping, the writer takes
        # the GIL when the producer next lets it go. Only while envelopes keep coming: an
        # unused publisher sleeps until woken.
        # With flush waiters left (answered, not yet gone) the writer sleeps instead: it must
        # await something for them to go, and napping would first clear their wake-up.
        return (
            self.flush_interval > 0
            and not self._flush_waiters
            and not self._closing
            and time.monotonic() - self._last_taken < _NAP_WHILE_FED * self.flush_interval
        )

    async def _nap(self) -> None:
        """Wait `flush_interval`, or less if a flush, a hurry or close() comes meanwhile."""
        wake = self._wake
        # Nothing ran since _naps_pay() found no flush and no close: each of those, and a hurry,
        # sets `_wake` after registering itself, so clearing it here loses none of them.
        wake.clear()
        timer = asyncio.get_running_loop().call_later(self.flush_interval, wake.set)
        try:
            await wake.wait()
        finally:
            timer.cancel()

    async def _run(self) -> None:
        backoff = self.backoff_initial
        outage_start = 0.0
        # Write rounds start at least `flush_interval` apart (unless flushed, closing or a batch
        # is full): a writer that wrote whatever was there as soon as the last write returned
        # would chase the producer, one append per envelope, which costs both ends far more
        # than the linger saves. A round writes what the outbox held when it began, batch after
        # batch without lingering between them: its envelopes for several topics (a run's
        # events, the registry) must not each wait a linger more than the one before.
        next_write = 0.0
        round_end = 0  # the round ends once the writer has taken this many envelopes
        while not self._abort:
            if not self._inflight:
                if not self._outbox:
                    if self._closing:
                        return
                    if self._naps_pay():
                        await self._nap()
                        continue
                    self._wake.clear()
                    self._idle = True
                    if not self._outbox and not self._closing:
                        await self._wake.wait()
                    self._idle = False
                    # Let what is published together (an epoch's end) gather into one write.
                    next_write = max(next_write, time.monotonic() + self.flush_interval)
                    continue
                if self._taken >= round_end:
                    if self._lingering():
                        wait = next_write - time.monotonic()
                        if wait > 0:
                            await self._linger(wait)
                            continue
                    next_write = time.monotonic() + self.flush_interval
                    round_end = self._taken + len(self._outbox)
                self._take_batch()
                if not self._inflight:  # all of it dropped (see _encoded)
                    self._progress()
                    continue
            batch = self._inflight
            try:
                await self._write(self._inflight_topic, batch)
            except TRANSIENT_ERRORS as exc:
                self._retried += 1
                if self._connected:
                    self._connected = False
                    self._outages += 1
                    outage_start = time.monotonic()
                    log.warning(
                        "bus unreachable (%s); keeping %d envelopes in the outbox and retrying "
                        "with backoff up to %.1f s",
                        exc,
                        self.depth,
                        self.backoff_max,
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.backoff_max)
                continue
            if not self._connected:
                self._connected = True
                log.warning(
                    "bus reachable again after %.1f s; writing the %d envelopes in the outbox",
                    time.monotonic() - outage_start,
                    self.depth,
                )
            backoff = self.backoff_initial
            self._inflight = []
            self._published += len(batch)
            self._batches += 1
            self._bytes += sum(map(len, batch))
            self._progress()

    async def _write(self, topic: str, batch: list[bytes]) -> None:
        """Append `batch`, minus what an earlier failed attempt turned out to have written."""
        last = self._last_ids.get(topic)
        if last is None and self._can_reconcile:
            # Where our entries will start, so that after a failed append we can look there.
            try:
                last = self._last_ids[topic] = await self.bus.last_id(topic)
            except BusAuthError as exc:
                self._cannot_reconcile(topic, exc)
        todo = batch
        if self._unsure and last is not None and self._can_reconcile:
            try:
                todo = await self._unwritten(topic, last, batch)
            except BusAuthError as exc:
                self._cannot_reconcile(topic, exc)
        self._unsure = False
        if todo:
            self._unsure = True  # until the bus confirms: a reply lost in transit is ambiguous
            ids = await self.bus.append(topic, todo, maxlen=self._maxlen_for(topic))
            self._unsure = False
            if ids:
                self._last_ids[topic] = ids[-1]

    def _cannot_reconcile(self, topic: str, exc: BusAuthError) -> None:
        # Checking is what spares duplicates, not what makes delivery safe: go on without it.
        self._can_reconcile = False
        log.warning(
            "publisher may not read topic %r back (%s); after a write that fails without a "
            "reply it will write the whole batch again, and consumers drop the repeats by "
            "envelope id; grant the bus user XREAD and XREVRANGE (docs/protocol.md section 7) "
            "to avoid them",
            topic,
            exc,
        )

    async def _unwritten(self, topic: str, last: str, batch: list[bytes]) -> list[bytes]:
        """Return `batch` minus the payloads already in `topic` after entry `last`."""
        missing = Counter(batch)
        scanned = 0
        # Our entries follow `last` closely; give up (and accept duplicates) if other writers
        # have buried them under more than this.
        while scanned < max(10_000, 4 * self.max_batch):
            entries = await self.bus.read(topic, last, count=1000, block=None)
            if not entries:
                break
            for entry in entries:
                if missing[entry.payload] > 0:
                    missing[entry.payload] -= 1
            last = entries[-1].id
            scanned += len(entries)
        self._last_ids[topic] = last
        todo = []
        for payload in reversed(batch):  # keep the last copies: missing counts are per payload
            if missing[payload] > 0:
                missing[payload] -= 1
                todo.append(payload)
        todo.reverse()
        self._recovered += len(batch) - len(todo)
        if len(todo) < len(batch):
            log.info(
                "%d of %d envelopes of the failed batch for %r had been written; not repeating "
                "them",
                len(batch) - len(todo),
                len(batch),
                topic,
            )
        return todo

    def _progress(self) -> None:
        if self._room_waiters:
            self._room.set()
        if self._thread_waiters:
            with self._room_cv:
                self._room_cv.notify_all()
        if self._flush_waiters:
            for target, future in self._flush_waiters:
                if target <= self._published and not future.done():
                    future.set_result(None)

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._failure = error
            log.error(
                "publisher stopped: the bus refused a write (%r); %d envelopes not written",
                error,
                self.depth,
            )
        for target, future in self._flush_waiters:
            if future.done():
                continue
            if target <= self._published:
                future.set_result(None)
            elif error is not None:
                failed = PublisherFailed(f"the bus refused a write: {error!r}")
                failed.__cause__ = error
                future.set_exception(failed)
            else:
                future.set_exception(PublisherClosed("publisher stopped before flushing"))
        # Wake producers waiting for room so that they see the failure instead of hanging.
        self._room.set()
        with self._room_cv:
            self._room_cv.notify_all()
