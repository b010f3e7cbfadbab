"""The monitor's loop on the in-memory bus: which run it follows, history, replay, the end."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from monitor_envelopes import (
    T0,
    env,
    finished,
    publish,
    publish_run,
    saved,
    started,
    training,
)
from rich.console import Console

from bus import DEAD_LETTER, Bus, Topics, open_bus
from workers.monitor.app import Monitor, MonitorOptions, monitor

# Hang guard of every wait in these tests; never a statement about speed.
HANG_GUARD = 20.0
TOPICS = Topics()


@pytest.fixture
async def memory() -> AsyncIterator[Bus]:
    """A fresh in-memory bus, kept open (so alive) for the test."""
    handle = open_bus(f"memory://monitor-{uuid.uuid4().hex}")
    yield handle
    await handle.close()


def console(terminal: bool = False) -> Console:
    """A recording console; as a terminal it records every frame, else the final one only."""
    return Console(record=True, width=120, force_terminal=terminal)


async def until(check: Callable[[], object], what: str) -> None:
    """Poll `check()` until truthy (hang-guarded)."""
    for _ in range(int(HANG_GUARD / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def start(bus: Bus, out: Console, **options: object) -> tuple[Monitor, asyncio.Task[int]]:
    """A Monitor session on `bus` running as a task, with fast refresh and linger."""
    opts = MonitorOptions(bus.url, refresh=0.02, linger=0.2, block=0.05, **options)  # type: ignore[arg-type]
    session = Monitor(bus, opts, out, asyncio.Event())
    return session, asyncio.create_task(session.run())


async def test_once_prints_the_newest_run_of_the_registry(memory: Bus) -> None:
    await publish_run(memory, "older", t0=T0)
    await publish_run(memory, "newer", t0=T0 + 100)
    out = console()
    assert await monitor(MonitorOptions(memory.url, once=True), out) == 0
    text = out.export_text()
    assert "run newer (digits)" in text and "older" not in text
    assert "status: completed" in text


async def test_once_without_any_run_says_where_it_looked(memory: Bus) -> None:
    out = console()
    assert await monitor(MonitorOptions(memory.url, once=True, namespace="lab"), out) == 0
    assert "waiting for a run to start in namespace lab (registry lab:runs)" in out.export_text()


async def test_attached_mid_run_it_has_the_history_and_exits_once_the_run_finished(
    memory: Bus,
) -> None:
    run = "mid"
    history = [
        started(run, epochs=3),
        *training(run, epochs=2, length=4, t0=T0, dt=0.1, losses=[2.0, 1.0]),
    ]
    await publish(memory, TOPICS.registry(), history[:1])
    await publish(memory, TOPICS.events(run), history)
    out = console()
    session, task = start(memory, out, run_id=run)
    await until(lambda: session.state and session.state.envelopes == len(history), "the history")
    assert not task.done()
    end = finished(run, "completed", "", None, 3, 12, T0 + 5)
    # the checkpoint worker files the last checkpoint after the trainer announced the end
    late = saved(run, "/ck/checkpoint_12.pt", 2, 12, ["latest"], ts=T0 + 5.1)
    await publish(memory, TOPICS.events(run), [end, late])
    assert await asyncio.wait_for(task, HANG_GUARD) == 0
    text = out.export_text()
    assert "run mid (digits)" in text and "status: completed" in text
    assert "█▁" in text  # the train loss went 2.0 -> 1.0 before the monitor was attached
    assert "checkpoint_12.pt" in text


async def test_without_a_run_id_it_waits_follows_the_newest_and_switches_to_a_newer_run(
    memory: Bus,
) -> None:
    out = console()
    session, task = start(memory, out)
    await publish_run(memory, "first", finish=False)
    await until(lambda: session.state and session.state.run_id == "first", "run first")
    await publish_run(memory, "second", finish=False, t0=T0 + 100)
    await until(lambda: session.state and session.state.run_id == "second", "run second")
    assert not task.done()
    end = finished("second", "failed", "", None, 2, 8, T0 + 200)
    await publish(memory, TOPICS.events("second"), [end])
    assert await asyncio.wait_for(task, HANG_GUARD) == 0
    text = out.export_text()
    assert "run second (digits)" in text and "status: failed" in text
    assert "run first" not in text


async def test_a_newest_run_finished_before_it_attached_is_shown_until_the_next_one_ends(
    memory: Bus,
) -> None:
    await publish_run(memory, "done-before")
    out = console()
    session, task = start(memory, out)
    await until(lambda: session.awaiting_newer, "the finished run to be shown")
    assert session.state.run_id == "done-before" and session.state.status == "completed"
    await publish_run(memory, "next", t0=T0 + 100)  # starts, and finishes
    assert await asyncio.wait_for(task, HANG_GUARD) == 0
    text = out.export_text()
    assert "run next (digits)" in text and "status: completed" in text
    assert "done-before" not in text


async def test_replay_plays_the_history_at_its_pace_the_default_jumps_to_the_present(
    memory: Bus,
) -> None:
    await publish_run(memory, "r", epochs=2, length=4, dt=0.05)  # 0.45 s recorded
    present = console(terminal=True)  # records every frame
    _, task = start(memory, present, run_id="r")
    assert await asyncio.wait_for(task, HANG_GUARD) == 0
    frames = present.export_text()
    assert "status: completed" in frames and "status: running" not in frames

    replayed = console(terminal=True)
    _, task = start(memory, replayed, run_id="r", replay=True, speed=2.0)
    assert await asyncio.wait_for(task, HANG_GUARD) == 0
    frames = replayed.export_text()
    assert "status: running" in frames
    assert frames.index("status: running") < frames.index("status: completed")


async def test_undecodable_entries_are_counted_never_fatal_and_dead_letters_shown(
    memory: Bus,
) -> None:
    await publish_run(memory, "r", finish=False)
    await memory.append(TOPICS.events("r"), [b"not an envelope", b"\x81\xa1v\x09"])
    end = env("RUN_FINISHED", {"status": "completed"}, run="r", ts=T0 + 9)
    await publish(memory, TOPICS.events("r"), [end])
    letters = [
        env(DEAD_LETTER, {"reason": "handler failed: boom", "group": "metrics"}, run="r"),
        env(DEAD_LETTER, {"reason": "another run's", "group": "metrics"}, run="other"),
    ]
    await publish(memory, TOPICS.dead_letter(), letters)
    out = console()
    assert await monitor(MonitorOptions(memory.url, run_id="r", once=True), out) == 0
    text = out.export_text()
    assert "undecodable entries: 2 (events 2;" in text
    assert "dead letters: 1, last (group metrics): handler failed: boom" in text
    assert "status: completed" in text


async def test_stop_ends_the_monitor_with_status_0_after_a_final_render(memory: Bus) -> None:
    await publish_run(memory, "r", finish=False)
    out = console()
    session, task = start(memory, out, run_id="r")
    await until(lambda: session.state and session.state.envelopes > 0, "the history")
    session.stop.set()
    assert await asyncio.wait_for(task, HANG_GUARD) == 0
    assert "status: running" in out.export_text()
