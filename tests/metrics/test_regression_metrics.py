"""Regression metrics against scikit-learn on random data fed in batches."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from trainer.metrics import (
    MeanAbsoluteError,
    MeanSquaredError,
    NotComputableError,
    R2Score,
    RootMeanSquaredError,
)

from ._data import fed, rng


def _rmse_over_all_elements(y: np.ndarray, y_pred: np.ndarray) -> float:
    # Not sklearn's root_mean_squared_error for (N, D), which averages per-output RMSEs.
    return float(np.sqrt(skm.mean_squared_error(y, y_pred)))


REFERENCE = {
    MeanSquaredError: skm.mean_squared_error,
    MeanAbsoluteError: skm.mean_absolute_error,
    RootMeanSquaredError: _rmse_over_all_elements,
    R2Score: skm.r2_score,
}


def _data(seed: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    g = rng(seed)
    y = g.normal(3.0, 2.0, size=shape)
    return y + g.normal(0.0, 1.0, size=shape), y


@pytest.mark.parametrize("cls", list(REFERENCE))
@pytest.mark.parametrize("shape", [(101,), (64, 3)], ids=["1d", "multioutput"])
def test_regression_metric_matches_sklearn(cls: type, shape: tuple[int, ...]) -> None:
    y_pred, y = _data(list(REFERENCE).index(cls), shape)
    got = fed(cls(), torch.from_numpy(y_pred).float(), torch.from_numpy(y).float()).compute()
    # float32 inputs: the reference sees the same rounded values.
    expected = REFERENCE[cls](y.astype(np.float32), y_pred.astype(np.float32))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-6)


def test_rmse_of_1d_targets_matches_sklearn() -> None:
    y_pred, y = _data(9, (50,))
    got = fed(RootMeanSquaredError(), y_pred, y).compute()
    assert got == pytest.approx(skm.root_mean_squared_error(y, y_pred))


@pytest.mark.parametrize("y_pred", [[2.0, 2.0, 2.0], [2.0, 2.5, 2.0]], ids=["exact", "off"])
def test_r2_of_a_constant_target_is_finite_like_sklearn(y_pred: list[float]) -> None:
    y = [2.0, 2.0, 2.0]
    got = fed(R2Score(), np.array(y_pred), np.array(y), n_batches=2).compute()
    assert got == skm.r2_score(y, y_pred)


def test_r2_needs_two_samples() -> None:
    metric = R2Score()
    metric.update(([1.0], [2.0]))
    with pytest.raises(NotComputableError, match="2 samples"):
        metric.compute()


def test_r2_refuses_targets_with_more_than_two_dims() -> None:
    with pytest.raises(ValueError, match=r"\(2, 2, 2\)"):
        R2Score().update((torch.zeros(2, 2, 2), torch.zeros(2, 2, 2)))
