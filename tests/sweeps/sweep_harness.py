"""Synthetic trials of a sweep for the pruner's tests: real Engines on real BusRuns over Redis.

A trial trains nothing: its primary engine takes two empty steps per epoch and its "val" engine
reports `accuracy` from a fixed curve, so the pruner sees exactly the values the test wrote.
Each trial runs in a thread of the test process with barrier mode on, obeys the pruner's votes
through the trainer's own tally, and publishes RUN_FINISHED as any run does. A gated trial waits
at each EPOCH_STARTED until the test lets that epoch begin. The pruner is a separate process
(`python -m trainer.cli worker pruner ...`); the bus is read back with redis-py and the codec.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from bus import Envelope, Topics, decode
from bus.messages import RUN_FINISHED, RUN_STARTED, VOTE, WORKER_JOINED
from trainer import Engine, Events
from trainer.bridge import BusRun
from trainer.metrics import Average

ROOT = Path(__file__).resolve().parents[2]
TOPICS = Topics()
# Hang guard of every wait; never a statement about speed.
HANG = 60.0
# Seconds a silent voter still counts: a SIGKILLed pruner holds a barrier no longer than this.
HEARTBEAT_TIMEOUT = 1.0


def eventually(check: Callable[[], Any], what: str, timeout: float = HANG) -> Any:
    """Poll `check()` until it returns something truthy; fail after `timeout` s (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class SweepTrialRun(BusRun):
    """A BusRun whose RUN_STARTED carries `data.sweep`, as a sweep's trial's does."""

    def __init__(self, *args: Any, sweep: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sweep = sweep

    def _announce(self, type: str, data: dict[str, Any], at: Any = None) -> None:
        if type == RUN_STARTED:
            data = {**data, "sweep": self.sweep}
        super()._announce(type, data, at)


class Trial:
    """One trial: its run id, its val accuracy per epoch, the thread that trains it."""

    def __init__(self, url: str, sweep: str, number: int, curve: Sequence[float]) -> None:
        self.url = url
        self.sweep = sweep
        self.number = number
        self.curve = list(curve)
        self.run_id = f"{sweep}-trial-{number}"
        self._gate = threading.Semaphore(0)
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> Trial:
        """Start the trial (RUN_STARTED written); its first epoch waits for `release`."""
        self._thread = threading.Thread(target=self._train, name=self.run_id, daemon=True)
        self._thread.start()
        assert self._started.wait(HANG), f"{self.run_id} did not start"
        return self

    def release(self, epochs: int | None = None) -> None:
        """Let `epochs` more epochs begin (all that are left by default)."""
        self._gate.release(len(self.curve) if epochs is None else epochs)

    def join(self) -> None:
        """Wait for the trial to end; fail if it raised."""
        assert self._thread is not None
        self._thread.join(HANG)
        assert not self._thread.is_alive(), f"{self.run_id} did not end within {HANG} s"
        if self.error is not None:
            raise self.error

    def _train(self) -> None:
        try:
            trainer = Engine(lambda engine, batch: None)
            evaluator = Engine(lambda engine, batch: self.curve[trainer.state.epoch])
            Average().attach(evaluator, "accuracy")

            @trainer.on(Events.EPOCH_STARTED)
            def wait_for_the_test(engine: Engine) -> None:
                assert self._gate.acquire(timeout=HANG), f"{self.run_id}: never released"

            @trainer.on(Events.EPOCH_COMPLETED)
            def validate(engine: Engine) -> None:
                evaluator.run([0], max_epochs=1)

            run = SweepTrialRun(
                self.url,
                self.run_id,
                config={"train": {"epochs": len(self.curve)}},
                sweep={"id": self.sweep, "trial": self.number, "params": {"n": self.number}},
                barrier=True,
                barrier_timeout=HANG,
                heartbeat_timeout=HEARTBEAT_TIMEOUT,
            )
            run.attach(trainer)
            run.attach(evaluator, "val")
            with run:
                run.publisher.flush(HANG)  # RUN_STARTED is on the bus before start() returns
                self._started.set()
                trainer.run([0, 0], max_epochs=len(self.curve))
        except BaseException as exc:  # surfaced by join()
            self.error = exc
            self._started.set()


class Pruner:
    """A `trainer worker pruner` process; its log (stdout and stderr) goes to a file."""

    def __init__(self, url: str, log: Path, *args: str) -> None:
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 (closed when the process is over)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        env.pop("TRAINER_BUS_SECRET", None)
        self.argv = [sys.executable, "-m", "trainer.cli", "worker", "pruner", "--bus", url, *args]
        self.proc = subprocess.Popen(
            self.argv, env=env, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT
        )

    def output(self) -> str:
        """Everything the process printed so far."""
        self._out.flush()
        return self.log.read_text()

    def decisions(self) -> list[dict[str, str]]:
        """Its `event=decision` log lines as key -> value maps, in order."""
        found = []
        for line in self.output().splitlines():
            if " event=decision " in line:
                found.append(dict(pair.split("=", 1) for pair in shlex.split(line)))
        return found

    def kill(self) -> None:
        """SIGKILL: no WORKER_LEFT, no last word."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(HANG)

    def stop(self) -> int:
        """SIGTERM, then its exit status (SIGKILL after the hang guard)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(HANG)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"pruner did not stop:\n{self.output()}") from None
        finally:
            self._out.close()

    def wait(self) -> int:
        """Its exit status once it ended by itself."""
        code = self.proc.wait(HANG)
        self._out.close()
        return code


class BusReader:
    """The test's view of the bus: runs' control and registry entries, decoded."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url)

    def envelopes(self, topic: str) -> list[Envelope]:
        """Every envelope of `topic`, in order."""
        return [decode(fields[b"env"]) for _, fields in self.redis.xrange(topic)]

    def joined(self, run_id: str, name: str) -> int:
        """How many times the worker `name` joined run `run_id`."""
        return sum(
            1
            for env in self.envelopes(TOPICS.control(run_id))
            if env.type == WORKER_JOINED and env.data.get("name") == name
        )

    def votes(self, run_id: str, name: str) -> list[tuple[int, bool]]:
        """(epoch, stop) of every vote `name` cast on `run_id`."""
        return [
            (env.data["epoch"], env.data["stop"])
            for env in self.envelopes(TOPICS.control(run_id))
            if env.type == VOTE and env.data.get("voter") == name
        ]

    def finished(self, run_id: str) -> dict[str, Any] | None:
        """The data of run `run_id`'s RUN_FINISHED on the registry, once there."""
        for env in self.envelopes(TOPICS.registry()):
            if env.type == RUN_FINISHED and env.run_id == run_id:
                return {**env.data, "source": env.source}
        return None

    def keys(self) -> list[bytes]:
        """Every key in the database."""
        return sorted(self.redis.keys("*"))
