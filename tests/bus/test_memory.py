"""What only the in-memory bus has: named shared storage across handles, threads and loops."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bus import BEGINNING, NOW, BusError, InMemoryBus, InvalidURL, open_bus


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
