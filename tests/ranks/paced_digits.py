"""`data.name: paced_digits:build` — the digits job, its split read from a file, each training
batch taking a while.

`extra.digits_file` holds the example's split as `trainer.tasks.digits.digits_tensors` makes it,
written by the test: every rank of every job would otherwise import scikit-learn for it, which
costs seconds of CPU per process on the 2 cores the tests share.

The scenarios kill processes in the middle of an epoch, which on digits lasts milliseconds.
`extra.batch_delay` seconds per training batch, spent in the loader's collate function, give
them time to aim; the delay survives the split between ranks (the loaders are re-made around
the same collate function) and changes no number the run computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset, default_collate

from trainer.tasks.objectives import CLASSIFICATION
from trainer.tasks.registry import DataBundle
from trainer.tasks.sampling import EpochShuffleSampler


def write_digits(path: Path, val_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write the digits split the example trains on to `path` (in the test process)."""
    from trainer.tasks.digits import digits_tensors

    torch.save(digits_tensors(val_fraction, seed), path)
    return path


class PacedCollate:
    """torch's default collate, after sleeping `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __call__(self, batch: Any) -> Any:
        time.sleep(self.delay)
        return default_collate(batch)


def build(cfg: Any, epoch_fn: Callable[[], int]) -> DataBundle:
    """The digits bundle of `extra.digits_file`, training batches delayed `extra.batch_delay` s."""
    x_train, y_train, x_val, y_val = torch.load(cfg.extra["digits_file"], weights_only=True)
    train_set = TensorDataset(x_train, y_train)
    train = DataLoader(
        train_set,
        batch_size=cfg.data.batch_size,
        sampler=EpochShuffleSampler(len(train_set), cfg.run.seed, epoch_fn),
        collate_fn=PacedCollate(float(cfg.extra.get("batch_delay", 0.0))),
    )
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=max(cfg.data.batch_size, 256))
    return DataBundle(
        train=train, val=val, in_features=x_train.shape[1], task=CLASSIFICATION, num_classes=10
    )
