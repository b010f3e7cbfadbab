"""Metrics attached to a real Engine: per-epoch reset, ready before user handlers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from trainer import Engine, Events
from trainer.metrics import Accuracy, Loss, MeanSquaredError, Precision, RunningAverage

from ._data import chunks

N, CLASSES, BATCHES, EPOCHS = 48, 3, 4, 3


def _epoch_data(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Different logits and labels for each epoch, so a missed reset shows."""
    g = np.random.default_rng(100 + epoch)
    logits = torch.from_numpy(g.normal(size=(N, CLASSES)))
    return logits, torch.from_numpy(g.integers(0, CLASSES, N))


def _classifier_engine() -> Engine:
    parts = chunks(N, BATCHES)

    def step(engine: Engine, index: int) -> dict[str, Any]:
        logits, y = _epoch_data(engine.state.epoch)
        part = parts[index]
        loss = float(torch.nn.functional.cross_entropy(logits[part], y[part]))
        return {"logits": logits[part], "y": y[part], "loss": loss}

    return Engine(step)


def test_metrics_reset_each_epoch_and_are_ready_for_user_handlers() -> None:
    engine = _classifier_engine()
    engine.add_metrics({"acc": Accuracy(), "prec": Precision(average="weighted")})
    Loss().attach(engine, "loss")
    seen: list[dict[str, float]] = []

    # A high priority does not put a user handler before the metrics' own.
    @engine.on(Events.EPOCH_COMPLETED, priority=1000)
    def record(engine: Engine) -> None:
        seen.append(dict(engine.state.metrics))

    engine.run(list(range(BATCHES)), max_epochs=EPOCHS)

    assert len(seen) == EPOCHS
    for epoch, metrics in enumerate(seen):
        logits, y = _epoch_data(epoch)
        y_pred = logits.argmax(1).numpy()
        assert metrics["acc"] == pytest.approx(skm.accuracy_score(y, y_pred))
        assert metrics["prec"] == pytest.approx(skm.precision_score(y, y_pred, average="weighted"))
        batch_losses = [
            torch.nn.functional.cross_entropy(logits[p], y[p]).item() for p in chunks(N, BATCHES)
        ]
        assert metrics["loss"] == pytest.approx(np.mean(batch_losses))


@pytest.mark.parametrize("how", ["attach", "add_metric"])
def test_running_average_is_in_state_metrics_after_every_iteration(how: str) -> None:
    engine = Engine(lambda engine, batch: {"loss": float(batch)})
    metric = RunningAverage(output_transform=lambda out: out["loss"], alpha=0.5)
    if how == "attach":
        metric.attach(engine, "avg")
    else:
        engine.add_metric(metric, "avg")
    shown: list[float] = []
    engine.on(Events.ITERATION_COMPLETED, lambda e: shown.append(e.state.metrics["avg"]))

    engine.run([4.0, 2.0, 8.0], max_epochs=2)

    # Epoch-bound: the average restarts from the first value of each epoch.
    one_epoch = [4.0, 0.5 * 4.0 + 0.5 * 2.0, 0.5 * 3.0 + 0.5 * 8.0]
    assert shown == pytest.approx(one_epoch * 2)


def test_async_run_updates_metrics_too() -> None:
    g = np.random.default_rng(7)
    y_pred, y = g.normal(size=12), g.normal(size=12)
    parts = chunks(12, 3)

    async def step(engine: Engine, index: int) -> tuple[np.ndarray, np.ndarray]:
        return y_pred[parts[index]], y[parts[index]]

    engine = Engine(step)
    MeanSquaredError().attach(engine, "mse")
    state = engine.run(range(3))
    assert state.metrics["mse"] == pytest.approx(skm.mean_squared_error(y, y_pred))


def test_running_average_not_epoch_bound_carries_over_epochs() -> None:
    engine = Engine(lambda engine, batch: float(batch))
    RunningAverage(output_transform=float, alpha=0.5, epoch_bound=False).attach(engine, "avg")
    shown: list[float] = []
    engine.on(Events.ITERATION_COMPLETED, lambda e: shown.append(e.state.metrics["avg"]))

    engine.run([4.0, 2.0], max_epochs=2)

    expected, average = [], None
    for value in [4.0, 2.0, 4.0, 2.0]:
        average = value if average is None else 0.5 * average + 0.5 * value
        expected.append(average)
    assert shown == pytest.approx(expected)
