"""Faults on a real Redis: the server restarting under a publisher, a consumer dying mid-batch.

Each test starts its own durable redis-server (appendonly yes, appendfsync always) so that it
can stop, kill and restart it on the same port without disturbing the session's server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
import redis.asyncio as aioredis
from redis_server import RedisServer

from bus.base import BEGINNING
from bus.codec import decode, encode
from bus.consumer import Consumer
from bus.envelope import Envelope
from bus.factory import open_bus
from bus.publisher import Publisher

TOPIC = "t:run:faults:events"
N_ENVELOPES = 20_000


@pytest.fixture
def server() -> Iterator[RedisServer]:
    srv = RedisServer(durable=True).start()
    yield srv
    srv.close()


def iteration_completed(i: int) -> Envelope:
    return Envelope(
        type="ITERATION_COMPLETED",
        run_id="faults",
        source="trainer:0",
        epoch=i // 1000,
        iteration=i + 1,
        data={"loss": 1.0 / (i + 1), "lr": 0.01, "batch_size": 32},
    )


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


async def read_all(url: str, topic: str) -> list[str]:
    """Envelope ids in stream order, as a fresh reader sees them after the fact."""
    bus = open_bus(url)
    ids: list[str] = []
    after = BEGINNING
    try:
        while True:
            entries = await bus.read(topic, after, count=5000, block=None)
            if not entries:
                return ids
            ids.extend(decode(e.payload).id for e in entries)
            after = entries[-1].id
    finally:
        await bus.close()


# SIGTERM is a restart for maintenance (Redis exits cleanly); SIGKILL is a crash, where only
# what appendfsync always put on disk survives. Both must lose nothing and reorder nothing.
@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_publisher_rides_out_a_redis_restart_delivering_every_envelope_once_in_order(
    server: RedisServer, how: str, record_property
) -> None:
    envelopes = [iteration_completed(i) for i in range(N_ENVELOPES)]
    bus = open_bus(server.url)
    pub = Publisher(bus, max_batch=500, max_outbox=5000, backoff_initial=0.01, backoff_max=0.1)

    async def train() -> None:
        for i, env in enumerate(envelopes):
            await pub.publish(TOPIC, env)
            if i % 50 == 0:
                await asyncio.sleep(0)  # a step boundary: the trainer's loop lets others run

    trainer = asyncio.create_task(train())
    await wait_until(lambda: pub.stats().published >= 4000, "the first envelopes to be written")
    getattr(server, how)()
    await wait_until(lambda: not pub.stats().connected, "the publisher to notice the outage")
    # The outage lasts until the producer has filled the outbox and is being held back.
    await wait_until(lambda: pub.stats().blocked > 0, "the producer to block on a full outbox")
    assert not trainer.done()
    server.start()

    await asyncio.wait_for(trainer, 60)
    await pub.close(timeout=60)
    await bus.close()

    written = await read_all(server.url, TOPIC)
    # What consumers see, deduplicating by envelope id as they do: each once, in order.
    first_seen = list(dict.fromkeys(written))
    assert first_seen == [e.id for e in envelopes]
    # And on the stream itself: the batch in flight when the server went away may have been
    # applied without a reply; the publisher looked before retrying and did not repeat it.
    duplicates = len(written) - len(first_seen)
    record_property("raw_duplicates", duplicates)
    record_property("recovered", pub.stats().recovered)
    print(f"\n{how}: {duplicates} raw duplicates in {len(written)}; {pub.stats()}")
    assert duplicates == 0
    stats = pub.stats()
    assert (stats.published, stats.outbox, stats.outages) == (N_ENVELOPES, 0, 1)
    assert stats.retried >= 1


async def test_deliveries_of_a_consumer_killed_mid_batch_are_reclaimed_by_its_replica(
    server: RedisServer,
) -> None:
    n = 300
    bus = open_bus(server.url)
    envelopes = [iteration_completed(i) for i in range(n)]
    entry_ids = await bus.append(TOPIC, [encode(e) for e in envelopes])
    envelope_of_entry = {eid: e.id for eid, e in zip(entry_ids, envelopes, strict=True)}

    handled_by: dict[str, list[str]] = {"a": [], "b": []}
    hung = asyncio.Event()

    async def handle_a(env: Envelope) -> None:
        if len(handled_by["a"]) == 10:
            hung.set()
            await asyncio.Event().wait()  # stuck mid-batch, until the task is killed
        handled_by["a"].append(env.id)

    def handle_b(env: Envelope) -> None:
        handled_by["b"].append(env.id)

    common = {"batch": 50, "block": 0.05, "claim_every": 0.05}
    a = Consumer(bus, TOPIC, "workers", handle_a, name="a", claim_idle=30.0, **common)
    b_bus = open_bus(server.url)
    b = Consumer(b_bus, TOPIC, "workers", handle_b, name="b", claim_idle=0.3, **common)
    await a.ensure_group()

    a_task = asyncio.create_task(a.run())
    await asyncio.wait_for(hung.wait(), 10)
    raw = aioredis.from_url(server.url)
    pending_a = {
        envelope_of_entry[p["message_id"].decode()]
        for p in await raw.xpending_range(TOPIC, "workers", "-", "+", n, consumername="a")
    }
    assert len(pending_a) >= 40  # the rest of its batch: delivered to it, not acked

    a_task.cancel()  # killed: the stuck delivery and the rest of its batch are never acked
    await asyncio.gather(a_task, return_exceptions=True)

    async with b:
        await wait_until(
            lambda: len(handled_by["a"]) + len(set(handled_by["b"])) >= n, "b to finish", 20
        )
    summary = await raw.xpending(TOPIC, "workers")
    await raw.aclose()
    await bus.close()
    await b_bus.close()

    all_ids = {e.id for e in envelopes}
    assert set(handled_by["a"]) | set(handled_by["b"]) == all_ids  # each one was handled
    assert summary["pending"] == 0  # and acked by someone
    stuck = envelopes[10].id
    assert stuck not in handled_by["a"]
    assert stuck in handled_by["b"]
    # B got every delivery A left pending, by reclaiming it.
    still_pending_at_kill = pending_a - set(handled_by["a"])
    assert still_pending_at_kill <= set(handled_by["b"])
    assert b.stats.claimed >= len(still_pending_at_kill)
