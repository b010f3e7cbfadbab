"""Sweeps as users run them over real Redis: `trainer sweep`, `trainer agent` and `trainer
worker pruner` as separate processes, and the bus read back with redis-py and the codec."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import redis
from stack.stack_harness import ROOT, Proc

from bus import DecodeError, Envelope, Topics, decode

TOPICS = Topics()


class Sweep:
    """A sweep's processes on one Redis, and what they wrote there."""

    def __init__(self, url: str, cwd: Path) -> None:
        self.url = url
        self.cwd = cwd
        self.client = redis.Redis.from_url(url)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "stack")]),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("TRAINER_BUS_SECRET", None)
        self.env.pop("TRAINER_BUS_URL", None)
        self.procs: list[Proc] = []
        self.killed: dict[str, Any] = {}

    def start(self, name: str, *args: str | Path) -> Proc:
        """Start `trainer ARGS...` as a process named `name` (its output in NAME.log)."""
        argv = [sys.executable, "-m", "trainer.cli", *map(str, args)]
        proc = Proc(name, argv, self.cwd, self.env)
        self.procs.append(proc)
        return proc

    def envelopes(self, topic: str) -> list[Envelope]:
        """Every envelope of `topic`, in stream order."""
        out = []
        for _, fields in self.client.xrange(topic):
            try:
                out.append(decode(fields.get(b"env", b"")))
            except DecodeError:
                continue
        return out

    def sweep_events(self, sweep_id: str, *types: str) -> list[Envelope]:
        """The sweep's events of these types."""
        found = self.envelopes(TOPICS.sweep_events(sweep_id))
        return [e for e in found if e.type in types]

    def events(self, run_id: str, *types: str) -> list[Envelope]:
        """The run's events of these types."""
        return [e for e in self.envelopes(TOPICS.events(run_id)) if e.type in types]

    def close(self) -> None:
        """Kill what still runs."""
        for proc in self.procs:
            proc.stop()
        self.client.close()
