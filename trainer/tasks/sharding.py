"""A data bundle split between the ranks of a job: each rank trains and validates on its share.

Any data builder's loaders are re-made around the same datasets, so a builder needs to know
nothing of ranks. The training share is torch's `DistributedSampler`, shuffled from the run seed
(the Engine tells it the epoch, resume included); every rank gets as many batches, which the
gradient all-reduce of DistributedDataParallel needs. The validation share is every
`world_size`-th sample from the rank's own, with no sample repeated: the metrics merged over the
ranks are then those of the whole split, whatever its size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Sampler

from trainer.tasks.registry import DataBundle


class EvalShard(Sampler[int]):
    """Indices `rank, rank + world_size, ...` of a dataset of `size`: a rank's evaluation share.

    Unlike `DistributedSampler` it never pads: the shares may differ by one sample, and each
    sample is counted exactly once over the ranks.
    """

    def __init__(self, size: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"EvalShard rank {rank} must be in [0, {world_size})")
        self.size, self.rank, self.world_size = size, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))


def _check(loader: DataLoader, what: str) -> None:
    """Refuse a loader whose samples cannot be dealt out by index."""
    dataset: Dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or loader.batch_size is None:
        raise ValueError(
            f"the {what} DataLoader of the data builder cannot be split between ranks: it needs "
            "a map-style dataset and a batch_size (got "
            f"{type(dataset).__name__}, batch_size={loader.batch_size!r}); build it so, or "
            "train with one rank"
        )


def _reloaded(loader: DataLoader, sampler: Sampler[int]) -> DataLoader:
    """`loader` again over the same dataset and batching, drawing indices from `sampler`."""
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )


def shard(bundle: DataBundle, rank: int, world_size: int, seed: int, shuffle: bool) -> DataBundle:
    """`bundle` with its loaders split between `world_size` ranks, as rank `rank` sees them."""
    if world_size == 1:
        return bundle
    _check(bundle.train, "training")
    _check(bundle.val, "validation")
    train_set = bundle.train.dataset
    train_sampler = DistributedSampler(
        train_set,  # type: ignore[arg-type]
        num_replicas=world_size,
        rank=rank,
        shuffle=shuffle,
        seed=seed,
    )
    val_sampler = EvalShard(len(bundle.val.dataset), rank, world_size)  # type: ignore[arg-type]
    return replace(
        bundle,
        train=_reloaded(bundle.train, train_sampler),
        val=_reloaded(bundle.val, val_sampler),
    )
