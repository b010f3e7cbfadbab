"""What only the Redis bus has: the wire layout in Redis, lost groups, timeouts, outages."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer, free_port

from bus import (
    BEGINNING,
    BusUnavailable,
    Consumer,
    Envelope,
    Topics,
    decode,
    encode,
    open_bus,
)

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
