"""The bus contract: every test runs on InMemoryBus and on RedisStreamBus (see conftest.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bus import (
    BEGINNING,
    DEAD_LETTER,
    MAX_ENVELOPE_BYTES,
    NOW,
    Bus,
    Consumer,
    Entry,
    Envelope,
    EnvelopeTooLarge,
    InvalidURL,
    RedisStreamBus,
    Rejected,
    Topics,
    UnknownGroup,
    decode,
    encode,
    open_bus,
    tail,
)

TOPICS = Topics("test")
TOPIC = TOPICS.events("run1")
DLQ = TOPICS.dead_letter()


def env(i: int, **fields: Any) -> Envelope:
    """The i-th test envelope; its data carries `i` so that order and identity can be checked."""
    fields.setdefault("data", {"i": i})
    return Envelope(
        type="ITERATION_COMPLETED", run_id="run1", source="trainer:0", iteration=i, **fields
    )


async def put(bus: Bus, *numbers: int) -> list[str]:
    """Append envelopes 0..n (as given) in one call; return their entry ids."""
    return await bus.append(TOPIC, [encode(env(i)) for i in numbers])


def numbers(entries: list[Entry]) -> list[int]:
    return [decode(e.payload).data["i"] for e in entries]


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until `check()` holds; fail after `timeout` s (a hang guard, not a timing test)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {check}")
        await asyncio.sleep(0.01)


async def dead_letters(bus: Bus) -> list[Envelope]:
    return [decode(e.payload) for e in await bus.read(DLQ, BEGINNING, count=1000, block=None)]


async def nothing_pending(bus: Bus, group: str) -> bool:
    return await bus.claim_stale(TOPIC, group, "inspector", min_idle=0, count=1000) == []


def consumer(bus: Bus, group: str, handler: Callable[[Envelope], Any], **options: Any) -> Consumer:
    """A consumer with short blocks; reclaim is slow unless a test asks for it."""
    options = {"claim_idle": 5.0, "block": 0.05, "dead_letter_topic": DLQ, **options}
    return Consumer(bus, TOPIC, group, handler, **options)


# -- the stream primitives --------------------------------------------------------------------


async def test_entries_keep_append_order_with_increasing_ids(bus: Bus) -> None:
    ids = await put(bus, *range(10))
    ids += await put(bus, 10)
    ids += await put(bus, *range(11, 20))
    keys = [tuple(int(part) for part in i.split("-")) for i in ids]
    assert keys == sorted(keys) and len(set(keys)) == 20
    entries = await bus.read(TOPIC, BEGINNING, count=100, block=None)
    assert [e.id for e in entries] == ids
    assert numbers(entries) == list(range(20))
    assert await bus.length(TOPIC) == 20
    assert await bus.last_id(TOPIC) == ids[-1]


async def test_entries_read_are_immutable_entry_values(bus: Bus) -> None:
    payload = encode(env(0))
    [entry_id] = await bus.append(TOPIC, [payload])
    await bus.ensure_group(TOPIC, "g")
    [delivered] = await bus.read_group(TOPIC, "g", "c", count=10, block=None)
    [read] = await bus.read(TOPIC, BEGINNING, count=10, block=None)
    assert delivered == read == Entry(entry_id, payload, 1)
    assert type(delivered) is Entry and type(read) is Entry
    with pytest.raises(dataclasses.FrozenInstanceError):
        delivered.deliveries = 2  # type: ignore[misc]


async def test_a_missing_topic_reads_as_empty(bus: Bus) -> None:
    assert await bus.length("test:nothing") == 0
    assert await bus.last_id("test:nothing") == "0-0"
    assert await bus.read("test:nothing", BEGINNING, count=10, block=None) == []


async def test_read_pages_through_entries_after_a_given_id(bus: Bus) -> None:
    ids = await put(bus, *range(7))
    assert numbers(await bus.read(TOPIC, ids[2], count=3, block=None)) == [3, 4, 5]
    assert numbers(await bus.read(TOPIC, ids[5], count=3, block=None)) == [6]
    assert await bus.read(TOPIC, NOW, count=3, block=None) == []


async def test_blocking_read_wakes_when_an_entry_arrives(bus: Bus) -> None:
    ids = await put(bus, 0)
    reader = asyncio.create_task(bus.read(TOPIC, ids[-1], count=10, block=60))
    await asyncio.sleep(0.05)
    await put(bus, 1)
    # Woken by the append, not by the end of the 60 s block (the bound only guards a hang).
    assert numbers(await asyncio.wait_for(reader, 10)) == [1]


async def test_blocking_reads_return_nothing_when_nothing_arrives(bus: Bus) -> None:
    await bus.ensure_group(TOPIC, "g")
    assert await bus.read_group(TOPIC, "g", "c", count=1, block=0.05) == []
    assert await bus.read(TOPIC, BEGINNING, count=1, block=0.05) == []


async def test_non_bytes_payloads_are_refused(bus: Bus) -> None:
    with pytest.raises(TypeError, match="payload 1"):
        await bus.append(TOPIC, [b"ok", "text"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="count"):
        await bus.read(TOPIC, BEGINNING, count=0, block=None)


async def test_malformed_ids_are_refused_naming_them(bus: Bus) -> None:
    with pytest.raises(ValueError, match="'12-abc'"):
        await bus.ensure_group(TOPIC, "g", "12-abc")
    with pytest.raises(ValueError, match="'later'"):
        await bus.read(TOPIC, "later", count=1, block=None)


# -- consumer groups --------------------------------------------------------------------------


async def test_a_group_delivers_each_entry_once(bus: Bus) -> None:
    await put(bus, 0, 1, 2)
    await bus.ensure_group(TOPIC, "g")
    first = await bus.read_group(TOPIC, "g", "c1", count=10, block=None)
    assert numbers(first) == [0, 1, 2]
    assert [e.deliveries for e in first] == [1, 1, 1]
    assert await bus.read_group(TOPIC, "g", "c1", count=10, block=None) == []
    await put(bus, 3)
    assert numbers(await bus.read_group(TOPIC, "g", "c2", count=10, block=None)) == [3]


async def test_consumers_of_one_group_split_the_entries(bus: Bus) -> None:
    await put(bus, *range(10))
    await bus.ensure_group(TOPIC, "g")
    a = await bus.read_group(TOPIC, "g", "a", count=4, block=None)
    b = await bus.read_group(TOPIC, "g", "b", count=100, block=None)
    assert numbers(a) == [0, 1, 2, 3]
    assert numbers(b) == [4, 5, 6, 7, 8, 9]


async def test_every_group_gets_every_entry(bus: Bus) -> None:
    await put(bus, 0, 1)
    await bus.ensure_group(TOPIC, "tracker")
    await bus.ensure_group(TOPIC, "checkpoint")
    assert numbers(await bus.read_group(TOPIC, "tracker", "t", count=10, block=None)) == [0, 1]
    assert numbers(await bus.read_group(TOPIC, "checkpoint", "c", count=10, block=None)) == [0, 1]


async def test_ensure_group_keeps_an_existing_group_where_it_is(bus: Bus) -> None:
    await put(bus, 0, 1)
    await bus.ensure_group(TOPIC, "g")
    await bus.read_group(TOPIC, "g", "c", count=10, block=None)
    await bus.ensure_group(TOPIC, "g", BEGINNING)
    assert await bus.read_group(TOPIC, "g", "c", count=10, block=None) == []


async def test_reading_a_group_that_does_not_exist_names_it(bus: Bus) -> None:
    await put(bus, 0)
    with pytest.raises(UnknownGroup, match="nope"):
        await bus.read_group(TOPIC, "nope", "c", count=1, block=None)


@pytest.mark.parametrize(
    ("start", "expected"), [("beginning", [0, 1, 2, 3, 4]), ("now", [3, 4]), ("id", [2, 3, 4])]
)
async def test_a_group_starts_at_the_beginning_now_or_after_an_id(
    bus: Bus, start: str, expected: list[int]
) -> None:
    ids = await put(bus, 0, 1, 2)
    await bus.ensure_group(TOPIC, "late", {"beginning": BEGINNING, "now": NOW, "id": ids[1]}[start])
    await put(bus, 3, 4)
    assert numbers(await bus.read_group(TOPIC, "late", "c", count=10, block=None)) == expected


async def test_blocking_group_read_wakes_when_an_entry_arrives(bus: Bus) -> None:
    await bus.ensure_group(TOPIC, "g", NOW)
    reader = asyncio.create_task(bus.read_group(TOPIC, "g", "c", count=10, block=60))
    await asyncio.sleep(0.05)
    await put(bus, 7)
    assert numbers(await asyncio.wait_for(reader, 10)) == [7]


async def test_acked_deliveries_stay_handled_and_unacked_ones_can_be_claimed(bus: Bus) -> None:
    await put(bus, 0, 1, 2)
    await bus.ensure_group(TOPIC, "g")
    got = await bus.read_group(TOPIC, "g", "c1", count=10, block=None)
    await bus.ack(TOPIC, "g", [got[0].id, got[2].id])
    claimed = await bus.claim_stale(TOPIC, "g", "c2", min_idle=0, count=10)
    assert numbers(claimed) == [1]
    assert claimed[0].deliveries == 2


async def test_deliveries_of_a_dead_consumer_are_reclaimed_after_min_idle(bus: Bus) -> None:
    await put(bus, 0, 1, 2)
    await bus.ensure_group(TOPIC, "g")
    await bus.read_group(TOPIC, "g", "dead", count=10, block=None)  # and never acks
    assert await bus.claim_stale(TOPIC, "g", "live", min_idle=60, count=10) == []
    await asyncio.sleep(0.15)
    claimed = await bus.claim_stale(TOPIC, "g", "live", min_idle=0.1, count=10)
    assert numbers(claimed) == [0, 1, 2]
    assert [e.deliveries for e in claimed] == [2, 2, 2]
    # Claiming makes them fresh again, and `count` bounds each claim.
    assert await bus.claim_stale(TOPIC, "g", "other", min_idle=60, count=10) == []
    again = await bus.claim_stale(TOPIC, "g", "other", min_idle=0, count=2)
    assert numbers(again) == [0, 1]
    assert [e.deliveries for e in again] == [3, 3]


async def test_pending_says_what_each_consumer_holds_unacked(bus: Bus) -> None:
    await put(bus, 0, 1, 2)
    await bus.ensure_group(TOPIC, "g")
    assert await bus.pending(TOPIC, "g") == {}
    first = await bus.read_group(TOPIC, "g", "c1", count=2, block=None)
    second = await bus.read_group(TOPIC, "g", "c2", count=2, block=None)
    assert await bus.pending(TOPIC, "g") == {"c1": 2, "c2": 1}
    await bus.ack(TOPIC, "g", [first[0].id, second[0].id])
    assert await bus.pending(TOPIC, "g") == {"c1": 1}
    # Claimed, a delivery is held by its new consumer until acked.
    [claimed] = await bus.claim_stale(TOPIC, "g", "c3", min_idle=0, count=10)
    assert await bus.pending(TOPIC, "g") == {"c3": 1}
    await bus.ack(TOPIC, "g", [claimed.id])
    assert await bus.pending(TOPIC, "g") == {}
    with pytest.raises(UnknownGroup, match="nope"):
        await bus.pending(TOPIC, "nope")


async def test_touch_keeps_work_in_progress_from_being_reclaimed(bus: Bus) -> None:
    await put(bus, 0, 1)
    await bus.ensure_group(TOPIC, "g")
    got = await bus.read_group(TOPIC, "g", "busy", count=10, block=None)
    await asyncio.sleep(0.15)
    # Touched by its holder, a delivery is fresh again; an id it does not hold is not touched.
    held = await bus.touch(TOPIC, "g", "busy", [got[0].id])
    assert held == [got[0].id]
    assert await bus.touch(TOPIC, "g", "stranger", [got[1].id]) == []
    claimed = await bus.claim_stale(TOPIC, "g", "live", min_idle=0.1, count=10)
    assert numbers(claimed) == [1]
    assert claimed[0].deliveries == 2
    # Once claimed by another, its first holder's touch no longer holds it, nor does an ack.
    assert await bus.touch(TOPIC, "g", "busy", [got[0].id, got[1].id]) == [got[0].id]
    await bus.ack(TOPIC, "g", [got[0].id])
    assert await bus.touch(TOPIC, "g", "busy", [got[0].id]) == []
    assert await bus.touch(TOPIC, "g", "busy", []) == []


# -- trimming and limits ----------------------------------------------------------------------


async def test_maxlen_trims_the_oldest_entries_approximately(bus: Bus) -> None:
    ids: list[str] = []
    for chunk in range(6):
        batch = [encode(env(i)) for i in range(chunk * 50, chunk * 50 + 50)]
        ids += await bus.append(TOPIC, batch, maxlen=50)
    length = await bus.length(TOPIC)
    assert 50 <= length < 300
    entries = await bus.read(TOPIC, BEGINNING, count=1000, block=None)
    assert [e.id for e in entries] == ids[-length:]


async def test_without_maxlen_nothing_is_trimmed(bus: Bus) -> None:
    for chunk in range(6):
        await put(bus, *range(chunk * 50, chunk * 50 + 50))
    assert await bus.length(TOPIC) == 300


async def test_a_pending_entry_trimmed_away_is_dropped_instead_of_claimed(bus: Bus) -> None:
    [first] = await put(bus, 0)
    await bus.ensure_group(TOPIC, "g")
    await bus.read_group(TOPIC, "g", "crashed", count=1, block=None)
    for _ in range(3):  # enough for Redis to drop whole nodes holding the first entry
        await bus.append(TOPIC, [encode(env(i)) for i in range(100)], maxlen=10)
    assert (await bus.read(TOPIC, BEGINNING, count=1, block=None))[0].id != first
    assert await bus.claim_stale(TOPIC, "g", "live", min_idle=0, count=10) == []


async def test_oversized_envelopes_are_refused_with_a_clear_error(bus: Bus) -> None:
    big = env(0, data={"blob": b"x" * MAX_ENVELOPE_BYTES})
    with pytest.raises(EnvelopeTooLarge, match="over the limit of 1048576 bytes"):
        encode(big)
    with pytest.raises(EnvelopeTooLarge, match=TOPIC):
        await bus.append(TOPIC, [b"x" * (MAX_ENVELOPE_BYTES + 1)])
    assert await bus.length(TOPIC) == 0


async def test_the_size_limit_is_configurable(bus_url: str) -> None:
    small = open_bus(bus_url, max_payload=64)
    try:
        with pytest.raises(EnvelopeTooLarge, match="64 bytes"):
            await small.append(TOPIC, [b"x" * 65])
        assert len(await small.append(TOPIC, [b"x" * 64])) == 1
    finally:
        await small.close()


# -- the consumer runtime ---------------------------------------------------------------------


async def test_consumer_handles_entries_in_order_and_acks_them(bus: Bus) -> None:
    seen: list[int] = []
    await put(bus, 0, 1, 2)
    async with consumer(bus, "g", lambda e: seen.append(e.data["i"])) as c:
        await put(bus, 3, 4)
        await eventually(lambda: len(seen) == 5)
    assert seen == [0, 1, 2, 3, 4]
    assert c.stats.handled == 5
    assert await nothing_pending(bus, "g")


async def test_consumer_can_run_until_stopped(bus: Bus) -> None:
    seen: list[int] = []

    async def handler(e: Envelope) -> None:
        seen.append(e.data["i"])

    c = consumer(bus, "g", handler, block=30)
    running = asyncio.create_task(c.run())
    await put(bus, 0)
    await eventually(lambda: seen == [0])
    await c.stop()
    # stop() interrupts the 30 s blocking read (the bound only guards against a hang).
    await asyncio.wait_for(running, 10)


@pytest.mark.parametrize(("start", "expected"), [("beginning", [0, 1, 2]), ("now", [2])])
async def test_a_late_consumer_replays_history_or_starts_now(
    bus: Bus, start: str, expected: list[int]
) -> None:
    seen: list[int] = []
    await put(bus, 0, 1)
    where = BEGINNING if start == "beginning" else NOW
    async with consumer(bus, "late", lambda e: seen.append(e.data["i"]), start=where):
        await put(bus, 2)
        await eventually(lambda: 2 in seen)
    assert seen == expected


async def test_replicas_in_one_group_handle_each_entry_once_between_them(bus: Bus) -> None:
    seen: list[tuple[str, int]] = []

    def handler_for(name: str) -> Callable[[Envelope], Awaitable[None]]:
        async def handle(e: Envelope) -> None:
            seen.append((name, e.data["i"]))
            await asyncio.sleep(0)  # let the other replica in

        return handle

    a = consumer(bus, "workers", handler_for("a"), name="a", batch=2)
    b = consumer(bus, "workers", handler_for("b"), name="b", batch=2)
    async with a, b:
        await put(bus, *range(40))
        await eventually(lambda: len(seen) >= 40)
        await asyncio.sleep(0.1)  # room for a wrong second delivery to show up
    assert sorted(i for _, i in seen) == list(range(40))
    assert await nothing_pending(bus, "workers")


async def test_consumer_reclaims_what_a_dead_consumer_left_pending(bus: Bus) -> None:
    await put(bus, 0, 1, 2)
    await bus.ensure_group(TOPIC, "g")
    await bus.read_group(TOPIC, "g", "crashed", count=2, block=None)  # dies holding 0 and 1
    seen: list[int] = []
    async with consumer(bus, "g", lambda e: seen.append(e.data["i"]), claim_idle=0.1):
        await eventually(lambda: sorted(seen) == [0, 1, 2])
    assert await nothing_pending(bus, "g")


async def test_undecodable_entries_are_dead_lettered_at_once_and_acked(bus: Bus) -> None:
    garbage = b"\xc1 this is not msgpack"
    [bad_id] = await bus.append(TOPIC, [garbage])
    await put(bus, 1)
    seen: list[int] = []
    async with consumer(bus, "g", lambda e: seen.append(e.data["i"])):
        await eventually(lambda: seen == [1])
    [dl] = await dead_letters(bus)
    assert dl.type == DEAD_LETTER
    assert dl.data["payload"] == garbage
    assert (dl.data["topic"], dl.data["entry_id"], dl.data["group"]) == (TOPIC, bad_id, "g")
    assert dl.data["deliveries"] == 1
    assert "msgpack" in dl.data["reason"]
    assert await nothing_pending(bus, "g")


async def test_an_unknown_schema_version_is_dead_lettered(bus: Bus) -> None:
    future = encode(env(0, v=99))
    await bus.append(TOPIC, [future])
    await put(bus, 1)
    seen: list[int] = []
    async with consumer(bus, "g", lambda e: seen.append(e.data["i"])):
        await eventually(lambda: seen == [1])
    [dl] = await dead_letters(bus)
    assert "schema version 99" in dl.data["reason"]
    assert dl.data["payload"] == future
    assert await nothing_pending(bus, "g")


async def test_a_handler_that_keeps_failing_is_dead_lettered_after_max_deliveries(
    bus: Bus,
) -> None:
    calls: list[int] = []

    def handler(e: Envelope) -> None:
        calls.append(e.data["i"])
        if e.data["i"] == 0:
            raise RuntimeError("boom on zero")

    poison = encode(env(0))
    await bus.append(TOPIC, [poison])
    await put(bus, 1)
    async with consumer(bus, "g", handler, claim_idle=0.05, max_deliveries=3):
        await eventually(lambda: calls.count(0) == 3 and 1 in calls)

        async def dead_lettered() -> bool:
            return len(await dead_letters(bus)) == 1

        await eventually(dead_lettered)
        await asyncio.sleep(0.2)  # several claim rounds: a fourth attempt would show up now
    assert calls.count(0) == 3
    assert calls.count(1) == 1
    [dl] = await dead_letters(bus)
    assert dl.data["deliveries"] == 3
    assert "RuntimeError: boom on zero" in dl.data["reason"]
    assert dl.data["payload"] == poison
    assert dl.run_id == "run1"
    assert await nothing_pending(bus, "g")


async def test_a_handler_that_rejects_an_envelope_dead_letters_it_at_once(bus: Bus) -> None:
    calls: list[int] = []

    def handler(e: Envelope) -> None:
        calls.append(e.data["i"])
        if e.data["i"] == 0:
            raise Rejected("no 'path' in CHECKPOINT_READY")

    await put(bus, 0, 1)
    async with consumer(bus, "g", handler, claim_idle=0.05, max_deliveries=3):
        await eventually(lambda: 1 in calls)
        await asyncio.sleep(0.2)  # several claim rounds: a retry would show up now
    assert calls == [0, 1]
    [dl] = await dead_letters(bus)
    assert dl.data["reason"] == "rejected by the handler: no 'path' in CHECKPOINT_READY"
    assert dl.data["deliveries"] == 1
    assert await nothing_pending(bus, "g")


async def test_a_failed_delivery_is_retried_and_then_acked(bus: Bus) -> None:
    calls: list[int] = []

    def flaky(e: Envelope) -> None:
        calls.append(e.data["i"])
        if len(calls) == 1:
            raise ConnectionError("transient")

    await put(bus, 0)
    async with consumer(bus, "g", flaky, claim_idle=0.05, max_deliveries=3) as c:
        await eventually(lambda: c.stats.handled == 1)
    assert calls == [0, 0]
    assert await dead_letters(bus) == []
    assert await nothing_pending(bus, "g")


async def test_an_entry_never_acked_too_often_is_dead_lettered_unhandled(bus: Bus) -> None:
    await put(bus, 0)
    await bus.ensure_group(TOPIC, "g")
    # Three deliveries that each ended with the consumer dying before it could ack.
    await bus.read_group(TOPIC, "g", "crash1", count=1, block=None)
    await bus.claim_stale(TOPIC, "g", "crash2", min_idle=0, count=1)
    await bus.claim_stale(TOPIC, "g", "crash3", min_idle=0, count=1)
    calls: list[Envelope] = []
    async with consumer(bus, "g", calls.append, claim_idle=0.05, max_deliveries=3):

        async def dead_lettered() -> bool:
            return len(await dead_letters(bus)) == 1

        await eventually(dead_lettered)
    assert calls == []
    [dl] = await dead_letters(bus)
    assert dl.data["deliveries"] == 4
    assert "without being acked" in dl.data["reason"]
    assert await nothing_pending(bus, "g")


async def test_the_same_envelope_appended_twice_is_handled_once(bus: Bus) -> None:
    twice = encode(env(0))
    await bus.append(TOPIC, [twice, encode(env(1)), twice, encode(env(2))])
    seen: list[int] = []
    async with consumer(bus, "g", lambda e: seen.append(e.data["i"])) as c:
        await eventually(lambda: 2 in seen)
    assert seen == [0, 1, 2]
    assert c.stats.duplicates == 1
    assert await nothing_pending(bus, "g")


# -- tail readers -----------------------------------------------------------------------------


async def test_a_tail_replays_history_then_follows(bus: Bus) -> None:
    await put(bus, 0, 1)
    got: list[int] = []

    async def follow() -> None:
        async for e in tail(bus, TOPIC, BEGINNING, block=0.05):
            got.append(e.data["i"])
            if len(got) == 4:
                return

    following = asyncio.create_task(follow())
    await eventually(lambda: len(got) == 2)
    await put(bus, 2, 3)
    await asyncio.wait_for(following, 10)
    assert got == [0, 1, 2, 3]


@pytest.mark.parametrize(("start", "expected"), [("now", [3, 4]), ("id", [2, 3, 4])])
async def test_a_tail_starts_now_or_after_an_id(bus: Bus, start: str, expected: list[int]) -> None:
    ids = await put(bus, 0, 1, 2)
    t = await tail(bus, TOPIC, NOW if start == "now" else ids[1], block=0.05).open()
    await put(bus, 3, 4)
    got: list[int] = []
    async for e in t:
        got.append(e.data["i"])
        if e.data["i"] == 4:
            break
    assert got == expected
    assert t.last_id is not None


async def test_a_tail_without_follow_stops_at_the_end_of_history(bus: Bus) -> None:
    await put(bus, 0, 1, 2)
    assert [e.data["i"] async for e in tail(bus, TOPIC, follow=False)] == [0, 1, 2]
    assert [e async for e in tail(bus, "test:empty", follow=False)] == []


async def test_a_tail_skips_bad_entries_and_leaves_groups_alone(bus: Bus) -> None:
    await bus.ensure_group(TOPIC, "g")
    await put(bus, 0)
    [bad_id] = await bus.append(TOPIC, [b"\xc1 garbage"])
    await put(bus, 1)
    bad: list[tuple[str, str]] = []
    t = tail(bus, TOPIC, follow=False, on_bad=lambda e, reason: bad.append((e.id, reason)))
    assert [e.data["i"] async for e in t] == [0, 1]
    assert len(bad) == 1 and bad[0][0] == bad_id and "msgpack" in bad[0][1]
    assert t.skipped == 1
    # The tail acked nothing and took nothing: the group still gets all three entries.
    assert await nothing_pending(bus, "g")
    assert len(await bus.read_group(TOPIC, "g", "c", count=10, block=None)) == 3


async def test_a_closed_tail_ends_a_follow_read_and_entries_come_raw(bus: Bus) -> None:
    await put(bus, 0)
    [bad_id] = await bus.append(TOPIC, [b"\xc1 garbage"])
    t = tail(bus, TOPIC, BEGINNING, block=0.05)
    got: list[str] = []

    async def follow() -> None:
        async for entry in t.entries():
            got.append(entry.id)

    following = asyncio.create_task(follow())
    await eventually(lambda: len(got) == 2)
    assert got[1] == bad_id and t.last_id == bad_id  # undecoded: the caller judges it
    t.close()
    await asyncio.wait_for(following, 10)  # a follow tail ends once closed


# -- opening buses from URLs ------------------------------------------------------------------


def test_open_bus_names_an_unsupported_scheme() -> None:
    with pytest.raises(InvalidURL, match="'kafka'"):
        open_bus("kafka://broker:9092")
    with pytest.raises(InvalidURL, match="no scheme"):
        open_bus("localhost:6379")


def test_open_bus_errors_do_not_show_the_password() -> None:
    with pytest.raises(InvalidURL) as info:
        open_bus("amqp://user:hunter2@host:5672/")
    assert "hunter2" not in str(info.value)


async def test_memory_urls_with_the_same_name_share_one_bus() -> None:
    a, b, other = open_bus("memory://shared"), open_bus("memory://shared"), open_bus("memory://x")
    await a.append(TOPIC, [encode(env(0))])
    assert numbers(await b.read(TOPIC, BEGINNING, count=10, block=None)) == [0]
    assert await other.length(TOPIC) == 0


async def test_redis_urls_open_a_redis_bus_without_connecting() -> None:
    for url in ("redis://user:pw@127.0.0.1:1/0", "rediss://127.0.0.1:1/2"):
        b = open_bus(url)
        assert isinstance(b, RedisStreamBus)
        assert "pw" not in repr(b)
        await b.close()
