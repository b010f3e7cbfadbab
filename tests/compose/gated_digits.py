"""`data.name: gated_digits:build`: the digits job, whose second epoch waits for a file.

The stack test attaches a worker mid-run; a digits epoch lasts well under a second, less than a
worker takes to start. Training waits before its second epoch until the file `extra.gate`
exists, which the test creates once the late worker has attached, so "mid-run" is certain. No
number the run computes changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trainer.tasks.digits import build as build_digits
from trainer.tasks.registry import DataBundle

# The test fails long before this; it only keeps a forgotten process from waiting forever.
_GATE_TIMEOUT = 600.0


class _Gated:
    """A loader whose passes after the first start once `gate` exists."""

    def __init__(self, loader: Any, gate: Path) -> None:
        self.loader, self.gate, self.passes = loader, gate, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self.passes += 1
        deadline = time.monotonic() + _GATE_TIMEOUT
        while self.passes > 1 and not self.gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield from self.loader


def build(cfg: Any, epoch_fn: Callable[[], int]) -> DataBundle:
    """The digits bundle with training held before its second epoch until `extra.gate` exists."""
    bundle = build_digits(cfg, epoch_fn)
    return DataBundle(
        train=_Gated(bundle.train, Path(cfg.extra["gate"])),  # type: ignore[arg-type]
        val=bundle.val,
        in_features=bundle.in_features,
        num_classes=bundle.num_classes,
    )
