"""A worker killed with SIGKILL (no WORKER_LEFT) is shown gone once the run's
bus.heartbeat_timeout has passed without a heartbeat from it: by the monitor (its state model
and what it renders), by the web view's API and by the page. The worker is a real `trainer
worker budget` process on a private Redis; the run is announced by hand (no trainer needed:
only the run's config, with its heartbeat timeout, matters here).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from stack.stack_harness import Stack, eventually
from web_harness import WebServer, browser

from bus import Envelope, encode, open_bus
from workers.monitor.app import Monitor, MonitorOptions
from workers.monitor.state import GONE, LIVE
from workers.web import WebOptions

RUN = "killed-worker"
NAME = "budget-killed"
TIMEOUT = 1.0  # the run's bus.heartbeat_timeout
STARTUP_GUARD = 60.0  # a worker process starting on a busy 2-core machine
GUARD = 30.0


def announce(stack: Stack, type: str, data: dict[str, Any]) -> None:
    """Write a trainer envelope of RUN to its events topic and the registry, stamped now."""
    env = Envelope(type, RUN, "trainer:0", data)
    for topic in (stack.topics.events(RUN), stack.topics.registry()):
        stack.raw().xadd(topic, {"env": encode(env)})


def api_worker(client: httpx.Client) -> dict[str, Any] | None:
    """The killed worker as GET /api/runs/RUN shows it, once it is there."""
    view = client.get(f"/api/runs/{RUN}").json()
    return next((w for w in view.get("workers", []) if w["name"] == NAME), None)


def test_a_killed_worker_is_shown_gone_after_the_heartbeat_timeout(
    redis_url: str, tmp_path: Path
) -> None:
    stack = Stack(redis_url, tmp_path)
    config = {"run": {"name": "digits"}, "train": {"epochs": 3}}
    config["bus"] = {"heartbeat_timeout": TIMEOUT}
    announce(stack, "RUN_STARTED", {"config": config, "rank": 0, "world_size": 1})
    server = WebServer(WebOptions(redis_url, runs_dir=tmp_path / "runs")).start()
    out = Console(record=True, width=120, force_terminal=False)
    options = MonitorOptions(redis_url, run_id=RUN, refresh=0.05, linger=0.2, block=0.1)
    loop = asyncio.new_event_loop()
    sessions: list[Monitor] = []

    async def watch() -> int:
        bus = open_bus(redis_url)
        sessions.append(Monitor(bus, options, out, asyncio.Event()))
        try:
            return await sessions[0].run()
        finally:
            await bus.close()

    # The monitor follows the run in a thread of its own, as `trainer monitor --run` would.
    watcher = threading.Thread(target=lambda: loop.run_until_complete(watch()))
    watcher.start()
    try:
        worker = stack.worker("budget", RUN, "--name", NAME, "--heartbeat", "0.2")
        with httpx.Client(base_url=server.url, timeout=GUARD) as client:
            shown = eventually(lambda: api_worker(client), STARTUP_GUARD, "the worker on the page")
            assert shown["state"] == LIVE and shown["kind"] == "budget"
            eventually(
                lambda: sessions and sessions[0].state and NAME in sessions[0].state.workers,
                GUARD,
                "the worker in the monitor",
            )
            state = sessions[0].state
            assert state.heartbeat_timeout == TIMEOUT  # the run's, from RUN_STARTED's config
            assert state.worker_status(state.workers[NAME], time.time()) == LIVE

            worker.stop()  # SIGKILL: no WORKER_LEFT, no last heartbeat
            gone = eventually(
                lambda: (w := api_worker(client)) and w["state"] == GONE and w, GUARD, "gone"
            )
            assert gone["age"] > TIMEOUT  # silent for longer than the run's timeout
            assert state.worker_status(state.workers[NAME], time.time()) == GONE
            assert NAME not in [w.name for w in state.live_workers(time.time())]
            with browser() as chrome:
                page = chrome.new_page()
                page.set_default_timeout(GUARD * 1000)
                page.goto(f"{server.url}/runs/{RUN}")
                page.wait_for_selector(f"#workers tr:has-text('{NAME}') .w-gone")
                row = page.text_content(f"#workers tr:has-text('{NAME}')")
                assert "gone" in row and " ago" in row
            still = api_worker(client)
            assert still["state"] == GONE and still["age"] >= gone["age"]  # gone it stays

        announce(stack, "RUN_FINISHED", {"status": "completed", "epochs": 0, "iteration": 0})
        watcher.join(GUARD)
        assert not watcher.is_alive(), "the monitor did not end with the run"
        row = next(line for line in out.export_text().splitlines() if NAME in line).split()
        assert row[3] == "gone" and row[5] == "ago", row  # how long since it was heard of
    finally:
        if watcher.is_alive() and sessions:
            loop.call_soon_threadsafe(sessions[0].stop.set)
        watcher.join(GUARD)
        loop.close()
        server.stop()
        stack.close()
