"""RedisStreamBus: bus.base.Bus on Redis Streams (one stream per topic) through redis.asyncio."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis import exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bus.base import BEGINNING, NOW, Entry
from bus.codec import MAX_ENVELOPE_BYTES
from bus.errors import BusAuthError, BusError, BusUnavailable, InvalidURL, UnknownGroup
from bus.frozen import filler
from bus.stream_ids import ZERO_ID, parse_id
from bus.urls import redact
from bus.validate import check_count, check_maxlen, check_payloads

if sys.version_info >= (3, 11, 3):
    from asyncio import timeout as _deadline
else:  # as redis-py does: asyncio.timeout misbehaves before 3.11.3, async-timeout comes with it
    from async_timeout import timeout as _deadline

# The one field of a stream entry; its value is the msgpack envelope (docs/protocol.md).
FIELD = b"env"

_EntryFiller = filler(Entry)

# Seconds a command may go unanswered (beyond its BLOCK time) before the server is deemed
# unreachable; the `socket_timeout` option sets another bound, or None for none.
SOCKET_TIMEOUT = 5.0

# Margin kept between a blocking read and a socket timeout that redis-py enforces (one given
# in the URL's query string), so that a long BLOCK is never mistaken for a dead server.
_BLOCK_MARGIN = 0.5

# Appends several payloads with one command: one XADD per payload, in order, like the pipeline
# it replaces, but parsed by the server as a single command instead of one per entry (redis-py
# spends far more time packing and parsing N commands than Redis spends adding N entries).
# KEYS[1] is the topic, ARGV[1] the MAXLEN ~ bound or "" for none, ARGV[2..] the payloads.
_APPEND_SCRIPT = f"""
local call, key, maxlen, ids = redis.call, KEYS[1], ARGV[1], {{}}
if maxlen == '' then
  for i = 2, #ARGV do
    ids[i - 1] = call('XADD', key, '*', '{FIELD.decode()}', ARGV[i])
  end
else
  for i = 2, #ARGV do
    ids[i - 1] = call('XADD', key, 'MAXLEN', '~', maxlen, '*', '{FIELD.decode()}', ARGV[i])
  end
end
return ids
"""
_APPEND_SHA = hashlib.sha1(_APPEND_SCRIPT.encode()).hexdigest()

# Batches with more payload bytes than this go through the pipeline: a script is one command,
# so Redis buffers it whole (client-query-buffer-limit) and runs it without serving others.
SCRIPT_MAX_BYTES = 4 << 20


def _refuses_scripts(exc: rex.ResponseError) -> bool:
    """Whether an error of the scripted append means "no scripts here", not a bad request.

    An ACL user without EVAL/EVALSHA gets NOPERM for the command; one without XADD gets a
    script error (NOPERM from Redis 7.2 on); a server may have renamed the commands away.
    Each fails before anything is written, so the pipeline may then do the append instead.
    """
    message = str(exc)
    return (
        isinstance(exc, rex.NoPermissionError)
        or "can't run this command" in message
        or "unknown command" in message
    )


def _translated(exc: Exception, where: str) -> BusError:
    """The bus error for a redis-py error raised by the command described by `where`."""
    if isinstance(exc, (rex.AuthenticationError, rex.AuthorizationError, rex.NoPermissionError)):
        return BusAuthError(f"{where}: {exc}")
    if isinstance(exc, (rex.ConnectionError, rex.TimeoutError, OSError)):
        return BusUnavailable(f"{where}: {type(exc).__name__}: {exc}")
    message = str(exc)
    # UNBLOCKED: the stream or group was deleted while this client was blocked on it.
    if message.startswith("NOGROUP") or (
        message.startswith("UNBLOCKED") and "no longer exists" in message
    ):
        return UnknownGroup(f"{where}: {exc}")
    return BusError(f"{where}: {exc}")


def _raise_lost_cancel(cause: BaseException | None) -> None:
    """Raise CancelledError if the current task was cancelled but a command returned anyway.

    On Python 3.11 redis-py writes through asyncio.wait_for (whenever a socket timeout is
    set, as by default), which returns normally when the cancel arrives as the write
    completes: the task would go on as if never cancelled, e.g. a cancelled Tail would keep
    following its topic. The task still counts the request (Task.cancelling(), Python 3.11+),
    so the cancel takes effect here, once the command is over.
    """
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    if cancelling is not None and cancelling():
        raise asyncio.CancelledError("cancelled during a Redis command") from cause


# What redis-py raises for a failed command, translated by _translated.
_REDIS_ERRORS = (
    rex.AuthenticationError,
    rex.AuthorizationError,
    rex.NoPermissionError,
    rex.ConnectionError,
    rex.TimeoutError,
    OSError,
    rex.ResponseError,
)


class _Guard:
    """Bounds a command's time and translates redis-py errors into bus errors that name the
    command, topic and server; also re-raises a cancellation that redis-py swallowed (see
    `_raise_lost_cancel`).

    A class, not an @asynccontextmanager: a consumer enters one twice per batch, and the
    generator machinery would add half the cost of the deadline itself.
    """

    __slots__ = ("_deadline", "_limit", "_topic", "_url", "_what")

    def __init__(self, what: str, topic: str, url: str, limit: float | None) -> None:
        self._what = what
        self._topic = topic
        self._url = url
        self._limit = limit
        self._deadline = _deadline(limit)

    async def __aenter__(self) -> None:
        await self._deadline.__aenter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool:
        try:
            await self._deadline.__aexit__(exc_type, exc, tb)
        except asyncio.TimeoutError as expired:  # ours, made of the cancellation it caused
            exc = expired
        if exc is None:
            _raise_lost_cancel(None)
            return False
        where = f"{self._what} on topic {self._topic!r} at {self._url}"
        if isinstance(exc, asyncio.TimeoutError):  # redis-py raises its own type
            _raise_lost_cancel(exc)
            raise BusUnavailable(f"{where}: no reply within {self._limit:g} s") from exc
        if isinstance(exc, _REDIS_ERRORS):
            _raise_lost_cancel(exc)
            raise _translated(exc, where) from exc
        return False


def _entries(rows: Any, deliveries: int = 1) -> list[Entry]:
    """Entries of reply rows `[id, fields]`, fields raw (`[name, value, ...]`) or as a dict."""
    out = []
    append = out.append
    for entry_id, fields in rows or ():
        if entry_id is None or fields is None:  # deleted entry (Redis < 7 reports it as nil)
            continue
        if type(fields) is list and len(fields) == 2 and fields[0] == FIELD:
            payload = fields[1]  # what our producers write
        else:
            if not isinstance(fields, dict):
                fields = dict(zip(fields[::2], fields[1::2], strict=True))
            # An entry written by some other tool without our field yields an empty payload,
            # which the consumer dead-letters as undecodable instead of crashing.
            payload = fields.get(FIELD, b"")
        # Built through a filler (bus/frozen.py): Entry's own __init__ costs three times as much.
        entry = _EntryFiller()
        entry.id = entry_id.decode() if type(entry_id) is bytes else str(entry_id)
        entry.payload = payload
        entry.deliveries = deliveries
        entry.__class__ = Entry
        append(entry)
    return out


def _stream_rows(reply: Any) -> Any:
    """The entry rows of a raw one-stream XREAD/XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return next(iter(reply.values()))
    return reply[0][1]


def _resp(command: tuple[Any, ...]) -> bytes:
    """A command (str, bytes and int arguments) in the Redis protocol's request form.

    The consumer's XACK carries one argument per entry: redis-py's packer, a Python call or
    two per argument, costs more than the rest of acking a batch.
    """
    args = [a if type(a) is bytes else str(a).encode() for a in command]
    return b"".join([b"*%d\r\n" % len(args), *[b"$%d\r\n%s\r\n" % (len(a), a) for a in args]])


def _raw(response: Any, **options: Any) -> Any:
    """A response callback that leaves the reply as the server sent it."""
    return response


class RedisStreamBus:
    """A bus on a Redis server: each topic is a stream whose entries carry one `env` field.

    `url` is any redis-py URL: `redis://[user:password@]host:port/db` or `rediss://` for TLS
    (TLS options such as `ssl_ca_certs` or `ssl_cert_reqs` go in the query string or in
    `options`). `options` are passed to `redis.asyncio.from_url`.

    The client does not retry failed commands itself (unless `options` has a `retry`): the
    callers (Publisher, Consumer, Tail) own retrying, so an outage reaches them at once, and
    a write whose reply was lost is not blindly resent (the publisher first checks what the
    server kept). A command left unanswered for `socket_timeout` seconds (default
    SOCKET_TIMEOUT) beyond the time it may block fails as BusUnavailable.
    """

    def __init__(self, url: str, *, max_payload: int = MAX_ENVELOPE_BYTES, **options: Any) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise InvalidURL(f"{redact(url)!r} is not a redis://, rediss:// or unix:// URL")
        self.url = url
        self._shown_url = redact(url)  # once: errors name the server, never its password
        self.max_payload = max_payload
        options["decode_responses"] = False  # payloads are binary msgpack
        options.setdefault("retry", Retry(NoBackoff(), 0))
        # The bus bounds each command itself rather than letting redis-py bound each socket
        # operation: redis-py puts every write through asyncio.wait_for when it has a socket
        # timeout, which on Python 3.11 costs a task per command, lets other tasks run between
        # queueing a command and sending it, and can swallow a cancel().
        self.timeout: float | None = options.pop("socket_timeout", SOCKET_TIMEOUT)
        options["socket_timeout"] = None
        options.setdefault("socket_connect_timeout", self.timeout)
        try:
            self._redis = aioredis.from_url(url, **options)
        except ValueError as exc:
            raise InvalidURL(f"cannot use Redis URL {redact(url)!r}: {exc}") from exc
        # A socket_timeout in the URL's query string overrides the option, and redis-py then
        # enforces it on every read, blocking ones included: keep BLOCK under it.
        timeout = self._redis.connection_pool.connection_kwargs.get("socket_timeout")
        if timeout is not None:
            self.timeout = timeout
        self._max_block = None if timeout is None else max(0.001, timeout - _BLOCK_MARGIN)
        # The reads' replies are parsed here, straight from the server's nested lists: redis-py
        # would first turn every entry's fields into a dict, a cost paid per entry.
        for command in ("XREAD", "XREADGROUP"):
            self._redis.set_response_callback(command, _raw)
        # Cleared for good once the server refuses the append script (ACL, renamed commands).
        self._scripting = True

    def _errors(self, what: str, topic: str, block: int | None = None) -> _Guard:
        """`async with` this around a command: see _Guard; `block` is its BLOCK in ms, if any."""
        limit = None if self.timeout is None else self.timeout + (block or 0) / 1000
        return _Guard(what, topic, self._shown_url, limit)

    def _block_ms(self, block: float | None) -> int | None:
        if not block or block <= 0:
            return None  # no BLOCK: return at once (BLOCK 0 would mean forever in Redis)
        if self._max_block is not None:
            block = min(block, self._max_block)
        return max(1, round(block * 1000))

    async def append(
        self, topic: str, payloads: Sequence[bytes], *, maxlen: int | None = None
    ) -> list[str]:
        """Append payloads in order in one round trip; return their entry ids."""
        data = check_payloads(topic, payloads, self.max_payload)
        if not data:
            return []
        check_maxlen(topic, maxlen)
        async with self._errors("XADD", topic):
            if len(data) == 1:
                ids = [await self._redis.xadd(topic, {FIELD: data[0]}, maxlen=maxlen)]
            elif self._scripting and sum(map(len, data)) <= SCRIPT_MAX_BYTES:
                ids = await self._append_scripted(topic, data, maxlen)
                if ids is None:
                    ids = await self._append_pipelined(topic, data, maxlen)
            else:
                ids = await self._append_pipelined(topic, data, maxlen)
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def _append_scripted(
        self, topic: str, data: list[bytes], maxlen: int | None
    ) -> list[Any] | None:
        """XADD every payload from one server-side script; None if scripts are refused."""
        args = (topic, "" if maxlen is None else maxlen, *data)
        try:
            try:
                return await self._redis.evalsha(_APPEND_SHA, 1, *args)
            except rex.NoScriptError:
                # Not cached (yet, or any more after a restart or SCRIPT FLUSH): EVAL runs it
                # and caches it, and needs no SCRIPT LOAD permission.
                return await self._redis.eval(_APPEND_SCRIPT, 1, *args)
        except rex.ResponseError as exc:
            if not _refuses_scripts(exc):
                raise
            message = str(exc).lower()
            if "eval" in message or "unknown command" in message:
                self._scripting = False  # for good: this user or server has no scripting
            return None

    async def _append_pipelined(
        self, topic: str, data: list[bytes], maxlen: int | None
    ) -> list[Any]:
        """XADD every payload in one pipeline (no transaction)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for payload in data:
                pipe.xadd(topic, {FIELD: payload}, maxlen=maxlen)
            return await pipe.execute()

    async def ensure_group(self, topic: str, group: str, start: str = BEGINNING) -> None:
        """Create the consumer group (and the stream) if absent; an existing group is kept."""
        if start != NOW:
            parse_id(start)  # refuse a malformed id as InMemoryBus does, naming it
        async with self._errors("XGROUP CREATE", topic):
            try:
                await self._redis.xgroup_create(topic, group, id=start, mkstream=True)
            except rex.ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise

    async def read_group(
        self, topic: str, group: str, consumer: str, *, count: int, block: float | None
    ) -> list[Entry]:
        """Deliver up to `count` new entries to `consumer`, waiting up to `block` seconds."""
        check_count(count)
        block_ms = self._block_ms(block)
        async with self._errors("XREADGROUP", topic, block_ms):
            if block_ms is None:
                read = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS")
                (reply,) = await self._commands((*read, topic, ">"))
            else:
                reply = await self._redis.xreadgroup(
                    group, consumer, {topic: ">"}, count=count, block=block_ms
                )
        return _entries(_stream_rows(reply))

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        """Mark deliveries as handled, removing them from the group's pending list."""
        if ids:
            async with self._errors("XACK", topic):
                # Encoded here, in one C loop: cheaper than redis-py's encoder, called per id.
                try:
                    raw_ids = list(map(str.encode, ids))
                except TypeError:  # some given as bytes
                    raw_ids = [i.encode() if isinstance(i, str) else i for i in ids]
                await self._commands(("XACK", topic, group, *raw_ids))

    async def ack_and_read_group(
        self, topic: str, group: str, consumer: str, ids: Sequence[str], *, count: int
    ) -> list[Entry]:
        """Ack `ids`, then deliver up to `count` new entries without waiting: one round trip.

        What a consumer does after each batch, as XACK and XREADGROUP in one pipeline; the
        acks are applied first. On an error neither may be relied upon (XACK is idempotent:
        ack again).
        """
        check_count(count)
        read = ("XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", topic, ">")
        if not ids:
            async with self._errors("XREADGROUP", topic):
                (reply,) = await self._commands(read)
            return _entries(_stream_rows(reply))
        async with self._errors("XACK+XREADGROUP", topic):
            _, reply = await self._commands(("XACK", topic, group, *ids), read)
        return _entries(_stream_rows(reply))

    async def _commands(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send `commands` on one pooled connection in one write; their replies, in order.

        For the consumer's hot path, which does not block: redis-py's own command path
        (retries, observability hooks, response callbacks) and its pipelines cost more Python
        per command than the whole command takes Redis. A connection left mid-reply by an
        error or a cancel is dropped, never reused.
        """
        pool = self._redis.connection_pool
        packed = b"".join([_resp(command) for command in commands])
        conn = await pool.get_connection()
        try:
            await conn.send_packed_command(packed, check_health=False)
            replies = [await conn.read_response() for _ in commands]
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)
        return replies

    async def claim_stale(
        self, topic: str, group: str, consumer: str, *, min_idle: float, count: int
    ) -> list[Entry]:
        """Move deliveries pending longer than `min_idle` seconds to `consumer` (XAUTOCLAIM)."""
        check_count(count)
        idle_ms = max(0, round(min_idle * 1000))
        claimed: list[Entry] = []
        cursor: Any = ZERO_ID
        async with self._errors("XAUTOCLAIM", topic):
            # XAUTOCLAIM scans a bounded part of the pending list per call: follow its cursor.
            while len(claimed) < count:
                reply = await self._redis.xautoclaim(
                    topic, group, consumer, idle_ms, start_id=cursor, count=count - len(claimed)
                )
                cursor = reply[0]
                claimed.extend(_entries(reply[1]))
                if cursor in (b"0-0", ZERO_ID):
                    break
            if not claimed:
                return []
            # XAUTOCLAIM does not report delivery counts; the dead-letter rule needs them.
            async with self._redis.pipeline(transaction=False) as pipe:
                for e in claimed:
                    pipe.xpending_range(topic, group, e.id, e.id, 1, consumername=consumer)
                rows = await pipe.execute()
        out = []
        for e, row in zip(claimed, rows, strict=True):
            if row:  # empty: acked or claimed by another consumer in between
                out.append(Entry(e.id, e.payload, int(row[0]["times_delivered"])))
        return out

    async def pending(self, topic: str, group: str) -> dict[str, int]:
        """How many deliveries made through `group` each consumer holds unacked."""
        async with self._errors("XPENDING", topic):
            summary = await self._redis.xpending(topic, group)
        held = {}
        for row in summary["consumers"] or ():
            name = row["name"]
            held[name.decode() if isinstance(name, bytes) else name] = int(row["pending"])
        return held

    async def touch(self, topic: str, group: str, consumer: str, ids: Sequence[str]) -> list[str]:
        """Reset the idle time of those `ids` still pending for `consumer`; return them.

        XPENDING first, per id and for this consumer only: XCLAIM with min-idle 0 would take a
        delivery another consumer has claimed since. JUSTID leaves the delivery count alone.
        """
        if not ids:
            return []
        for entry_id in ids:
            parse_id(entry_id)
        async with self._errors("XPENDING+XCLAIM", topic):
            async with self._redis.pipeline(transaction=False) as pipe:
                for entry_id in ids:
                    pipe.xpending_range(topic, group, entry_id, entry_id, 1, consumername=consumer)
                rows = await pipe.execute()
            held = [entry_id for entry_id, row in zip(ids, rows, strict=True) if row]
            if held:
                await self._redis.xclaim(topic, group, consumer, 0, held, justid=True)
        return held

    async def read(self, topic: str, after: str, *, count: int, block: float | None) -> list[Entry]:
        """Read up to `count` entries after id `after` (BEGINNING, NOW or an id) without a group."""
        check_count(count)
        if after != NOW:
            parse_id(after)
        block_ms = self._block_ms(block)
        async with self._errors("XREAD", topic, block_ms):
            reply = await self._redis.xread({topic: after}, count=count, block=block_ms)
        return _entries(_stream_rows(reply))

    async def last_id(self, topic: str) -> str:
        """Id of the newest entry in the topic, or "0-0" when it has none."""
        async with self._errors("XREVRANGE", topic):
            rows = await self._redis.xrevrange(topic, count=1)
        entries = _entries(rows)
        return entries[0].id if entries else ZERO_ID

    async def length(self, topic: str) -> int:
        """Number of entries currently in the topic."""
        async with self._errors("XLEN", topic):
            return int(await self._redis.xlen(topic))

    async def ping(self) -> None:
        """Check that the server answers and accepts the credentials."""
        async with self._errors("PING", "-"):
            await self._redis.ping()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    def __repr__(self) -> str:
        return f"RedisStreamBus({redact(self.url)!r})"
