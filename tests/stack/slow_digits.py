"""`data.name: slow_digits:build` — the digits job, with every training batch taking a while.

The stack tests kill and restart processes in the middle of a run; a digits epoch lasts a few
milliseconds, too short to aim at. `extra.batch_delay` seconds per batch make it long enough
without changing a single number the run computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from trainer.tasks.digits import build as build_digits
from trainer.tasks.registry import DataBundle


class _Slow:
    """A loader that sleeps before handing out each batch."""

    def __init__(self, loader: Any, delay: float) -> None:
        self.loader, self.delay = loader, delay

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            time.sleep(self.delay)
            yield batch


def build(cfg: Any, epoch_fn: Callable[[], int]) -> DataBundle:
    """The digits bundle with training batches delayed by `extra.batch_delay` seconds."""
    bundle = build_digits(cfg, epoch_fn)
    delay = float(cfg.extra.get("batch_delay", 0.02))
    return DataBundle(
        train=_Slow(bundle.train, delay),  # type: ignore[arg-type]
        val=bundle.val,
        in_features=bundle.in_features,
        num_classes=bundle.num_classes,
    )
