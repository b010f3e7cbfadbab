"""A sampler whose order depends only on a seed and the current epoch, so resume replays it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler


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
