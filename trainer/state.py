"""State: what the Engine knows about the run in progress, readable by every handler."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class State:
    """The run's counters, last batch and output, metrics and timings.

    `epoch` is 0-indexed (the first epoch's handlers see 0); `iteration` counts iterations started
    over the whole run and `epoch_iteration` within the current epoch, both 1-based. Users may set
    their own attributes on it, as in Ignite.
    """

    def __init__(self) -> None:
        self.epoch: int = 0
        self.iteration: int = 0
        self.epoch_iteration: int = 0
        self.max_epochs: int | None = None
        self.epoch_length: int | None = None
        self.output: Any = None
        self.batch: Any = None
        self.metrics: dict[str, Any] = {}
        self.dataloader: Iterable[Any] | None = None
        self.times: dict[str, float] = {"EPOCH_COMPLETED": 0.0, "COMPLETED": 0.0}

    def __repr__(self) -> str:
        fields = ("epoch", "iteration", "epoch_iteration", "max_epochs", "epoch_length", "metrics")
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in fields)
        return f"State({inner})"
