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


# How a pruner words its stop vote (the pruner kind, docs/sweeps.md): "rung 2 (epoch 4): ..."
# (asha, hyperband); the median rule judges every epoch, so each is its rung: "epoch 4: best
# loss so far 0.52 above the median ..." or "epoch 4: loss has been NaN at every epoch so far".
_PRUNED = re.compile(r"rung (\d+) \(epoch (\d+)\)")
_PRUNED_BY_MEDIAN = re.compile(r"epoch (\d+): (?:best .* the median |\S+ has been NaN at every)")


def pruned_at(reason: str | None) -> tuple[int, int] | None:
    """(rung, epoch counted from 1) of a pruner's stop reason, or None for any other reason.

    The one rule by which a trial stopped by a vote counts as pruned, on the bus and on disk.
    """
    if not isinstance(reason, str):
        return None
    found = _PRUNED.match(reason)
    if found is not None:
        return int(found.group(1)), int(found.group(2))
    found = _PRUNED_BY_MEDIAN.match(reason)
    return None if found is None else (int(found.group(1)), int(found.group(1)))
