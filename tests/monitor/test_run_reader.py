"""The run reader the monitor and the web view share: history merged by time, then live."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from monitor_envelopes import T0, env

from bus import DEAD_LETTER, Bus, Topics, encode, open_bus
from workers.monitor.run_reader import RunReader
from workers.monitor.state import CONTROL, DEAD_LETTERS, EVENTS, MonitorState

HANG_GUARD = 20.0  # never a statement about speed
TOPICS = Topics()


@pytest.fixture
async def memory() -> AsyncIterator[Bus]:
    handle = open_bus(f"memory://reader-{uuid.uuid4().hex}")
    yield handle
    await handle.close()


async def test_history_is_the_runs_own_merged_by_time_then_follow_goes_on_from_its_end(
    memory: Bus,
) -> None:
    events, control, letters = TOPICS.events("r1"), TOPICS.control("r1"), TOPICS.dead_letter()
    event_ids = await memory.append(
        events,
        [encode(env("RUN_STARTED", ts=T0)), encode(env("EPOCH_COMPLETED", ts=T0 + 2))],
    )
    await memory.append(control, [encode(env("HEARTBEAT", ts=T0 + 1, source="w"))])
    await memory.append(
        letters,
        [
            encode(env(DEAD_LETTER, {"reason": "another run's"}, run="other", ts=T0 + 0.5)),
            encode(env(DEAD_LETTER, {"reason": "ours"}, ts=T0 + 3)),
            b"\xc1 garbage",
        ],
    )
    state = MonitorState("r1", TOPICS.namespace)
    bad: list[str] = []
    reader = RunReader(
        memory,
        TOPICS,
        "r1",
        keep=state.concerns,
        on_bad=lambda kind, reason: bad.append(kind),
        block=0.05,
    )

    history = await reader.history()

    assert [(item.kind, item.env.type) for item in history] == [
        (EVENTS, "RUN_STARTED"),
        (CONTROL, "HEARTBEAT"),
        (EVENTS, "EPOCH_COMPLETED"),
        (DEAD_LETTERS, DEAD_LETTER),  # the other run's dead letter is left out
    ]
    assert [item.entry_id for item in history if item.kind == EVENTS] == event_ids
    assert bad == [DEAD_LETTERS]
    async with contextlib.aclosing(reader.follow()) as items:
        [new_id] = await memory.append(events, [encode(env("RUN_FINISHED", ts=T0 + 4))])
        item = await asyncio.wait_for(anext(items), HANG_GUARD)
    # Only what came after the history: nothing of it read twice.
    assert (item.kind, item.env.type, item.entry_id) == (EVENTS, "RUN_FINISHED", new_id)
