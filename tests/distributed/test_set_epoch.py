"""The Engine tells a DistributedSampler the epoch, so every epoch has its own shuffle."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset

from trainer import Engine, Events

SIZE = 40  # per rank: 20 samples, 5 batches of 4
EPOCHS = 4


def sampler() -> DistributedSampler:
    """Rank 0 of 2, shuffling: the sampler a torchrun script hands its DataLoader."""
    return DistributedSampler(TensorDataset(torch.arange(SIZE)), num_replicas=2, rank=0, seed=5)


def loader(batch_sampler: bool = False) -> DataLoader:
    """Batches of 4 indices, the sampler given as `sampler` or inside a `batch_sampler`."""
    dataset = TensorDataset(torch.arange(SIZE))
    if batch_sampler:
        return DataLoader(dataset, batch_sampler=BatchSampler(sampler(), 4, drop_last=False))
    return DataLoader(dataset, batch_size=4, sampler=sampler())


def torch_order(epoch: int) -> list[int]:
    """The indices torch's own DistributedSampler yields for `epoch`."""
    reference = sampler()
    reference.set_epoch(epoch)
    return list(reference)


def recording_engine(seen: list[int]) -> Engine:
    def step(engine: Engine, batch: list[torch.Tensor]) -> None:
        seen.extend(batch[0].tolist())

    return Engine(step)


@pytest.mark.parametrize("batch_sampler", [False, True], ids=["sampler", "batch_sampler"])
def test_each_epoch_draws_torchs_order_for_that_epoch(batch_sampler: bool) -> None:
    seen: list[int] = []
    engine = recording_engine(seen)
    per_epoch: list[list[int]] = []
    engine.on(Events.EPOCH_COMPLETED, lambda e: per_epoch.append(seen[len(per_epoch) * 20 :]))
    engine.run(loader(batch_sampler), max_epochs=EPOCHS)
    assert per_epoch == [torch_order(epoch) for epoch in range(EPOCHS)]
    assert len({tuple(order) for order in per_epoch}) == EPOCHS  # a new shuffle every epoch


@pytest.mark.parametrize("epoch_length", [None, 3], ids=["full-pass", "epoch-of-3-batches"])
@pytest.mark.parametrize("stop_at", [2, 5, 7, 9, 12])
def test_a_resumed_run_replays_the_uninterrupted_order(
    epoch_length: int | None, stop_at: int
) -> None:
    # Each process builds its own loader, whose fresh sampler knows no epoch: the resumed one
    # must be told the epoch its interrupted pass began in before skipping the consumed batches.
    # With epochs of 3 batches a pass of 5 spans epochs, and a pass begun in epoch e shuffles
    # by e (set_epoch is called at every epoch's start).
    uninterrupted: list[int] = []
    recording_engine(uninterrupted).run(loader(), max_epochs=EPOCHS, epoch_length=epoch_length)

    seen: list[int] = []
    first = recording_engine(seen)
    saved: dict = {}

    @first.on(Events.ITERATION_COMPLETED(once=stop_at))
    def crash(engine: Engine) -> None:
        saved.update(engine.state_dict())
        raise RuntimeError("the process dies")

    with pytest.raises(RuntimeError, match="dies"):
        first.run(loader(), max_epochs=EPOCHS, epoch_length=epoch_length)
    resumed = recording_engine(seen)
    resumed.load_state_dict(saved)
    resumed.run(loader())
    assert seen == uninterrupted


def test_full_passes_draw_torchs_order_per_epoch_when_resumed() -> None:
    # The same in plain terms: stopped 2 batches into epoch 1, the resumed epoch yields the
    # rest of torch's epoch-1 order, then all of epoch 2's.
    first = recording_engine([])
    saved: dict = {}

    @first.on(Events.ITERATION_COMPLETED(once=7))
    def stop(engine: Engine) -> None:
        saved.update(engine.state_dict())
        engine.terminate()

    first.run(loader(), max_epochs=3)
    seen: list[int] = []
    resumed = recording_engine(seen)
    resumed.load_state_dict(saved)
    resumed.run(loader())
    assert seen == torch_order(1)[8:] + torch_order(2)


def test_a_users_epoch_started_handler_has_the_last_word() -> None:
    # Scripts that already call set_epoch themselves (with their own numbering) keep theirs.
    seen: list[int] = []
    engine = recording_engine(seen)
    data = loader()
    engine.on(Events.EPOCH_STARTED, lambda e: data.sampler.set_epoch(100 + e.state.epoch))
    engine.run(data, max_epochs=2)
    assert seen == torch_order(100) + torch_order(101)
