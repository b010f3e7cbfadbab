"""The rules a sweep's trials are judged by, wherever they are read (the bus, the tracking
store): what a trial is scored by, and when a stop counts as pruning. Pure and torch-free."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SweepGoal:
    """What a trial is scored by: the best `metric` of `split` over its epochs, `mode` max/min."""

    metric: str = "accuracy"
    split: str = "val"
    mode: str = "max"

    @property
    def key(self) -> str:
        """The metric's name in the tracking store: "val/accuracy"."""
        return f"{self.split}/{self.metric}"

    def better(self, a: float, b: float | None) -> bool:
        """Whether `a` beats `b` (None: nothing yet)."""
        if b is None or math.isnan(b):
            return not math.isnan(a)
        return a > b if self.mode == "max" else a < b

    def to_dict(self) -> dict[str, str]:
        """As it travels on the bus."""
        return {"metric": self.metric, "split": self.split, "mode": self.mode}


# How a pruner words its stop vote (the pruner kind, docs/sweeps.md): "rung 2 (epoch 4): ...".
_PRUNED = re.compile(r"rung (\d+) \(epoch (\d+)\)")


def pruned_at(reason: str | None) -> tuple[int, int] | None:
    """(rung, epoch counted from 1) of a pruner's stop reason, or None for any other reason.

    The one rule by which a trial stopped by a vote counts as pruned, on the bus and on disk.
    """
    found = _PRUNED.match(reason) if isinstance(reason, str) else None
    return None if found is None else (int(found.group(1)), int(found.group(2)))
