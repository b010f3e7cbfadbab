"""InMemoryBus: the Redis Streams semantics of bus.base.Bus inside one process.

Beyond Redis, a group read may name the envelope types its consumer handles (`types`): the
bus then passes the others over (delivered and acked at once, never pending) without handing
them out, and a reader blocked for such types is woken only by an entry of one of them. Each
entry's type is read once (`peek_type`) and kept, however many groups read the topic: the
workers of the embedded default, all on one event loop, share that work instead of each
peeking (and waking for) every iteration of the run.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bus.base import BEGINNING, NOW, Entry
from bus.codec import MAX_ENVELOPE_BYTES, peek_type
from bus.errors import BusError, InvalidURL, UnknownGroup
from bus.stream_ids import ZERO_ID, Key, format_id, parse_id
from bus.validate import check_count, check_maxlen, check_payloads

# An entry whose type has not been peeked yet (peek_type's None means "not peekable").
_UNREAD: object = object()


class Delivered(list):  # type: ignore[type-arg]
    """Entries a typed group read delivered, and how many of other types it passed over on
    the way (delivered and acked at once, unread): a consumer counts those as skipped."""

    passed_over: int = 0


@dataclass(slots=True)
class _Pending:
    consumer: str
    deliveries: int
    delivered_at: float  # time.monotonic() of the last delivery: idle time is measured from it


@dataclass
class _Group:
    last_delivered: Key
    # By entry id as delivered: an ack (one per entry of every group) then needs no parsing.
    pending: dict[str, _Pending] = field(default_factory=dict)


@dataclass
class _Topic:
    keys: list[Key] = field(default_factory=list)
    # Each entry's id as a string, formatted once at append rather than at every read.
    ids: list[str] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)
    # Each entry's envelope type once peeked (_UNREAD until a typed read or waiter needs it).
    types: list[object] = field(default_factory=list)
    last: Key = (0, 0)
    groups: dict[str, _Group] = field(default_factory=dict)
    # Readers blocked on this topic, each a future completed on its own loop when entries
    # arrive, with the types it waits for (None: any entry wakes it).
    waiters: list[tuple[asyncio.Future[None], frozenset[str] | None]] = field(default_factory=list)

    def after(self, key: Key, count: int) -> tuple[int, int]:
        """The index range of the (at most `count`) entries after `key`."""
        start = bisect.bisect_right(self.keys, key)
        return start, min(start + count, len(self.keys))

    def type_at(self, i: int) -> str | None:
        """The envelope type of entry `i` (None if not peekable), peeked once and kept."""
        kind = self.types[i]
        if kind is _UNREAD:
            kind = self.types[i] = peek_type(self.payloads[i])
        return kind  # type: ignore[return-value]

    def wanted_among(self, first: int, types: frozenset[str]) -> bool:
        """Whether an entry from index `first` on is of one of `types` (or not peekable)."""
        kinds, payloads = self.types, self.payloads
        for i in range(first, len(kinds)):
            kind = kinds[i]
            if kind is _UNREAD:  # type_at inlined: this runs per new entry and typed reader
                kind = kinds[i] = peek_type(payloads[i])
            if kind is None or kind in types:
                return True
        return False

    def find(self, key: Key) -> bytes | None:
        i = bisect.bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            return self.payloads[i]
        return None


class _Storage:
    """The topics of one named in-memory bus; a lock makes it safe across threads and loops."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.topics: dict[str, _Topic] = {}

    def topic(self, name: str) -> _Topic:
        found = self.topics.get(name)
        if found is None:
            found = self.topics[name] = _Topic()
        return found

    def group(self, topic: str, group: str) -> tuple[_Topic, _Group]:
        t = self.topics.get(topic)
        g = t.groups.get(group) if t is not None else None
        if t is None or g is None:
            raise UnknownGroup(f"consumer group {group!r} does not exist on topic {topic!r}")
        return t, g


# name -> storage, alive while some InMemoryBus handle holds it (like a server with clients).
_REGISTRY: weakref.WeakValueDictionary[str, _Storage] = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.Lock()
_ANONYMOUS = itertools.count(1)


def _storage_named(name: str) -> _Storage:
    with _REGISTRY_LOCK:
        storage = _REGISTRY.get(name)
        if storage is None:
            storage = _REGISTRY[name] = _Storage()
        return storage


def _woken(t: _Topic, first: int) -> list[asyncio.Future[None]]:
    """Take off `t`'s waiters those that entries from index `first` on wake (lock held)."""
    if not t.waiters:
        return []
    woken, kept = [], []
    for waiter in t.waiters:
        fut, types = waiter
        if types is None or t.wanted_among(first, types):
            woken.append(fut)
        else:
            kept.append(waiter)
    t.waiters = kept
    return woken


# The result of a waiter's future completed by its timer rather than by an append.
_EXPIRED: object = object()


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(_EXPIRED)  # type: ignore[arg-type]


def _wake(fut: asyncio.Future[None]) -> None:
    if fut.done():
        return
    loop = fut.get_loop()
    try:
        same_loop = asyncio.get_running_loop() is loop
    except RuntimeError:
        same_loop = False
    if same_loop:
        fut.set_result(None)
    else:
        # RuntimeError: that reader's loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))


class InMemoryBus:
    """A bus held in process memory; handles opened with the same name share one storage.

    `InMemoryBus("run1")` and `open_bus("memory://run1")` see the same topics, from any
    thread or event loop, for as long as some handle on that name is alive. `InMemoryBus()`
    gets a fresh anonymous name (its `url` reopens it).
    """

    # Group reads take `types` (see the module's docstring): bus.Consumer passes its own.
    filters_types = True

    def __init__(self, name: str | None = None, *, max_payload: int = MAX_ENVELOPE_BYTES) -> None:
        if name is None:
            name = f"anonymous-{next(_ANONYMOUS)}-{id(self):x}"
        if not name or "/" in name:
            raise InvalidURL(f"in-memory bus name {name!r} must be non-empty and without '/'")
        self.name = name
        self.url = f"memory://{name}"
        self.max_payload = max_payload
        self._storage = _storage_named(name)
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **options: int) -> InMemoryBus:
        """Open the in-memory bus named by `memory://name` (`memory://` means "default")."""
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise InvalidURL(f"{url!r} is not a memory:// URL")
        name = (parts.netloc + parts.path).strip("/") or "default"
        return cls(name, **options)

    def _live(self) -> _Storage:
        if self._closed:
            raise BusError(f"bus {self.url} is closed")
        return self._storage

    async def _wait_for(
        self,
        topic: str,
        attempt: Callable[[_Topic], list[Entry]],
        block: float | None,
        types: frozenset[str] | None = None,
    ) -> list[Entry]:
        """Run `attempt` under the lock until it finds entries or `block` seconds pass; while
        blocked, only an entry of `types` (any entry if None) wakes it to try again."""
        storage = self._live()
        deadline = None if not block or block <= 0 else time.monotonic() + block
        loop = asyncio.get_running_loop()
        while True:
            with storage.lock:
                t = storage.topic(topic)
                found = attempt(t)
                remaining = 0.0 if deadline is None else deadline - time.monotonic()
                if found or remaining <= 0:
                    return found
                # Registered under the same lock as the attempt, so no append can slip between.
                fut: asyncio.Future[None] = loop.create_future()
                waiter = (fut, types)
                t.waiters.append(waiter)
            # A bare timer, not asyncio.wait(timeout=): this runs at every idle read of every
            # consumer, on the loop the embedded stack shares with the trainer's publisher.
            timer = loop.call_later(remaining, _expire, fut)
            try:
                await fut
            finally:
                timer.cancel()
                if not fut.done() or fut.cancelled() or fut.result() is _EXPIRED:
                    fut.cancel()
                    with storage.lock:  # not woken by an append: still registered
                        if waiter in t.waiters:
                            t.waiters.remove(waiter)

    async def append(
        self, topic: str, payloads: Sequence[bytes], *, maxlen: int | None = None
    ) -> list[str]:
        """Append payloads in order; return their entry ids."""
        storage = self._live()
        data = check_payloads(topic, payloads, self.max_payload)
        check_maxlen(topic, maxlen)
        now_ms = int(time.time() * 1000)
        ids = []
        with storage.lock:
            t = storage.topic(topic)
            first = len(t.keys)
            t.types.extend([_UNREAD] * len(data))
            for payload in data:
                ms, seq = t.last
                key = (now_ms, 0) if now_ms > ms else (ms, seq + 1)
                t.last = key
                t.keys.append(key)
                t.payloads.append(payload)
                ids.append(format_id(key))
            t.ids.extend(ids)
            if maxlen is not None:
                # Approximate like Redis' MAXLEN ~: at least `maxlen` entries are kept, and
                # trimming happens in chunks so that appending stays amortised O(1).
                slack = max(1, maxlen // 16)
                if len(t.keys) >= maxlen + slack or maxlen == 0:
                    drop = len(t.keys) - maxlen
                    del t.keys[:drop]
                    del t.ids[:drop]
                    del t.payloads[:drop]
                    del t.types[:drop]
                    first = max(0, first - drop)
            waiters = _woken(t, first)
        for fut in waiters:
            _wake(fut)
        return ids

    async def ensure_group(self, topic: str, group: str, start: str = BEGINNING) -> None:
        """Create the consumer group (and the topic) if absent; an existing group is kept."""
        storage = self._live()
        with storage.lock:
            t = storage.topic(topic)
            if group not in t.groups:
                first = t.last if start == NOW else parse_id(start)
                t.groups[group] = _Group(last_delivered=first)

    async def read_group(
        self,
        topic: str,
        group: str,
        consumer: str,
        *,
        count: int,
        block: float | None,
        types: Collection[str] | None = None,
    ) -> list[Entry]:
        """Deliver up to `count` new entries to `consumer`, waiting up to `block` seconds.

        With `types`, only entries of those types (and entries whose type cannot be peeked)
        are delivered, and only they end a wait; the others are passed over, acked unread, and
        counted in the returned `Delivered.passed_over`.
        """
        check_count(count)
        storage = self._live()
        if types is not None:
            wanted = frozenset(types)
            passed = 0

            def typed(t: _Topic) -> list[Entry]:
                nonlocal passed
                got = self._typed_attempt(t, topic, group, consumer, count, wanted)
                passed += got.passed_over
                got.passed_over = passed  # of every attempt: the one returned tells them all
                return got

            return await self._wait_for(topic, typed, block, wanted)

        def attempt(t: _Topic) -> list[Entry]:
            _, g = storage.group(topic, group)
            start, stop = t.after(g.last_delivered, count)
            if start >= stop:
                return []
            now = time.monotonic()
            ids = t.ids[start:stop]
            pending = g.pending
            for entry_id in ids:
                pending[entry_id] = _Pending(consumer, 1, now)
            g.last_delivered = t.keys[stop - 1]
            return list(map(Entry, ids, t.payloads[start:stop]))

        return await self._wait_for(topic, attempt, block)

    def _typed_attempt(
        self, t: _Topic, topic: str, group: str, consumer: str, count: int, wanted: frozenset[str]
    ) -> Delivered:
        """A group read of up to `count` entries of `wanted` types (the caller holds the lock).

        Returns an empty Delivered when it found none, even if it passed some over (a blocking
        read then waits on).
        """
        _, g = self._storage.group(topic, group)
        start = bisect.bisect_right(t.keys, g.last_delivered)
        end = len(t.keys)
        out = Delivered()
        if start >= end:
            return out
        kinds, ids, payloads = t.types, t.ids, t.payloads
        pending = g.pending
        now = time.monotonic()
        i = start
        while i < end:
            kind = kinds[i]
            if kind is _UNREAD:  # type_at inlined: this runs per entry and typed reader
                kind = kinds[i] = peek_type(payloads[i])
            if kind is None or kind in wanted:
                if len(out) == count:
                    break
                entry_id = ids[i]
                pending[entry_id] = _Pending(consumer, 1, now)
                out.append(Entry(entry_id, payloads[i]))
            i += 1
        out.passed_over = (i - start) - len(out)
        g.last_delivered = t.keys[i - 1]
        return out

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        """Mark deliveries as handled, removing them from the group's pending list."""
        storage = self._live()
        with storage.lock:
            t = storage.topics.get(topic)
            g = t.groups.get(group) if t is not None else None
            if g is None:  # like XACK: nothing pending there, nothing to do (ids checked)
                for entry_id in ids:
                    parse_id(entry_id)
                return
            pop = g.pending.pop
            for entry_id in ids:
                # The id as delivered, by far the common case; else another spelling of it
                # ("5" for "5-0"), or no id at all (parse_id raises ValueError, as XACK errs).
                if pop(entry_id, None) is None:
                    pop(format_id(parse_id(entry_id)), None)

    async def ack_and_read_group(
        self,
        topic: str,
        group: str,
        consumer: str,
        ids: Sequence[str],
        *,
        count: int,
        types: Collection[str] | None = None,
    ) -> list[Entry]:
        """Ack `ids`, then deliver up to `count` new entries (of `types`) without waiting."""
        await self.ack(topic, group, ids)
        return await self.read_group(topic, group, consumer, count=count, block=None, types=types)

    async def claim_stale(
        self, topic: str, group: str, consumer: str, *, min_idle: float, count: int
    ) -> list[Entry]:
        """Move deliveries pending longer than `min_idle` seconds to `consumer` (XAUTOCLAIM)."""
        check_count(count)
        storage = self._live()
        with storage.lock:
            t, g = storage.group(topic, group)
            now = time.monotonic()
            out: list[Entry] = []
            for entry_id in sorted(g.pending, key=parse_id):
                if len(out) >= count:
                    break
                p = g.pending[entry_id]
                if now - p.delivered_at < min_idle:
                    continue
                payload = t.find(parse_id(entry_id))
                if payload is None:  # trimmed away: Redis 7 drops it from the pending list
                    del g.pending[entry_id]
                    continue
                p.consumer, p.deliveries, p.delivered_at = consumer, p.deliveries + 1, now
                out.append(Entry(entry_id, payload, p.deliveries))
            return out

    async def pending(self, topic: str, group: str) -> dict[str, int]:
        """How many deliveries made through `group` each consumer holds unacked."""
        storage = self._live()
        with storage.lock:
            _, g = storage.group(topic, group)
            return dict(Counter(p.consumer for p in g.pending.values()))

    async def touch(self, topic: str, group: str, consumer: str, ids: Sequence[str]) -> list[str]:
        """Reset the idle time of those `ids` still pending for `consumer`; return them."""
        storage = self._live()
        held = []
        with storage.lock:
            _, g = storage.group(topic, group)
            now = time.monotonic()
            for entry_id in ids:
                p = g.pending.get(entry_id) or g.pending.get(format_id(parse_id(entry_id)))
                if p is not None and p.consumer == consumer:
                    p.delivered_at = now
                    held.append(entry_id)
        return held

    async def read(self, topic: str, after: str, *, count: int, block: float | None) -> list[Entry]:
        """Read up to `count` entries after id `after` (BEGINNING, NOW or an id) without a group."""
        check_count(count)
        storage = self._live()
        if after == NOW:
            with storage.lock:
                start = storage.topic(topic).last
        else:
            start = parse_id(after)

        def attempt(t: _Topic) -> list[Entry]:
            first, stop = t.after(start, count)
            return list(map(Entry, t.ids[first:stop], t.payloads[first:stop]))

        return await self._wait_for(topic, attempt, block)

    async def last_id(self, topic: str) -> str:
        """Id of the newest entry in the topic, or "0-0" when it has none."""
        storage = self._live()
        with storage.lock:
            t = storage.topics.get(topic)
            return format_id(t.keys[-1]) if t is not None and t.keys else ZERO_ID

    async def length(self, topic: str) -> int:
        """Number of entries currently in the topic."""
        storage = self._live()
        with storage.lock:
            t = storage.topics.get(topic)
            return len(t.keys) if t is not None else 0

    async def close(self) -> None:
        """Mark this handle closed; other handles on the same name keep working."""
        self._closed = True

    def __repr__(self) -> str:
        return f"InMemoryBus({self.name!r})"
