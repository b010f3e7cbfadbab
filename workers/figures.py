"""An epoch's figures: where every worker kind finds a split's metric values for one epoch.

The rule, in one place for every kind (tracking, checkpoint, early-stop...):
- METRICS (not running) from the metrics worker carry them, in any run;
- in a one-rank run (RUN_STARTED `world_size` 1) the epoch's own EPOCH_COMPLETED `metrics` are
  the same numbers, so a worker never waits for a metrics worker that may not be there;
- with several ranks (or an EPOCH_COMPLETED that brings metric states but no metrics) only the
  metrics worker's METRICS have them: a worker that must wait for them says so in its log
  (`event=waiting waits_for=metrics`, see `FiguresWait`), within WAIT_NOTICE seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bus import Envelope, Rejected
from bus.messages import EPOCH_COMPLETED, METRICS
from workers.context import RunContext

# The kind whose reports a worker waits for when the figures are not the trainer's own.
METRICS_KIND = "metrics"
# Seconds a worker waits for figures before its log says it is waiting (well within 5 s).
WAIT_NOTICE = 1.0


@dataclass(frozen=True)
class EpochFigures:
    """One split's metric values for one trainer epoch (0-based, as on the wire)."""

    split: str
    epoch: int
    values: Mapping[str, Any]
    iteration: int


def own_figures(world_size: int) -> bool:
    """True when the trainer's EPOCH_COMPLETED metrics are the epoch's figures (one rank)."""
    return world_size == 1


def epoch_figures(env: Envelope, world_size: int) -> EpochFigures | None:
    """The figures `env` carries (METRICS, or a one-rank EPOCH_COMPLETED), else None.

    Raises `bus.Rejected` naming the key of a METRICS or EPOCH_COMPLETED that cannot carry any.
    An EPOCH_COMPLETED with empty `metrics` (metric states only) carries none: its figures come
    as the metrics worker's METRICS.
    """
    data = env.data
    if env.type == METRICS:
        if data.get("running"):
            return None  # a running mean within the epoch, not the epoch's figures
        epoch, values = data.get("epoch"), data.get("values")
        values_key = "values"
    elif env.type == EPOCH_COMPLETED and own_figures(world_size):
        epoch, values = env.epoch, data.get("metrics")
        values_key = "metrics"
    else:
        return None
    split = data.get("split")
    what = f"{env.type} {env.id} from {env.source}"
    if not isinstance(split, str) or not split:
        raise Rejected(f"{what}: data.split is {split!r}, not a split name (e.g. 'val')")
    if type(epoch) is not int or epoch < 0:
        raise Rejected(f"{what}: data.epoch is {epoch!r}, not an epoch number (int >= 0)")
    if not isinstance(values, Mapping):
        kind = type(values).__name__
        raise Rejected(f"{what}: data.{values_key} is {kind}, not a map of metric values")
    if not values:
        return None
    return EpochFigures(split=split, epoch=epoch, values=values, iteration=env.iteration)


def awaits_metrics(env: Envelope, world_size: int) -> bool:
    """True for an EPOCH_COMPLETED whose figures only the metrics worker's METRICS will carry."""
    if env.type != EPOCH_COMPLETED:
        return False
    metrics = env.data.get("metrics")
    return not own_figures(world_size) or not (isinstance(metrics, Mapping) and metrics)


class FiguresWait:
    """Says in a worker's log, once per (split, epoch), that it waits for the metrics worker.

    `expect` when a worker starts waiting for METRICS; `arrived` when they came (or it gave
    up). A wait that lasts WAIT_NOTICE seconds logs `event=waiting waits_for=metrics` with the
    epoch as people count it ("epoch=4/10"), so a worker is never silent while it waits.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._timers: dict[tuple[str, int], asyncio.Task[None] | None] = {}

    def expect(self, split: str, epoch: int, **context: Any) -> None:
        """Start the notice for (split, epoch), unless it is already running or settled."""
        key = (split, epoch)
        if key not in self._timers:
            self._timers[key] = self.ctx.spawn(self._notice(split, epoch, context))

    def arrived(self, split: str, epoch: int) -> None:
        """The figures of (split, epoch) came (or the wait is over): no notice for them."""
        timer = self._timers.get((split, epoch))
        if timer is not None:
            timer.cancel()
        self._timers[(split, epoch)] = None

    async def _notice(self, split: str, epoch: int, context: dict[str, Any]) -> None:
        await asyncio.sleep(WAIT_NOTICE)
        self._timers[(split, epoch)] = None
        self.ctx.log.info(
            "waiting",
            extra={
                "waits_for": METRICS_KIND,
                "epoch": self.ctx.epoch_label(epoch),
                "split": split,
                **context,
                "detail": f"the {split} figures of this epoch come only as METRICS from a "
                f"{METRICS_KIND} worker (world size {self.ctx.world_size}); is one running "
                "on this run?",
            },
        )
