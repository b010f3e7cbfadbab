"""What only the Redis bus has: the wire layout in Redis, lost groups, timeouts, outages."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer, free_port

from bus import (
    BEGINNING,
    BusError,
    BusUnavailable,
    Consumer,
    Envelope,
    Topics,
    decode,
    encode,
    open_bus,
    tail,
)
from bus.redis_stream import SCRIPT_MAX_BYTES

TOPIC = Topics("test").events("run1")
DLQ = Topics("test").dead_letter()


def env(i: int) -> Envelope:
    return Envelope(type="ITERATION_COMPLETED", run_id="run1", source="t", data={"i": i})


async def drain(c: Consumer, until: int) -> None:
    """Poll `c` until it has settled `until` deliveries (bounded, so a bug cannot hang)."""
    for _ in range(200):
        s = c.stats
        if s.handled + s.dead_lettered + s.duplicates >= until:
            return
        await c.poll_once(block=0.05)
    pytest.fail(f"consumer settled only {c.stats} of {until} deliveries")


async def test_each_entry_is_one_env_field_readable_and_writable_by_any_client(
    redis_url: str,
) -> None:
    raw = redis.Redis.from_url(redis_url)
    bus = open_bus(redis_url)
    try:
        await bus.append(TOPIC, [encode(env(0))])
        [(_, fields)] = raw.xrange(TOPIC)
        assert list(fields) == [b"env"]
        assert decode(fields[b"env"]).data == {"i": 0}
        # Another client writes with plain XADD; one entry lacks the field altogether.
        raw.xadd(TOPIC, {"env": encode(env(1))})
        raw.xadd(TOPIC, {"something": "else"})
        seen: list[int] = []
        c = Consumer(bus, TOPIC, "g", lambda e: seen.append(e.data["i"]), dead_letter_topic=DLQ)
        await c.ensure_group()
        await drain(c, 3)
        assert seen == [0, 1]
        [(_, dl)] = raw.xrange(DLQ)
        assert "empty payload" in decode(dl[b"env"]).data["reason"]
    finally:
        raw.close()
        await bus.close()


@pytest.mark.parametrize("protocol", [2, 3])
async def test_entries_with_other_fields_are_read_by_their_env_field_in_resp2_and_resp3(
    redis_url: str, protocol: int
) -> None:
    raw = redis.Redis.from_url(redis_url)
    bus = open_bus(f"{redis_url}?protocol={protocol}")
    try:
        raw.xadd(TOPIC, {"env": encode(env(0))})
        raw.xadd(TOPIC, {"trace": "abc", "env": encode(env(1)), "z": "1"})
        raw.xadd(TOPIC, {"something": "else"})
        raw.xadd(TOPIC, {"env": encode(env(3))})
        assert [e.data["i"] async for e in tail(bus, TOPIC, follow=False)] == [0, 1, 3]
        seen: list[int] = []
        c = Consumer(bus, TOPIC, "g", lambda e: seen.append(e.data["i"]), dead_letter_topic=DLQ)
        await c.ensure_group()
        await drain(c, 4)
        assert seen == [0, 1, 3]
        assert c.stats.dead_lettered == 1
    finally:
        raw.close()
        await bus.close()


async def test_a_consumer_recreates_its_group_when_the_server_lost_it(redis_url: str) -> None:
    bus = open_bus(redis_url)
    seen: list[int] = []
    try:
        async with Consumer(bus, TOPIC, "g", lambda e: seen.append(e.data["i"]), block=0.05):
            await bus.append(TOPIC, [encode(env(0))])
            for _ in range(500):
                if seen:
                    break
                await asyncio.sleep(0.01)
            raw = redis.Redis.from_url(redis_url)
            raw.flushall()  # as a restart without persistence would
            raw.close()
            await bus.append(TOPIC, [encode(env(1))])
            for _ in range(500):
                if 1 in seen:
                    break
                await asyncio.sleep(0.01)
    finally:
        await bus.close()
    assert seen == [0, 1]


async def test_a_block_longer_than_the_socket_timeout_just_returns_nothing(
    redis_url: str,
) -> None:
    bus = open_bus(redis_url, socket_timeout=1.0)
    try:
        await bus.ensure_group(TOPIC, "g")
        assert await bus.read_group(TOPIC, "g", "c", count=1, block=2.0) == []
        assert await bus.read(TOPIC, BEGINNING, count=1, block=2.0) == []
    finally:
        await bus.close()


async def test_a_block_longer_than_the_default_socket_timeout_just_returns_nothing(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bus.redis_stream.SOCKET_TIMEOUT", 0.3)
    bus = open_bus(redis_url)
    try:
        assert await bus.read(TOPIC, BEGINNING, count=1, block=0.6) == []
    finally:
        await bus.close()


async def test_a_block_longer_than_a_socket_timeout_in_the_url_just_returns_nothing(
    redis_url: str,
) -> None:
    bus = open_bus(f"{redis_url}?socket_timeout=0.8")
    try:
        await bus.ensure_group(TOPIC, "g")
        assert await bus.read_group(TOPIC, "g", "c", count=1, block=1.5) == []
    finally:
        await bus.close()


async def test_a_server_that_stops_answering_is_reported_unavailable() -> None:
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never replies
    port = silent.sockets[0].getsockname()[1]
    bus = open_bus(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
    try:
        with pytest.raises(BusUnavailable, match=r"XLEN on topic .* no reply within 0\.3 s"):
            await asyncio.wait_for(bus.length(TOPIC), 10)  # (the 10 s only guard against a hang)
        with pytest.raises(BusUnavailable, match=r"XREAD on topic .* no reply within 0\.4 s"):
            await asyncio.wait_for(bus.read(TOPIC, BEGINNING, count=1, block=0.1), 10)
    finally:
        await bus.close()
        silent.close()


# Cancel each call after a different number of loop steps, so that some cancels arrive while
# redis-py is writing the command (where Python 3.11's asyncio.wait_for can swallow them).
CANCEL_STEPS = range(12)


# With a socket timeout in the URL, redis-py bounds socket writes with asyncio.wait_for itself.
@pytest.mark.parametrize("query", ["", "?socket_timeout=5"])
async def test_a_cancelled_bus_call_is_never_left_running(redis_url: str, query: str) -> None:
    bus = open_bus(redis_url + query)
    try:
        await bus.ensure_group(TOPIC, "g")
        outcomes = []
        for steps in CANCEL_STEPS:
            for call in (
                bus.read(TOPIC, BEGINNING, count=1, block=0.05),
                bus.read_group(TOPIC, "g", "c", count=1, block=0.05),
            ):
                task = asyncio.ensure_future(call)
                for _ in range(steps):
                    await asyncio.sleep(0)
                task.cancel()
                await asyncio.wait({task})
                outcomes.append("cancelled" if task.cancelled() else repr(task.result()))
        assert set(outcomes) == {"cancelled"}
    finally:
        await bus.close()


async def test_cancelling_a_task_that_follows_a_quiet_topic_ends_it(redis_url: str) -> None:
    bus = open_bus(redis_url)
    seen: list[Envelope] = []

    async def monitor() -> None:
        async for e in tail(bus, TOPIC, block=0.05):
            seen.append(e)

    try:
        for steps in CANCEL_STEPS:
            task = asyncio.create_task(monitor())
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.wait({task}, timeout=10)
            assert task.cancelled(), f"the tail went on after a cancel {steps} steps in"
        assert seen == []
    finally:
        await bus.close()


async def test_stop_ends_a_consumer_whatever_it_was_doing(redis_url: str) -> None:
    bus = open_bus(redis_url)
    try:
        for steps in CANCEL_STEPS:
            c = Consumer(bus, TOPIC, "g", lambda e: None, block=0.05, claim_every=0.01)
            await c.start()
            for _ in range(steps):
                await asyncio.sleep(0)
            stopping = asyncio.ensure_future(c.stop())
            done, _ = await asyncio.wait({stopping}, timeout=10)
            assert done, f"stop() {steps} steps in did not return"
    finally:
        await bus.close()


async def test_an_unreachable_server_raises_bus_unavailable_naming_the_topic() -> None:
    bus = open_bus(f"redis://user:hunter2@127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(BusUnavailable, match="XADD on topic 'test:run:run1:events'") as info:
            await bus.append(TOPIC, [encode(env(0))])
        assert "hunter2" not in str(info.value)
    finally:
        await bus.close()


async def test_a_unix_socket_url_works(tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    server = RedisServer(extra=["--unixsocket", str(sock)]).start()
    bus = open_bus(f"unix://{sock}?db=0")
    try:
        await bus.append(TOPIC, [encode(env(0))])
        assert await bus.length(TOPIC) == 1
    finally:
        await bus.close()
        server.close()


# -- appending a batch --------------------------------------------------------------------------


async def append_and_read_back(bus_url: str, batches: list[list[bytes]]) -> None:
    """Append each batch, then check the topic holds exactly them, in order, under their ids."""
    bus = open_bus(bus_url)
    try:
        ids: list[str] = []
        for batch in batches:
            ids += await bus.append(TOPIC, batch)
        entries = await bus.read(TOPIC, BEGINNING, count=10_000, block=None)
        assert [e.payload for e in entries] == [p for batch in batches for p in batch]
        assert [e.id for e in entries] == ids
    finally:
        await bus.close()


async def test_a_batch_is_appended_even_after_the_server_forgot_its_scripts(
    redis_url: str,
) -> None:
    payloads = [encode(env(i)) for i in range(30)]
    raw = redis.Redis.from_url(redis_url)
    bus = open_bus(redis_url)
    try:
        await bus.append(TOPIC, payloads[:10])
        raw.script_flush()  # as a restart does
        await bus.append(TOPIC, payloads[10:20])
        await bus.append(TOPIC, payloads[20:])
        assert [e.payload for e in await bus.read(TOPIC, BEGINNING, count=100, block=None)] == (
            payloads
        )
    finally:
        raw.close()
        await bus.close()


async def test_a_server_without_scripting_commands_still_takes_batches(tmp_path: Path) -> None:
    renamed = ["--rename-command", "EVAL", "", "--rename-command", "EVALSHA", ""]
    server = RedisServer(extra=renamed).start()
    try:
        payloads = [encode(env(i)) for i in range(100)]
        await append_and_read_back(server.url, [payloads[:50], payloads[50:]])
    finally:
        server.close()


async def test_a_batch_larger_than_one_script_call_takes_is_appended_in_order(
    redis_url: str,
) -> None:
    big = Envelope(type="BLOB", run_id="run1", source="t", data={"blob": b"x" * 300_000})
    n = SCRIPT_MAX_BYTES // 300_000 + 2
    payloads = [encode(big) for _ in range(n)]
    assert sum(map(len, payloads)) > SCRIPT_MAX_BYTES
    await append_and_read_back(redis_url, [payloads, payloads[:2]])


async def test_a_script_error_other_than_a_refusal_is_reported(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    raw.set(TOPIC, "not a stream")
    raw.close()
    bus = open_bus(redis_url)
    try:
        with pytest.raises(BusError, match="WRONGTYPE"):
            await bus.append(TOPIC, [encode(env(i)) for i in range(5)])
    finally:
        await bus.close()


class ReplyCutter:
    """A TCP proxy to a Redis server that, once armed, cuts the connection instead of passing
    the next reply on: the server has run the command, the client never hears of it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: list[asyncio.Future[object]] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._handlers)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers += [client_w, up_w]

        async def upstream() -> None:
            while data := await client_r.read(1 << 16):
                up_w.write(data)
                await up_w.drain()
            up_w.close()

        async def downstream() -> None:
            while data := await up_r.read(1 << 16):
                if self.armed:
                    self.armed = False
                    client_w.transport.abort()
                    up_w.close()
                    return
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        handler = asyncio.gather(upstream(), downstream(), return_exceptions=True)
        self._handlers.append(handler)
        await handler


@pytest.mark.parametrize("size", [1, 20])
async def test_a_write_whose_reply_is_lost_is_reported_and_not_resent_by_the_client(
    redis_server: RedisServer, redis_url: str, size: int
) -> None:
    # Resending it blindly would duplicate the entries; the Publisher instead looks at what
    # the server kept before retrying (tests/bus/test_faults.py).
    cutter = ReplyCutter(redis_server.port)
    bus = open_bus(await cutter.start())
    try:
        # Connected through the proxy, and with whatever a first append sets up in the server.
        await bus.append(TOPIC + ":warm-up", [encode(env(i)) for i in range(size)])
        cutter.armed = True
        with pytest.raises(BusUnavailable, match="XADD"):
            await bus.append(TOPIC, [encode(env(i)) for i in range(size)])
        assert cutter.connections == 1
        assert await bus.length(TOPIC) == size  # applied once; and the bus works again
    finally:
        await bus.close()
        await cutter.close()
