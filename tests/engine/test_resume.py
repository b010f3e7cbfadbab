"""state_dict()/load_state_dict() resume at the exact iteration, bit-identical to one run."""

from __future__ import annotations

import pytest
import torch

from trainer import Engine, Events

EPOCHS = 3


def make_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(70, 5, generator=g)
    y = x @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(70, 1, generator=g)
    return [(x[i : i + 10], y[i : i + 10]) for i in range(0, 70, 10)]  # 7 batches


def make_trainer(seed: int = 1) -> tuple[Engine, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        x, y = batch
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return Engine(step), model, optimizer


def uninterrupted() -> tuple[list[torch.Tensor], list[float]]:
    engine, model, _ = make_trainer()
    losses: list[float] = []
    engine.on(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output))
    engine.run(make_batches(), max_epochs=EPOCHS)
    return [p.detach().clone() for p in model.parameters()], losses


class Crash(Exception):
    pass


@pytest.mark.parametrize("stop_at", [3, 7, 12, 21])
def test_resume_mid_epoch_is_bit_identical(stop_at: int) -> None:
    reference_params, reference_losses = uninterrupted()

    # First process: crashes after `stop_at` iterations, having saved its state at that point.
    engine, model, optimizer = make_trainer()
    saved: dict = {}
    losses: list[float] = []

    @engine.on(Events.ITERATION_COMPLETED)
    def checkpoint_then_maybe_crash(e: Engine) -> None:
        losses.append(e.state.output)
        if e.state.iteration == stop_at:
            saved["engine"] = e.state_dict()
            saved["model"] = {k: v.clone() for k, v in model.state_dict().items()}
            saved["optim"] = optimizer.state_dict()
            raise Crash

    with pytest.raises(Crash):
        engine.run(make_batches(), max_epochs=EPOCHS)

    # Second process: fresh objects (another init seed), state restored, same data.
    engine2, model2, optimizer2 = make_trainer(seed=99)
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optim"])
    engine2.load_state_dict(saved["engine"])
    engine2.on(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output))
    state = engine2.run(make_batches())  # keeps the loaded max_epochs

    assert state.max_epochs == EPOCHS
    assert state.iteration == EPOCHS * 7
    assert losses == reference_losses
    for resumed, reference in zip(model2.parameters(), reference_params, strict=True):
        assert torch.equal(resumed.detach(), reference)


def test_resume_from_epoch_boundary_does_not_rerun_the_epoch() -> None:
    engine = Engine(lambda e, batch: None)
    saved: dict = {}
    engine.on(Events.EPOCH_COMPLETED(once=1), lambda e: saved.update(e.state_dict()))
    engine.run(range(4), max_epochs=3)
    assert saved["epochs_completed"] == 1 and saved["epoch_iteration"] == 0

    resumed = Engine(lambda e, batch: None)
    epochs: list = []
    resumed.on(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    resumed.load_state_dict(saved)
    state = resumed.run(range(4))
    assert epochs == [1, 2]
    assert state.iteration == 12


def test_state_dict_round_trips_through_weights_only_torch_load(tmp_path) -> None:
    engine = Engine(lambda e, batch: None)
    engine.on(Events.ITERATION_COMPLETED(once=5), lambda e: e.terminate())
    engine.run(range(4), max_epochs=3)
    torch.save(engine.state_dict(), tmp_path / "engine.pt")
    loaded = torch.load(tmp_path / "engine.pt", weights_only=True)
    assert loaded == engine.state_dict()


def test_resume_with_a_larger_max_epochs_trains_on() -> None:
    engine = Engine(lambda e, batch: None)
    engine.run(range(2), max_epochs=2)
    saved = engine.state_dict()
    resumed = Engine(lambda e, batch: None)
    resumed.load_state_dict(saved)
    state = resumed.run(range(2), max_epochs=4)
    assert state.iteration == 8 and state.epoch == 3
