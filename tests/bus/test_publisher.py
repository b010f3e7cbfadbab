"""The trainer's publisher on both buses: batching, order, outages, back-pressure, counters."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from bus import open_bus
from bus.base import BEGINNING, Bus
from bus.codec import MAX_ENVELOPE_BYTES, decode, encode
from bus.envelope import Envelope
from bus.errors import (
    BusUnavailable,
    EnvelopeTooLarge,
    OutboxFull,
    PublisherClosed,
    PublisherFailed,
)
from bus.memory import InMemoryBus
from bus.publisher import Publisher
from bus.threaded_publisher import ThreadedPublisher

EVENTS = "t:run:r1:events"
CONTROL = "t:run:r1:control"

# Short backoff so that outages in these tests cost milliseconds.
FAST = {"backoff_initial": 0.005, "backoff_max": 0.02}


CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid_ms(ulid: str) -> int:
    """The milliseconds in a ULID: its first 10 characters, base32 (Crockford's alphabet)."""
    return sum(CROCKFORD.index(c) << (5 * (9 - k)) for k, c in enumerate(ulid[:10]))


def env(i: int, kind: str = "ITERATION_COMPLETED") -> Envelope:
    return Envelope(type=kind, run_id="r1", source="trainer:0", iteration=i, data={"i": i})


class Spy:
    """A real bus behind a switch: records each confirmed append and can play unreachable."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.url = bus.url
        self.appends: list[tuple[str, list[int], int | None]] = []
        self.down = False  # while True, appends fail as if the server were gone
        self.failures = 0
        # Set to k: the next append writes its first k payloads, then the reply is "lost".
        self.apply_then_fail: int | None = None

    async def append(
        self, topic: str, payloads: Sequence[bytes], *, maxlen: int | None = None
    ) -> list[str]:
        if self.down:
            self.failures += 1
            raise BusUnavailable(f"test outage on topic {topic!r}")
        if self.apply_then_fail is not None:
            applied, self.apply_then_fail = self.apply_then_fail, None
            await self.bus.append(topic, payloads[:applied], maxlen=maxlen)
            self.failures += 1
            raise BusUnavailable(f"connection lost before the reply on topic {topic!r}")
        ids = await self.bus.append(topic, payloads, maxlen=maxlen)
        self.appends.append((topic, [decode(p).iteration for p in payloads], maxlen))
        return ids

    def __getattr__(self, name: str) -> object:
        return getattr(self.bus, name)


# The `bus` and `bus_url` fixtures (tests/bus/conftest.py) give each test both buses.


async def iterations(bus: Bus, topic: str) -> list[int]:
    entries = await bus.read(topic, BEGINNING, count=100_000, block=None)
    return [decode(e.payload).iteration for e in entries]


async def test_everything_published_is_written_in_order_across_topics(bus) -> None:
    spy = Spy(bus)
    pub = Publisher(spy, max_batch=3, flush_interval=0)
    topics = [EVENTS, EVENTS, CONTROL, EVENTS, CONTROL, CONTROL, CONTROL, CONTROL, EVENTS]
    for i, topic in enumerate(topics):
        await pub.publish(topic, env(i))
    await pub.flush()

    written = [(topic, i) for topic, batch, _ in spy.appends for i in batch]
    assert written == list(zip(topics, range(len(topics)), strict=True))
    # A batch never mixes topics and never exceeds max_batch.
    assert [len(batch) for _, batch, _ in spy.appends] == [2, 1, 1, 3, 1, 1]
    assert await iterations(bus, EVENTS) == [0, 1, 3, 8]
    assert await iterations(bus, CONTROL) == [2, 4, 5, 6, 7]
    await pub.close()


async def test_envelopes_published_together_share_pipelined_batches(bus) -> None:
    spy = Spy(bus)
    pub = Publisher(spy, max_batch=4, flush_interval=0)
    envelopes = [env(i) for i in range(10)]
    for e in envelopes:  # no await in between: the writer gets all ten at once
        pub.publish_nowait(EVENTS, e)
    await pub.flush()

    assert [batch for _, batch, _ in spy.appends] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    stats = pub.stats()
    assert (stats.enqueued, stats.published, stats.batches, stats.outbox) == (10, 10, 3, 0)
    assert stats.bytes == sum(len(encode(e)) for e in envelopes)
    assert await iterations(bus, EVENTS) == list(range(10))
    await pub.close()


async def test_a_write_round_writes_every_topic_it_found_without_lingering_between(bus) -> None:
    # A run's events and the registry entry published together must land together: the
    # second topic's batch may not wait out another linger after the first topic's write.
    spy = Spy(bus)
    pub = Publisher(spy, max_batch=3, flush_interval=3600)  # only a full outbox starts a round
    for i, topic in enumerate([EVENTS, EVENTS, CONTROL]):  # the third fills it: a round begins
        pub.publish_nowait(topic, env(i))
    deadline = time.monotonic() + 10  # a bound, not an expectation: written at once
    while len(spy.appends) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)

    assert [(topic, batch) for topic, batch, _ in spy.appends] == [(EVENTS, [0, 1]), (CONTROL, [2])]
    pub.publish_nowait(EVENTS, env(3))  # after the round: it waits for the next one
    await asyncio.sleep(0.2)
    assert pub.stats().outbox == 1
    await pub.close()


def test_hurry_writes_what_was_published_without_waiting_out_the_linger(bus_url) -> None:
    # An epoch's figures a voter waits for: written now, with what came before them.
    pub = ThreadedPublisher(lambda: open_bus(bus_url), flush_interval=3600)
    try:
        for i in range(3):
            pub.publish(EVENTS, env(i))
        pub.hurry()
        deadline = time.monotonic() + 10  # a bound, not an expectation: written at once
        while pub.stats().published < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pub.stats().published == 3
        pub.publish(EVENTS, env(3))  # not hurried: it waits for the next round
        time.sleep(0.2)
        assert pub.stats().outbox == 1
    finally:
        pub.close()


def test_a_thread_s_envelopes_are_written_whether_the_writer_naps_or_sleeps(bus_url) -> None:
    # Fed steadily, the writer looks again every linger instead of being woken by each new
    # envelope; left unfed, it sleeps until woken. An envelope must never be stranded by either.
    linger = 0.02
    pub = ThreadedPublisher(lambda: open_bus(bus_url), flush_interval=linger)

    def written(count: int) -> int:
        deadline = time.monotonic() + 10  # a bound, not an expectation: within a linger or two
        while pub.stats().published < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return pub.stats().published

    try:
        for i in range(5):  # a steady producer: one envelope per half a linger
            pub.publish(EVENTS, env(i))
            time.sleep(linger / 2)
        assert written(5) == 5
        pub.publish(EVENTS, env(5))  # the writer naps: a round has just ended
        assert written(6) == 6
        time.sleep(40 * linger)  # long unfed: the writer sleeps until an envelope wakes it
        pub.publish(EVENTS, env(6))
        assert written(7) == 7
        pub.publish(EVENTS, env(7))
        pub.flush(10)  # a flush ends a nap at once
        assert pub.stats().outbox == 0
    finally:
        pub.close()


async def test_maxlen_is_passed_to_every_append(bus) -> None:
    spy = Spy(bus)
    async with Publisher(spy, maxlen=500, flush_interval=0) as pub:
        await pub.publish(EVENTS, env(0))
        await pub.publish(CONTROL, env(1))
    assert [maxlen for _, _, maxlen in spy.appends] == [500, 500]


async def test_maxlen_per_topic_trims_only_the_topics_it_names(bus) -> None:
    async with Publisher(bus, maxlen={EVENTS: 100}, max_batch=200) as pub:
        for i in range(3000):
            await pub.publish(EVENTS, env(i))
            await pub.publish(CONTROL, env(i))
    events, control = await bus.length(EVENTS), await bus.length(CONTROL)
    assert 100 <= events < 3000  # approximate trimming keeps at least the cap
    assert control == 3000  # no cap named: never trimmed


def test_a_bad_per_topic_maxlen_names_the_topic() -> None:
    with pytest.raises(ValueError, match="maxlen for topic 'x'"):
        Publisher(InMemoryBus(), maxlen={"x": 0})


async def test_outage_keeps_the_outbox_and_flushes_it_in_order_on_recovery(bus, caplog) -> None:
    caplog.set_level(logging.INFO, logger="bus.publisher")
    spy = Spy(bus)
    pub = Publisher(spy, max_batch=5, flush_interval=0, **FAST)
    await pub.publish(EVENTS, env(0))
    await pub.flush()

    spy.down = True
    for i in range(1, 21):
        await pub.publish(EVENTS if i % 3 else CONTROL, env(i))
    while spy.failures < 4:  # several retries, with backoff in between
        await asyncio.sleep(0.005)
    stats = pub.stats()
    assert not stats.connected
    assert stats.outbox == 20
    assert stats.published == 1

    spy.down = False
    await pub.flush()
    stats = pub.stats()
    assert stats.connected
    assert (stats.published, stats.outbox, stats.outages) == (21, 0, 1)
    assert stats.retried == spy.failures
    assert await iterations(bus, EVENTS) == [i for i in range(21) if i % 3 or i == 0]
    assert await iterations(bus, CONTROL) == [i for i in range(1, 21) if i % 3 == 0]

    # One warning when the outage starts and one on recovery, not one per retry.
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unreachable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1
    await pub.close()


@pytest.mark.parametrize("applied", [0, 3, 6])
async def test_a_batch_applied_before_its_reply_was_lost_is_not_written_twice(
    bus, applied: int
) -> None:
    spy = Spy(bus)
    pub = Publisher(spy, max_batch=6, flush_interval=0, **FAST)
    await pub.publish(EVENTS, env(0))
    await pub.flush()
    await bus.append(EVENTS, [encode(env(100))])  # another writer's entry in between

    spy.apply_then_fail = applied
    for i in range(1, 7):
        pub.publish_nowait(EVENTS, env(i))
    await pub.flush()

    assert await iterations(bus, EVENTS) == [0, 100, 1, 2, 3, 4, 5, 6]
    stats = pub.stats()
    assert (stats.published, stats.retried, stats.recovered) == (7, 1, applied)


async def test_the_very_first_batch_is_not_written_twice_either(bus) -> None:
    await bus.append(EVENTS, [encode(env(100))])  # the topic has history from before
    spy = Spy(bus)
    spy.apply_then_fail = 2
    pub = Publisher(spy, flush_interval=0, **FAST)
    for i in range(4):
        pub.publish_nowait(EVENTS, env(i))
    await pub.flush()
    assert await iterations(bus, EVENTS) == [100, 0, 1, 2, 3]
    assert pub.stats().recovered == 2


async def test_full_outbox_blocks_the_producer_until_there_is_room(bus, caplog) -> None:
    spy = Spy(bus)
    spy.down = True
    pub = Publisher(spy, max_batch=2, max_outbox=4, flush_interval=0, **FAST)
    for i in range(4):
        await pub.publish(EVENTS, env(i))
    with pytest.raises(OutboxFull, match="full"):
        pub.publish_nowait(EVENTS, env(99))

    blocked = asyncio.create_task(pub.publish(EVENTS, env(4)))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert pub.stats().outbox == 4
    assert any("outbox is full" in r.getMessage() for r in caplog.records)

    spy.down = False
    await blocked
    await pub.flush()
    assert await iterations(bus, EVENTS) == [0, 1, 2, 3, 4]
    assert pub.stats().blocked == 2  # the refused publish_nowait and the waiting publish
    await pub.close()


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (Envelope("X", "r1", "t", data={"blob": b"x" * MAX_ENVELOPE_BYTES}), EnvelopeTooLarge, "X"),
        (Envelope("Y", "r1", "t", data={"obj": object()}), TypeError, "not msgpack-native"),
        ({"type": "Z"}, TypeError, "Envelope"),
    ],
    ids=["too-large", "not-native", "not-an-envelope"],
)
async def test_a_bad_envelope_fails_in_the_caller_and_nothing_is_queued(
    bus, bad: object, error: type[Exception], match: str
) -> None:
    pub = Publisher(bus, flush_interval=0)
    with pytest.raises(error, match=match):
        await pub.publish(EVENTS, bad)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        pub.publish_nowait(EVENTS, bad)  # type: ignore[arg-type]
    assert pub.stats().enqueued == 0
    await pub.publish(EVENTS, env(7))  # the publisher is unharmed
    await pub.close()
    assert await iterations(bus, EVENTS) == [7]


async def test_empty_topic_is_refused(bus) -> None:
    pub = Publisher(bus)
    with pytest.raises(ValueError, match="topic"):
        await pub.publish("", env(0))


async def test_close_flushes_then_refuses_new_envelopes(bus) -> None:
    pub = Publisher(bus, flush_interval=0.05)  # a long linger: close must not wait it out
    for i in range(50):
        pub.publish_nowait(EVENTS, env(i))
    await pub.close()
    assert await iterations(bus, EVENTS) == list(range(50))
    with pytest.raises(PublisherClosed, match="closed"):
        await pub.publish(EVENTS, env(50))
    await pub.close()  # closing twice is harmless


async def test_flush_and_close_time_out_while_the_bus_stays_down(bus) -> None:
    spy = Spy(bus)
    spy.down = True
    pub = Publisher(spy, **FAST)
    for i in range(3):
        await pub.publish(EVENTS, env(i))
    with pytest.raises(TimeoutError, match="3 envelopes still unwritten"):
        await pub.flush(timeout=0.05)
    with pytest.raises(TimeoutError, match="3 envelopes still unwritten"):
        await pub.close(timeout=0.05)
    assert await iterations(bus, EVENTS) == []
    with pytest.raises(PublisherClosed, match="3 envelopes unwritten"):
        await pub.close()  # the writer is gone: say so rather than wait forever


async def test_a_write_the_bus_refuses_for_good_stops_the_publisher_loudly(redis_url) -> None:
    import redis.asyncio as aioredis

    raw = aioredis.from_url(redis_url)
    await raw.set(EVENTS, "not a stream")  # XADD on it fails with WRONGTYPE, retrying is futile
    await raw.aclose()
    bus = open_bus(redis_url)
    pub = Publisher(bus, **FAST)
    await pub.publish(EVENTS, env(0))
    with pytest.raises(PublisherFailed, match="WRONGTYPE"):
        await pub.flush()
    with pytest.raises(PublisherFailed, match="1 envelopes were not written"):
        await pub.publish(EVENTS, env(1))
    with pytest.raises(PublisherFailed):
        await pub.close()
    await bus.close()


async def test_a_producer_thread_publishes_and_flushes_through_the_public_api(bus) -> None:
    # What ThreadedPublisher is built on: start() on the loop, then a thread of its own.
    pub = Publisher(bus, max_batch=8)
    pub.start()

    def produce() -> None:
        for i in range(20):
            pub.publish_from_thread(EVENTS, env(i))

    await asyncio.to_thread(produce)
    assert pub.enqueued == 20
    await pub.flush(30, upto=pub.enqueued)
    assert pub.stats().published == 20
    assert await iterations(bus, EVENTS) == list(range(20))
    await pub.close()


async def test_envelopes_the_writer_builds_keep_their_place_their_time_and_their_data(
    bus,
) -> None:
    # The trainer's per-step envelopes are built by the writer (publish_later_from_thread),
    # the rest encoded by their producer: on the bus they are one sequence, in publishing order.
    pub = Publisher(bus, max_batch=8, flush_interval=0.01)
    pub.start()
    sent: list[tuple[int, float, float]] = []

    def produce() -> None:
        for i in range(30):
            before = time.time()
            if i % 3:
                pub.publish_later_from_thread(
                    EVENTS, "ITERATION_COMPLETED", "r1", "trainer:0", {"i": i}, 0, i
                )
            else:
                pub.publish_from_thread(EVENTS, env(i, "EPOCH_COMPLETED"))
            sent.append((i, before, time.time()))

    await asyncio.to_thread(produce)
    await pub.flush(30, upto=pub.enqueued)
    entries = await bus.read(EVENTS, BEGINNING, count=100, block=None)
    envs = [decode(e.payload) for e in entries]
    assert [(e.iteration, e.data) for e in envs] == [(i, {"i": i}) for i in range(30)]
    assert [e.type for e in envs] == [
        "EPOCH_COMPLETED" if i % 3 == 0 else "ITERATION_COMPLETED" for i in range(30)
    ]
    for e, (i, before, after) in zip(envs, sent, strict=True):
        assert before <= e.ts <= after  # stamped when published, not when written
        if i % 3:  # and the writer made its id of that moment
            assert int(e.ts * 1000) == ulid_ms(e.id)
    await pub.close()


async def test_an_envelope_the_writer_cannot_encode_is_dropped_and_flush_does_not_wait(
    bus, caplog
) -> None:
    pub = Publisher(bus)
    pub.start()

    def produce() -> None:
        pub.publish_later_from_thread(
            EVENTS, "ITERATION_COMPLETED", "r1", "t", {"x": object()}, 0, 1
        )
        pub.publish_later_from_thread(EVENTS, "ITERATION_COMPLETED", "r1", "t", {"x": 1.0}, 0, 2)

    with caplog.at_level(logging.ERROR, logger="bus.publisher"):
        await asyncio.to_thread(produce)
        await pub.flush(30, upto=pub.enqueued)
    assert await iterations(bus, EVENTS) == [2]
    assert "ITERATION_COMPLETED of run r1 for t:run:r1:events dropped" in caplog.text
    await pub.close()


def test_publisher_needs_a_running_loop_and_says_what_to_use_instead() -> None:
    pub = Publisher(InMemoryBus())
    with pytest.raises(RuntimeError, match="ThreadedPublisher"):
        pub.publish_nowait(EVENTS, env(0))


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_batch", 0), ("max_outbox", -1), ("flush_interval", -0.1), ("backoff_initial", 0)],
)
def test_bad_options_are_refused_by_name(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        Publisher(InMemoryBus(), **{option: value})


# ---- the thread-backed publisher, for synchronous trainers ---------------------------------


@pytest.fixture
def threaded_url(bus_url: str) -> Iterator[str]:
    keep = InMemoryBus.from_url(bus_url) if bus_url.startswith("memory") else None
    yield bus_url
    del keep


def test_threaded_publisher_serves_synchronous_callers(threaded_url: str) -> None:
    with ThreadedPublisher(lambda: open_bus(threaded_url), max_batch=64) as pub:
        for i in range(500):
            pub.publish(EVENTS if i % 5 else CONTROL, env(i))
        pub.flush()
        stats = pub.stats()
        assert (stats.published, stats.outbox) == (500, 0)
        assert stats.batches >= 500 // 64

    async def read_back() -> tuple[list[int], list[int]]:
        bus = open_bus(threaded_url)
        try:
            return await iterations(bus, EVENTS), await iterations(bus, CONTROL)
        finally:
            await bus.close()

    events, control = asyncio.run(read_back())
    assert events == [i for i in range(500) if i % 5]
    assert control == [i for i in range(500) if i % 5 == 0]


def test_threaded_publisher_blocks_a_sync_producer_while_full(threaded_url: str) -> None:
    spies: list[Spy] = []

    def make() -> Spy:
        spies.append(Spy(open_bus(threaded_url)))
        spies[0].down = True
        return spies[0]

    pub = ThreadedPublisher(make, max_batch=2, max_outbox=3, **FAST)
    for i in range(3):
        pub.publish(EVENTS, env(i))
    with pytest.raises(TimeoutError, match="stayed full"):
        pub.publish(EVENTS, env(99), timeout=0.05)

    producer = threading.Thread(target=lambda: [pub.publish(EVENTS, env(i)) for i in (3, 4)])
    producer.start()
    producer.join(0.1)
    assert producer.is_alive()  # waiting for room: nothing was dropped
    spies[0].down = False
    producer.join()
    pub.close()
    assert [i for _, batch, _ in spies[0].appends for i in batch] == [0, 1, 2, 3, 4]
    assert pub.stats().published == 5
    with pytest.raises(PublisherClosed):
        pub.publish(EVENTS, env(5))


def test_threaded_publisher_submit_runs_bus_work_on_its_loop_and_returns_the_result(
    threaded_url: str,
) -> None:
    async def look(bus: Bus) -> tuple[int, bool, asyncio.AbstractEventLoop, int]:
        where = asyncio.get_running_loop(), threading.get_ident()
        return await bus.length(EVENTS), bus is pub.bus, *where

    async def fail(bus: Bus) -> None:
        raise ValueError(f"refused by {bus.url}")

    with ThreadedPublisher(lambda: open_bus(threaded_url)) as pub:
        pub.publish(EVENTS, env(0))
        pub.flush()
        length, same_bus, loop, thread = pub.submit(look).result(timeout=10)
        assert (length, same_bus, loop) == (1, True, pub.loop)
        assert thread != threading.get_ident()  # the publisher's own thread
        with pytest.raises(ValueError, match="refused by"):
            pub.submit(fail).result(timeout=10)
    with pytest.raises(PublisherClosed, match="closed"):
        pub.submit(look)


async def test_threaded_publisher_can_be_used_from_sync_code_inside_a_running_loop() -> None:
    bus = InMemoryBus()
    pub = ThreadedPublisher(bus)  # a Bus instance: used from the publisher's thread only
    for i in range(20):
        pub.publish(EVENTS, env(i))  # as a sync Engine handler called by arun() would
    pub.close()
    assert await iterations(bus, EVENTS) == list(range(20))


def test_threaded_publisher_reports_a_failing_bus_factory() -> None:
    def broken() -> InMemoryBus:
        raise ConnectionRefusedError("no bus here")

    with pytest.raises(ConnectionRefusedError, match="no bus here"):
        ThreadedPublisher(broken)
