"""Fixtures of the worker tests: an empty bus (in memory, then Redis) and a running worker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest

from workers.base import Worker
from workers.runtime import RuntimeOptions, run_worker

# Hang guard of every wait in these tests; never a statement about speed.
HANG_GUARD = 30.0


class RunningWorker:
    """A run_worker task the test started: its stop event and, once it ends, its exit status."""

    def __init__(self, task: asyncio.Task[int], stop: asyncio.Event, name: str) -> None:
        self.task = task
        self.stop_event = stop
        self.name = name

    async def ended(self) -> int:
        """Wait (hang-guarded) until the worker ends by itself; its exit status."""
        return await asyncio.wait_for(asyncio.shield(self.task), HANG_GUARD)

    async def stop(self) -> int:
        """Ask the worker to stop, as SIGTERM does; its exit status."""
        self.stop_event.set()
        return await self.ended()


StartWorker = Callable[..., Any]


@pytest.fixture
async def start_worker(bus_url: str) -> AsyncIterator[StartWorker]:
    """Start a worker of a kind on the test's bus and wait until it has joined; stop it after."""
    running: list[RunningWorker] = []

    async def start(
        kind: type[Worker],
        kind_options: Mapping[str, Any] | None = None,
        *,
        run_id: str | None = None,
        follow: bool = False,
        start: str = "start",
        name: str | None = None,
        wait_ready: bool = True,
        **options: Any,
    ) -> RunningWorker:
        name = name or f"{kind.kind}-{uuid.uuid4().hex[:8]}"
        opts = {"heartbeat": 0.05, "linger": 0.05, "block": 0.2, **options}
        runtime = RuntimeOptions(
            bus_url=bus_url, run_id=run_id, follow=follow, start=start, name=name, **opts
        )
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_worker(kind, runtime, kind_options or {}, stop, ready))
        worker = RunningWorker(task, stop, name)
        running.append(worker)
        if wait_ready:
            waiter = asyncio.ensure_future(ready.wait())
            await asyncio.wait({task, waiter}, timeout=HANG_GUARD, return_when="FIRST_COMPLETED")
            waiter.cancel()
            if task.done():
                task.result()  # a worker that failed to start says why here
            assert ready.is_set(), f"worker {name} did not join within {HANG_GUARD} s"
        return worker

    yield start
    for worker in running:
        worker.stop_event.set()
    for worker in running:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(worker.task, HANG_GUARD)
