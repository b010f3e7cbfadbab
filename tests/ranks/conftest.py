"""Fixtures of the rank tests: jobs of 2 ranks as real processes over the session's private Redis,
and the metrics worker on an in-test runtime.

The harness of the stack tests (tests/stack/stack_harness.py: Proc, Stack) starts the commands;
the stand-in trainer of the worker tests (tests/workers/fake_trainer.py) plays the ranks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
for helpers in (TESTS / "stack", TESTS / "workers"):
    if str(helpers) not in sys.path:
        sys.path.insert(0, str(helpers))

from stack_harness import Proc, Stack  # noqa: E402

from workers.base import Worker  # noqa: E402
from workers.runtime import RuntimeOptions, run_worker  # noqa: E402

# Hang guard of every wait on an in-test worker; never a statement about speed.
HANG_GUARD = 30.0


class RankStack(Stack):
    """A Stack whose processes also import this directory's data builder (paced_digits)."""

    def __init__(self, url: str, cwd: Path) -> None:
        super().__init__(url, cwd)
        self.env["PYTHONPATH"] = os.pathsep.join([self.env["PYTHONPATH"], str(HERE)])

    def job(self, config: Path, run_id: str, *args: str | Path, name: str = "job") -> Proc:
        """`trainer run CONFIG --nproc 2 --bus URL --run-id ID ...`: the launcher of 2 ranks."""
        return self.start(
            name, "run", config, "--nproc", "2", "--bus", self.url, "--run-id", run_id, *args
        )

    def close(self) -> None:
        """Kill whatever still runs, the ranks included (torch's launcher starts each in a
        session of its own, out of reach of a kill of the launcher's process group)."""
        super().close()
        kill_ranks(self.cwd)


def kill_ranks(cwd: Path) -> None:
    """SIGKILL every rank recorded under `cwd` (in a run directory's .ranks/) that still runs."""
    for record in cwd.glob("**/.ranks/[0-9]*.json"):
        with contextlib.suppress(ValueError, OSError, KeyError):
            if not record.name.endswith(".exit.json"):
                os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)


def rank_record(run_dir: Path, rank: int) -> dict[str, Any]:
    """What rank `rank` recorded of itself under the run directory's .ranks/."""
    return json.loads((run_dir / ".ranks" / f"{rank}.json").read_text())


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[RankStack]:
    """A RankStack on the session's private Redis (flushed), working in the test's directory."""
    s = RankStack(redis_url, tmp_path)
    yield s
    s.close()


class RunningWorker:
    """A run_worker task the test started: its stop event and, once it ends, its exit status."""

    def __init__(self, task: asyncio.Task[int], stop: asyncio.Event, name: str) -> None:
        self.task, self.stop_event, self.name = task, stop, name

    async def stop(self) -> int:
        """Ask the worker to stop, as SIGTERM does; its exit status."""
        self.stop_event.set()
        return await asyncio.wait_for(asyncio.shield(self.task), HANG_GUARD)


@pytest.fixture
async def start_worker(bus_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Start a worker of a kind on the test's bus and wait until it has joined; stop it after."""
    running: list[RunningWorker] = []

    async def start(
        kind: type[Worker], kind_options: Mapping[str, Any] | None = None, *, run_id: str
    ) -> RunningWorker:
        name = f"{kind.kind}-{uuid.uuid4().hex[:8]}"
        runtime = RuntimeOptions(
            bus_url=bus_url, run_id=run_id, name=name, heartbeat=0.05, linger=0.05, block=0.2
        )
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_worker(kind, runtime, kind_options or {}, stop, ready))
        worker = RunningWorker(task, stop, name)
        running.append(worker)
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
