"""Loss, Average and RunningAverage against plain numpy / PyTorch references."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
import torch.nn.functional as F

from trainer.metrics import Accuracy, Average, Loss, NotComputableError, RunningAverage

from ._data import batches, chunks, fed, multiclass_scores, rng


def _ema(values: list[float], alpha: float) -> float:
    """Reference exponential moving average, seeded with the first value."""
    average = values[0]
    for value in values[1:]:
        average = alpha * average + (1 - alpha) * value
    return average


def test_loss_without_loss_fn_is_the_mean_of_output_loss_over_iterations() -> None:
    losses = rng(0).random(9)
    metric = Loss()
    for value in losses:
        metric.update(metric.output_transform({"loss": torch.tensor(value), "y": None}))
    assert metric.compute() == pytest.approx(float(np.mean(losses)))


def test_loss_without_loss_fn_accepts_a_bare_number_output() -> None:
    metric = Loss()
    for value in (1.0, 2.0, 6.0):
        metric.update(metric.output_transform(value))
    assert metric.compute() == pytest.approx(3.0)


def test_loss_with_loss_fn_is_weighted_by_batch_size() -> None:
    logits, y = multiclass_scores(1, 50, 3)
    metric = Loss(F.cross_entropy)
    for pair in batches(logits, y, n_batches=3):  # uneven batch sizes
        metric.update(metric.output_transform(pair))
    assert metric.compute() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_loss_with_loss_fn_converts_numpy_inputs_to_tensors() -> None:
    g = rng(2)
    y_pred, y = g.normal(size=20), g.normal(size=20)
    got = fed(Loss(F.mse_loss), y_pred, y).compute()
    assert got == pytest.approx(skm.mean_squared_error(y, y_pred))


def test_loss_refuses_a_non_scalar_loss() -> None:
    metric = Loss(lambda a, b: (a - b) ** 2)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        metric.update((torch.zeros(3), torch.ones(3)))


def test_loss_without_loss_key_names_the_keys_present() -> None:
    with pytest.raises(KeyError, match="'y_pred'"):
        Loss().output_transform({"y_pred": 1, "y": 1})


def test_average_of_numbers() -> None:
    values = rng(3).random(7)
    metric = Average()
    for value in values:
        metric.update(value)
    assert metric.compute() == pytest.approx(float(values.mean()))


def test_average_of_tensors_is_elementwise_over_updates() -> None:
    values = rng(4).normal(size=(5, 3))
    metric = Average()
    for row in values:
        metric.update(torch.from_numpy(row))
    got = metric.compute()
    np.testing.assert_allclose(got.numpy(), values.mean(axis=0))


def test_average_refuses_a_change_of_shape() -> None:
    metric = Average()
    metric.update(torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        metric.update(torch.zeros(2))


def test_running_average_of_an_output_is_an_ema() -> None:
    values = list(rng(5).random(12))
    metric = RunningAverage(output_transform=lambda out: out["loss"], alpha=0.9)
    for value in values:
        metric.update(metric.output_transform({"loss": value}))
    assert metric.compute() == pytest.approx(_ema(values, 0.9))


def test_running_average_of_a_metric_averages_its_per_batch_value() -> None:
    logits, y = multiclass_scores(6, 60, 3)
    metric = RunningAverage(Accuracy(), alpha=0.8)
    per_batch = []
    for part in chunks(60, 6):
        metric.update(metric.output_transform((logits[part], y[part])))
        per_batch.append(skm.accuracy_score(y[part], logits[part].argmax(1)))
    assert metric.compute() == pytest.approx(_ema(per_batch, 0.8))


def test_running_average_merge_is_the_mean_of_the_running_averages() -> None:
    a = RunningAverage(output_transform=lambda out: out, alpha=0.5)
    b = RunningAverage(output_transform=lambda out: out, alpha=0.5)
    for value in (1.0, 3.0):
        a.update(value)
    b.update(10.0)
    a.merge(b.state_dict())
    assert a.compute() == pytest.approx((_ema([1.0, 3.0], 0.5) + 10.0) / 2)


def test_running_average_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RunningAverage()
    with pytest.raises(ValueError, match="exactly one"):
        RunningAverage(Accuracy(), output_transform=lambda out: out)


@pytest.mark.parametrize("metric", [Loss(), Average(), RunningAverage(output_transform=float)])
def test_no_value_before_the_first_update(metric: object) -> None:
    with pytest.raises(NotComputableError):
        metric.compute()
