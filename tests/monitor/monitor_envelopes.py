"""Hand-built envelopes of a run, as docs/protocol.md section 10 describes them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bus import Bus, Envelope, Topics, encode

T0 = 1_700_000_000.0


def env(
    type: str,
    data: dict[str, Any] | None = None,
    *,
    run: str = "r1",
    source: str = "trainer:0",
    epoch: int = 0,
    iteration: int = 0,
    ts: float = T0,
) -> Envelope:
    """One envelope of run `run`."""
    return Envelope(
        type=type,
        run_id=run,
        source=source,
        data=data or {},
        epoch=epoch,
        iteration=iteration,
        ts=ts,
    )


def started(
    run: str = "r1",
    *,
    epochs: int = 3,
    epoch_length: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    ts: float = T0,
    iteration: int = 0,
    epoch: int = 0,
    resumed_from: str | None = None,
    heartbeat_timeout: float | None = 10.0,
) -> Envelope:
    """RUN_STARTED of one rank, with the config keys the monitor reads."""
    config = {
        "run": {"name": "digits"},
        "train": {"epochs": epochs, "epoch_length": epoch_length},
        "bus": {"heartbeat_timeout": heartbeat_timeout},
    }
    data = {
        "config": config,
        "rank": rank,
        "world_size": world_size,
        "host": f"host{rank}",
        "pid": 100 + rank,
        "resumed_from": resumed_from,
    }
    return env(
        "RUN_STARTED",
        data,
        run=run,
        source=f"trainer:{rank}",
        ts=ts,
        iteration=iteration,
        epoch=epoch,
    )


def step(run: str, iteration: int, epoch: int, ts: float, loss: float, rank: int = 0) -> Envelope:
    """ITERATION_COMPLETED of the train split."""
    data = {"split": "train", "outputs": {"loss": loss}, "count": 1}
    return env(
        "ITERATION_COMPLETED",
        data,
        run=run,
        source=f"trainer:{rank}",
        epoch=epoch,
        iteration=iteration,
        ts=ts,
    )


def epoch_completed(
    run: str,
    split: str,
    epoch: int,
    iteration: int,
    ts: float,
    metrics: dict[str, float],
    rank: int = 0,
) -> Envelope:
    """EPOCH_COMPLETED of a split with its scalar metrics."""
    data = {"split": split, "metrics": metrics, "metric_states": {}, "rank": rank}
    return env(
        "EPOCH_COMPLETED",
        data,
        run=run,
        source=f"trainer:{rank}",
        epoch=epoch,
        iteration=iteration,
        ts=ts,
    )


def metrics(run: str, split: str, epoch: int, ts: float, values: dict[str, float]) -> Envelope:
    """METRICS of the aggregator for a split's epoch."""
    data = {"split": split, "epoch": epoch, "values": values, "ranks": [0], "running": False}
    return env("METRICS", data, run=run, source="metrics-w", epoch=epoch, ts=ts)


def saved(
    run: str, path: str, epoch: int, iteration: int, aliases: list[str], **kw: Any
) -> Envelope:
    """CHECKPOINT_SAVED of the checkpoint worker."""
    data = {
        "path": path,
        "sha256": "0" * 64,
        "epoch": epoch,
        "iteration": iteration,
        "aliases": aliases,
        "score": kw.pop("score", None),
        "ready_id": kw.pop("ready_id", "R"),
    }
    return env("CHECKPOINT_SAVED", data, run=run, source="ckpt-w", **kw)


def worker(type: str, name: str, kind: str, ts: float, run: str = "r1", **data: Any) -> Envelope:
    """A control envelope of a worker (WORKER_JOINED, HEARTBEAT, WORKER_LEFT)."""
    return env(type, {"kind": kind, "name": name, **data}, run=run, source=name, ts=ts)


def vote(name: str, stop: bool, epoch: int, reason: str, ts: float, run: str = "r1") -> Envelope:
    """A voter's VOTE."""
    data = {"stop": stop, "reason": reason, "voter": name, "epoch": epoch}
    return env("VOTE", data, run=run, source=name, ts=ts)


def finished(
    run: str, status: str, reason: str, by: str | None, epochs: int, iteration: int, ts: float
) -> Envelope:
    """RUN_FINISHED of rank 0."""
    data = {"status": status, "reason": reason, "by": by, "epochs": epochs, "iteration": iteration}
    return env("RUN_FINISHED", data, run=run, epoch=epochs - 1, iteration=iteration, ts=ts)


def training(
    run: str, *, epochs: int, length: int, t0: float, dt: float, losses: Sequence[float]
) -> list[Envelope]:
    """The events of `epochs` epochs of `length` steps, `dt` s apart, with val accuracy
    0.5, 0.6, ... and the train loss of each epoch from `losses` (one per epoch)."""
    out = []
    ts = t0
    for epoch in range(epochs):
        out.append(env("EPOCH_STARTED", {"split": "train"}, run=run, epoch=epoch, ts=ts))
        for i in range(length):
            ts += dt
            iteration = epoch * length + i + 1
            out.append(step(run, iteration, epoch, ts, losses[epoch] + 0.01 * (length - i)))
        iteration = (epoch + 1) * length
        out.append(epoch_completed(run, "train", epoch, iteration, ts, {"loss": losses[epoch]}))
        accuracy = 0.5 + 0.1 * epoch
        out.append(epoch_completed(run, "val", epoch, iteration, ts, {"accuracy": accuracy}))
    return out


async def publish(bus: Bus, topic: str, envelopes: Sequence[Envelope]) -> None:
    """Append the envelopes to `topic` in order."""
    await bus.append(topic, [encode(e) for e in envelopes])


async def publish_run(
    bus: Bus,
    run: str,
    *,
    epochs: int = 2,
    length: int = 4,
    t0: float = T0,
    dt: float = 0.05,
    finish: bool = True,
    namespace: str = "trainer",
) -> None:
    """A whole run on `bus`: registry, events (training, then RUN_FINISHED) and a worker."""
    topics = Topics(namespace)
    start = started(run, epochs=epochs, ts=t0)
    events = [start, *training(run, epochs=epochs, length=length, t0=t0, dt=dt, losses=[1.0] * 9)]
    end = epochs * length
    control = [worker("WORKER_JOINED", "es-9", "early-stop", t0, run=run, votes=True)]
    await publish(bus, topics.registry(), [start])
    await publish(bus, topics.control(run), control)
    if finish:
        done = finished(run, "completed", "", None, epochs, end, events[-1].ts + dt)
        events.append(done)
        await publish(bus, topics.registry(), [done])
    await publish(bus, topics.events(run), events)
