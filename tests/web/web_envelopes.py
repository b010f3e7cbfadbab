"""Hand-built envelopes of a run (docs/protocol.md section 10), written to a bus for the web
view's tests that need no trainer."""

from __future__ import annotations

import time
from typing import Any

from bus import Envelope, Topics, encode, open_bus


def started(run: str, config: dict[str, Any] | None = None, ts: float | None = None) -> Envelope:
    """RUN_STARTED of rank 0 of a one-rank run."""
    return Envelope(
        "RUN_STARTED",
        run,
        "trainer:0",
        {
            "config": config or {"run": {"name": "digits"}, "train": {"epochs": 10}},
            "rank": 0,
            "world_size": 1,
            "host": "vm",
            "pid": 1,
            "resumed_from": None,
        },
        ts=ts or time.time(),
    )


def metrics(run: str, epoch: int, accuracy: float, split: str = "val") -> Envelope:
    """The aggregator's METRICS of `epoch` (0-indexed)."""
    return Envelope(
        "METRICS",
        run,
        "metrics-test",
        {"split": split, "epoch": epoch, "values": {"accuracy": accuracy}, "ranks": [0]},
        epoch,
        (epoch + 1) * 10,
    )


def finished(run: str, by: str = "es-1", status: str = "terminated") -> Envelope:
    """RUN_FINISHED of rank 0."""
    return Envelope(
        "RUN_FINISHED",
        run,
        "trainer:0",
        {"status": status, "reason": "no progress", "by": by, "epochs": 2, "iteration": 20},
        1,
        20,
    )


async def publish(url: str, envelopes: list[Envelope], namespace: str = "trainer") -> list[str]:
    """Append envelopes to their run's events (and registry) topics; the events entry ids."""
    topics = Topics(namespace)
    bus = open_bus(url)
    ids = []
    try:
        for env in envelopes:
            ids += await bus.append(topics.events(env.run_id), [encode(env)])
            if env.type in ("RUN_STARTED", "RUN_FINISHED"):
                await bus.append(topics.registry(), [encode(env)])
    finally:
        await bus.close()
    return ids
