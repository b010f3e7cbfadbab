"""An early-stop voter written against the bus API alone, as a worker in another process would.

It registers, heartbeats, reads the run's events from the beginning, applies the patience rule
(trainer.patience, the rule the in-process EarlyStopping uses) to the validation score of each
epoch and votes on that epoch; it ends at RUN_FINISHED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bus import Bus, encode, tail
from trainer.patience import Patience

from ._bus import TOPICS, heartbeats, joined, vote


def patience_voter(
    run_id: str,
    name: str,
    patience: int,
    *,
    metric: str = "score",
    split: str = "val",
    mode: str = "max",
    min_delta: float = 0.0,
) -> Callable[[Bus], Awaitable[list[bool]]]:
    """A task for `BusClient.spawn`; its result is the list of stop votes it cast, by epoch."""

    async def run(bus: Bus) -> list[bool]:
        control_topic = TOPICS.control(run_id)
        await bus.append(control_topic, [encode(joined(run_id, name))])
        beating = asyncio.create_task(heartbeats(run_id, name)(bus))
        rule = Patience(patience, min_delta=min_delta, mode=mode)
        cast: list[bool] = []
        try:
            async for env in tail(bus, TOPICS.events(run_id), block=0.05):
                if env.type == "EPOCH_COMPLETED" and env.data["split"] == split:
                    stop = rule.step(env.data["metrics"][metric])
                    reason = f"{metric} did not improve in {rule.counter} evaluations"
                    ballot = vote(run_id, name, stop, env.epoch, reason)
                    await bus.append(control_topic, [encode(ballot)])
                    cast.append(stop)
                elif env.type == "RUN_FINISHED":
                    return cast
        finally:
            beating.cancel()
        return cast

    return run
