"""LRScheduler against the same schedule driven by a plain PyTorch loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as sched

from trainer import Engine, Events
from trainer.handlers import LRScheduler

from .toy import make_toy

EPOCHS = 6


def plain_loop(make_scheduler: Callable[[Any], Any], per_iteration: bool) -> tuple[list, Any]:
    """LRs seen at each epoch start and the final model, with no Engine involved."""
    toy = make_toy(n_batches=3)
    scheduler = make_scheduler(toy.optimizer)
    lrs = []
    for _ in range(EPOCHS):
        lrs.append(toy.optimizer.param_groups[0]["lr"])
        for x, y in toy.data:
            toy.optimizer.zero_grad()
            torch.nn.functional.mse_loss(toy.model(x), y).backward()
            toy.optimizer.step()
            if per_iteration:
                scheduler.step()
        if not per_iteration:
            scheduler.step()
    return lrs, toy.model


@pytest.mark.parametrize(
    ("make_scheduler", "event"),
    [
        (lambda opt: sched.StepLR(opt, step_size=2, gamma=0.5), Events.EPOCH_COMPLETED),
        (lambda opt: sched.CosineAnnealingLR(opt, T_max=EPOCHS), Events.EPOCH_COMPLETED),
        (lambda opt: sched.ExponentialLR(opt, gamma=0.9), Events.ITERATION_COMPLETED),
        (
            lambda opt: sched.OneCycleLR(opt, max_lr=0.2, total_steps=3 * EPOCHS),
            Events.ITERATION_COMPLETED,
        ),
    ],
    ids=["step", "cosine", "exponential-per-iteration", "one-cycle-per-iteration"],
)
def test_matches_a_plain_torch_loop(make_scheduler: Callable[[Any], Any], event: Events) -> None:
    expected_lrs, expected_model = plain_loop(make_scheduler, event is Events.ITERATION_COMPLETED)
    toy = make_toy(n_batches=3)
    handler = LRScheduler(make_scheduler(toy.optimizer)).attach(toy.trainer, event)
    lrs = []
    toy.trainer.add_event_handler(Events.EPOCH_STARTED, lambda: lrs.append(handler.lrs[0]))
    toy.trainer.run(toy.data, max_epochs=EPOCHS)
    assert lrs == expected_lrs
    for got, want in zip(toy.model.parameters(), expected_model.parameters(), strict=True):
        assert torch.equal(got, want)


def test_reduce_on_plateau_follows_a_metric_of_the_evaluator() -> None:
    val_losses = [1.0, 0.8, 0.8, 0.8, 0.8, 0.5, 0.5, 0.5]

    toy = make_toy(n_batches=2)
    plain = sched.ReduceLROnPlateau(toy.optimizer, patience=1, factor=0.5)
    expected = []
    for loss in val_losses:
        plain.step(loss)
        expected.append(toy.optimizer.param_groups[0]["lr"])

    toy = make_toy(n_batches=2)
    losses = iter(val_losses)
    evaluator = Engine(lambda engine, batch: None)
    evaluator.add_event_handler(
        Events.COMPLETED, lambda e: e.state.metrics.__setitem__("val_loss", next(losses))
    )
    plateau = sched.ReduceLROnPlateau(toy.optimizer, patience=1, factor=0.5)
    handler = LRScheduler(plateau, metric_name="val_loss", metric_engine=evaluator)
    toy.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: evaluator.run([0]))
    handler.attach(toy.trainer)
    lrs = []
    toy.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: lrs.append(handler.lrs[0]))
    toy.trainer.run(toy.data, max_epochs=len(val_losses))
    assert lrs == expected
    assert lrs[-1] < lrs[0]


def test_a_missing_metric_is_named() -> None:
    toy = make_toy(n_batches=1)
    plateau = sched.ReduceLROnPlateau(toy.optimizer)
    LRScheduler(plateau, metric_name="val_acc").attach(toy.trainer)
    with pytest.raises(KeyError, match="val_acc"):
        toy.trainer.run(toy.data)


def test_metric_name_is_required_exactly_for_reduce_on_plateau() -> None:
    opt = make_toy().optimizer
    with pytest.raises(ValueError, match="metric_name"):
        LRScheduler(sched.ReduceLROnPlateau(opt))
    with pytest.raises(ValueError, match="StepLR"):
        LRScheduler(sched.StepLR(opt, 1), metric_name="loss")
    with pytest.raises(TypeError, match="lr_scheduler"):
        LRScheduler(opt)


def test_state_dict_is_the_schedulers() -> None:
    opt = make_toy().optimizer
    handler = LRScheduler(sched.StepLR(opt, step_size=1, gamma=0.1))
    opt.step()  # torch warns when a scheduler steps before its optimizer
    handler(None)  # type: ignore[arg-type]
    other = LRScheduler(sched.StepLR(make_toy().optimizer, step_size=1, gamma=0.1))
    other.load_state_dict(handler.state_dict())
    assert other.lr_scheduler.last_epoch == 1
