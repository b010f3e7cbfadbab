"""The monitor's loop on the in-memory bus: which run it follows, history, replay, the end."""

from __future__ import annotations

import asyncio
import re
import time
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
    worker,
)
from rich.console import Console

from bus import DEAD_LETTER, Bus, Topics, open_bus
from workers.monitor.app import Monitor, MonitorOptions, ReplayPacer, monitor

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


def test_a_replay_feeds_each_envelope_when_due_on_a_clock_anchored_at_the_first() -> None:
    now = [500.0]  # a fake monotonic clock
    pacer = ReplayPacer(4.0, clock=lambda: now[0])
    assert pacer.stream_time() is None
    for i in range(401):  # 4 s of envelopes 10 ms apart, at 4x: due every 2.5 ms for 1 s
        now[0] += pacer.wait(T0 + 0.01 * i)
        now[0] += 0.002  # each one overshoots its wait and costs time to feed and render
    # The overheads are absorbed by the next waits instead of adding up (400 x 2 ms = 0.8 s).
    assert now[0] - 500.0 == pytest.approx(1.0, abs=0.005)
    assert pacer.stream_time() == pytest.approx(T0 + 4.0, abs=0.02)  # where the replay is
    # Behind the schedule it does not wait; an envelope stamped earlier is due at once.
    now[0] += 2.0
    assert pacer.wait(T0 + 5.0) == 0.0 and pacer.wait(T0 - 1.0) == 0.0
    assert pacer.wait(T0 + 16.0) == pytest.approx(504.0 - now[0])  # due 4 s after the first


async def test_a_replay_judges_worker_liveness_on_the_replay_clock(memory: Bus) -> None:
    # bus.heartbeat_timeout 1 s: the worker's last heartbeat is at 0.5 s of a 3 s run.
    run = "killed"
    events = [
        started(run, epochs=2, heartbeat_timeout=1.0),
        *training(run, epochs=2, length=30, t0=T0, dt=0.05, losses=[1.0, 0.9]),
    ]
    events.append(finished(run, "completed", "", None, 2, 60, events[-1].ts + 0.05))
    control = [
        worker("WORKER_JOINED", "b-1", "budget", T0, run=run, votes=True, heartbeat=0.25),
        worker("HEARTBEAT", "b-1", "budget", T0 + 0.5, run=run),
    ]
    await publish(memory, TOPICS.registry(), events[:1])
    await publish(memory, TOPICS.control(run), control)
    await publish(memory, TOPICS.events(run), events)
    frames = console(terminal=True)
    _, task = start(memory, frames, run_id=run, replay=True, speed=4.0)
    assert await asyncio.wait_for(task, HANG_GUARD) == 0
    text = frames.export_text()
    assert text.index("b-1") < text.index("gone")  # shown live first, then gone
    last = text[text.rindex("run killed (digits)") :]
    row = next(line for line in last.splitlines() if "b-1" in line).split()
    # gone, heard seconds ago in the replayed run's time (the wall clock would say years)
    assert row[3] == "gone" and re.fullmatch(r"\d+s", row[4]) and row[5] == "ago", row


async def test_a_replay_at_4x_of_4_s_takes_about_1_s_whatever_else_the_namespace_holds(
    redis_url: str,
) -> None:
    bus = open_bus(redis_url)
    try:
        # 4 s of run, an envelope every 2 ms; the namespace's dead-letter topic also holds
        # other runs' entries, 20 s before and after this run.
        await publish_run(bus, "paced", epochs=4, length=500, dt=0.002)
        others = [
            env(DEAD_LETTER, {"reason": "x", "topic": "trainer:run:o:events"}, run="o", ts=ts)
            for ts in (T0 - 20, T0 + 24)
        ]
        await publish(bus, TOPICS.dead_letter(), others)
        out = console()
        began = time.monotonic()
        _, task = start(bus, out, run_id="paced", replay=True, speed=4.0)
        assert await asyncio.wait_for(task, HANG_GUARD) == 0
        took = time.monotonic() - began
    finally:
        await bus.close()
    assert "status: completed" in out.export_text()
    # 1 s of replay and a 0.2 s linger. The bound is loose for a loaded machine; pacing on the
    # other runs' dead letters (24 s away, so 6 s at 4x) or drift per envelope would exceed it.
    assert 0.9 < took < 5.0, f"a replay at 4x of 4 s took {took:.1f} s"
