"""A stand-in for the trainer's bridge: writes a run's envelopes as the message catalogue says.

It appends with `bus.encode` + `Bus.append`, so each call returns once the entry is on the bus.
Also: reading a topic back, and waiting (hang-guarded) for something to show up there.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bus import Bus, Envelope, Topics, encode, tail

HANG_GUARD = 30.0


class FakeTrainer:
    """Rank `rank` of run `run_id`: RUN_STARTED (events + registry), events, RUN_FINISHED."""

    def __init__(
        self,
        bus: Bus,
        run_id: str,
        *,
        config: dict[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        namespace: str = "trainer",
    ) -> None:
        self.bus = bus
        self.run_id = run_id
        self.config = config if config is not None else {}
        self.rank = rank
        self.world_size = world_size
        self.topics = Topics(namespace)
        self.source = f"trainer:{rank}"
        self.sent: list[Envelope] = []

    def envelope(
        self, type: str, data: dict[str, Any], *, epoch: int = 0, iteration: int = 0, **kw: Any
    ) -> Envelope:
        """An envelope of this rank."""
        return Envelope(
            type=type,
            run_id=self.run_id,
            source=self.source,
            data=data,
            epoch=epoch,
            iteration=iteration,
            **kw,
        )

    async def send(self, env: Envelope, *, registry: bool = False) -> Envelope:
        """Append `env` to the run's events topic (and the registry, with the same bytes)."""
        payload = encode(env)
        await self.bus.append(self.topics.events(self.run_id), [payload])
        if registry:
            await self.bus.append(self.topics.registry(), [payload])
        self.sent.append(env)
        return env

    async def start(self, *, ts: float | None = None) -> Envelope:
        """RUN_STARTED, then STARTED of the train split."""
        data = {
            "config": self.config,
            "rank": self.rank,
            "world_size": self.world_size,
            "host": "test-host",
            "pid": 4242,
            "resumed_from": None,
            "checkpoint_dir": None,
            "namespace": self.topics.namespace,
        }
        extra = {} if ts is None else {"ts": ts}
        started = await self.send(self.envelope("RUN_STARTED", data, **extra), registry=True)
        await self.send(self.envelope("STARTED", {"split": "train"}, **extra))
        return started

    async def iteration(
        self,
        epoch: int,
        iteration: int,
        outputs: dict[str, float],
        *,
        split: str = "train",
        ts: float | None = None,
    ) -> Envelope:
        """ITERATION_COMPLETED of `split` at the trainer's epoch/iteration."""
        data = {"split": split, "outputs": outputs, "count": 1}
        extra = {} if ts is None else {"ts": ts}
        return await self.send(
            self.envelope("ITERATION_COMPLETED", data, epoch=epoch, iteration=iteration, **extra)
        )

    async def epoch_completed(
        self,
        epoch: int,
        iteration: int,
        *,
        split: str = "train",
        ts: float | None = None,
        metrics: dict[str, float] | None = None,
    ) -> Envelope:
        """EPOCH_COMPLETED of `split` (the trainer's epoch/iteration, whatever the split)."""
        data = {
            "split": split,
            "metrics": metrics or {},
            "metric_states": {},
            "rank": self.rank,
            "world_size": self.world_size,
        }
        extra = {} if ts is None else {"ts": ts}
        return await self.send(
            self.envelope("EPOCH_COMPLETED", data, epoch=epoch, iteration=iteration, **extra)
        )

    async def metrics(
        self, epoch: int, split: str, values: dict[str, float], *, running: bool = False
    ) -> Envelope:
        """METRICS as the metrics worker publishes them on the events topic."""
        env = Envelope(
            type="METRICS",
            run_id=self.run_id,
            source="metrics-test",
            data={
                "split": split,
                "epoch": epoch,
                "values": values,
                "ranks": list(range(self.world_size)),
                "running": running,
            },
            epoch=epoch,
        )
        return await self.send(env)

    async def finish(self, status: str = "completed", *, epochs: int = 0) -> Envelope:
        """COMPLETED, then RUN_FINISHED on events + registry."""
        await self.send(self.envelope("COMPLETED", {"split": "train"}))
        data = {"status": status, "reason": "test", "by": None, "epochs": epochs, "iteration": 0}
        return await self.send(self.envelope("RUN_FINISHED", data), registry=True)


async def read_all(bus: Bus, topic: str) -> list[Envelope]:
    """Every envelope on `topic` now, oldest first."""
    return [env async for env in tail(bus, topic, follow=False)]


async def eventually(
    check: Callable[[], Awaitable[Any] | Any], what: str, timeout: float = HANG_GUARD
) -> Any:
    """Poll `check` (sync or async) until it gives something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout} s")
        await asyncio.sleep(0.01)


async def control(bus: Bus, run_id: str, type: str | None = None) -> list[Envelope]:
    """The envelopes on run `run_id`'s control topic (of `type` only, if given)."""
    envs = await read_all(bus, Topics().control(run_id))
    return [env for env in envs if type is None or env.type == type]


async def votes_of(bus: Bus, run_id: str, voter: str) -> list[Envelope]:
    """The VOTEs of `voter` on run `run_id`, in the order they were sent."""
    return [env for env in await control(bus, run_id, "VOTE") if env.data["voter"] == voter]
