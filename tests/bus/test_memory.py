"""What only the in-memory bus has: named shared storage across handles, threads and loops."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bus import BEGINNING, NOW, BusError, Envelope, InMemoryBus, InvalidURL, encode, open_bus


async def test_a_reader_is_woken_by_an_append_from_another_thread_and_loop() -> None:
    reader_bus = InMemoryBus()
    await reader_bus.ensure_group("t", "g", NOW)
    reading = asyncio.create_task(reader_bus.read_group("t", "g", "c", count=10, block=60))
    await asyncio.sleep(0.05)

    def publish_from_another_loop() -> None:
        async def publish() -> None:
            await InMemoryBus.from_url(reader_bus.url).append("t", [b"hello"])

        asyncio.run(publish())

    thread = threading.Thread(target=publish_from_another_loop)
    thread.start()
    # Woken by the append, not by the end of the 60 s block (the bound only guards a hang).
    entries = await asyncio.wait_for(reading, 10)
    thread.join()
    assert [e.payload for e in entries] == [b"hello"]


async def test_an_anonymous_bus_is_reopened_by_its_url_while_it_is_alive() -> None:
    first = InMemoryBus()
    await first.append("t", [b"x"])
    assert await open_bus(first.url).length("t") == 1
    assert await InMemoryBus().length("t") == 0  # a new anonymous bus is a different bus


async def test_memory_url_without_a_name_is_the_default_bus() -> None:
    a, b = open_bus("memory://"), InMemoryBus("default")
    await a.append("t", [b"x"])
    assert [e.payload for e in await b.read("t", BEGINNING, count=5, block=None)] == [b"x"]


async def test_a_closed_handle_refuses_work_and_others_keep_going() -> None:
    a = InMemoryBus()
    b = InMemoryBus.from_url(a.url)
    await a.close()
    with pytest.raises(BusError, match="closed"):
        await a.append("t", [b"x"])
    assert await b.append("t", [b"x"])


async def test_a_name_with_a_slash_is_refused() -> None:
    with pytest.raises(InvalidURL, match="a/b"):
        InMemoryBus("a/b")


async def test_a_typed_group_read_delivers_its_types_and_acks_the_others_unread() -> None:
    bus = InMemoryBus()
    envs = [
        Envelope("ITERATION_COMPLETED" if i % 4 else "EPOCH_COMPLETED", "r", "s", {})
        for i in range(12)
    ]
    ids = await bus.append("t", [encode(e) for e in envs] + [b"\x00not an envelope"])
    await bus.ensure_group("t", "g")
    first = await bus.read_group("t", "g", "c", count=2, block=None, types={"EPOCH_COMPLETED"})
    assert [e.id for e in first] == [ids[0], ids[4]]
    # Passed over: those before, and those after up to the next entry of the types asked for.
    assert first.passed_over == 6  # type: ignore[attr-defined]
    # An entry whose type cannot be read without decoding is delivered: its consumer decides.
    rest = await bus.read_group("t", "g", "c", count=10, block=None, types={"EPOCH_COMPLETED"})
    assert [e.id for e in rest] == [ids[8], ids[12]]
    assert rest.passed_over == 3  # type: ignore[attr-defined]
    # Only what was delivered is pending; what was passed over is settled.
    stale = await bus.claim_stale("t", "g", "inspector", min_idle=0, count=100)
    assert [e.id for e in stale] == [ids[0], ids[4], ids[8], ids[12]]


async def test_a_typed_reader_is_woken_only_by_an_entry_of_its_types() -> None:
    bus = InMemoryBus()
    await bus.ensure_group("t", "g", NOW)
    wanted = {"EPOCH_COMPLETED"}
    reading = asyncio.create_task(bus.read_group("t", "g", "c", count=10, block=60, types=wanted))
    await asyncio.sleep(0.05)
    (topic,) = bus._storage.topics.values()
    for i in range(3):
        await bus.append("t", [encode(Envelope("ITERATION_COMPLETED", "r", "s", {"i": i}))])
    # Not woken: the reader still waits where it registered (an append of another type leaves
    # it be, so a worker acting on epochs costs nothing per iteration).
    assert not reading.done() and len(topic.waiters) == 1
    [epoch_id] = await bus.append("t", [encode(Envelope("EPOCH_COMPLETED", "r", "s", {}))])
    entries = await asyncio.wait_for(reading, 10)  # the bound only guards a hang
    assert [e.id for e in entries] == [epoch_id] and entries.passed_over == 3  # type: ignore[attr-defined]
