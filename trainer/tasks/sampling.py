"""A sampler whose order depends only on a seed and the current epoch, so resume replays it;
and the loaders of in-memory data sets built on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset


class EpochShuffleSampler(Sampler[int]):
    """Yields a permutation of `range(size)` drawn from `(seed, epoch_fn())` at each new pass.

    `epoch_fn` is read when a pass starts (e.g. `lambda: engine.state.epoch`), so a run resumed
    mid-epoch sees the same order as the uninterrupted one. This holds when each epoch is one
    full pass over the data (`epoch_length` unset or equal to the number of batches).
    """

    def __init__(self, size: int, seed: int, epoch_fn: Callable[[], int]) -> None:
        if size < 1:
            raise ValueError(f"EpochShuffleSampler needs a positive size, got {size}")
        self.size, self.seed, self.epoch_fn = size, seed, epoch_fn

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.epoch_fn()))
        return iter(torch.randperm(self.size, generator=generator).tolist())


def tensor_loaders(
    cfg: Any,
    epoch_fn: Callable[[], int],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders over in-memory tensors, batched by `data.batch_size`.

    The training order is reshuffled per epoch from `run.seed` (`data.shuffle`), so a resumed
    run sees the same batches; validation uses large batches, since it computes no gradients.
    """
    train_set = TensorDataset(x_train, y_train)
    sampler = (
        EpochShuffleSampler(len(train_set), cfg.run.seed, epoch_fn) if cfg.data.shuffle else None
    )
    train = DataLoader(train_set, batch_size=cfg.data.batch_size, sampler=sampler)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=max(cfg.data.batch_size, 256))
    return train, val
