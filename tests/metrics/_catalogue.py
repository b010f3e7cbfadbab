"""Every built-in metric with a factory and a matching random-data generator."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from trainer.metrics import (
    Accuracy,
    Average,
    ConfusionMatrix,
    F1Score,
    Loss,
    MeanAbsoluteError,
    MeanSquaredError,
    Metric,
    Precision,
    R2Score,
    Recall,
    RootMeanSquaredError,
    TopKCategoricalAccuracy,
)


@dataclass(frozen=True)
class Case:
    """A metric factory and a generator of `n` random samples it accepts, as (y_pred, y)."""

    name: str
    make: Callable[[], Metric]
    data: Callable[[np.random.Generator, int], tuple[Any, Any]]


def _probs(g: np.random.Generator, n: int) -> tuple[Any, Any]:
    return torch.from_numpy(g.random(n)), torch.from_numpy(g.integers(0, 2, n))


def _logits(g: np.random.Generator, n: int) -> tuple[Any, Any]:
    return torch.from_numpy(g.normal(size=(n, 4))), torch.from_numpy(g.integers(0, 4, n))


def _labels(g: np.random.Generator, n: int) -> tuple[Any, Any]:
    # Labels up to 6 so that halves often see different class counts (states grow).
    return torch.from_numpy(g.integers(0, 7, n)), torch.from_numpy(g.integers(0, 7, n))


def _multilabel(g: np.random.Generator, n: int) -> tuple[Any, Any]:
    return torch.from_numpy(g.random((n, 3))), torch.from_numpy(g.integers(0, 2, (n, 3)))


def _values(g: np.random.Generator, n: int) -> tuple[Any, Any]:
    y = g.normal(size=(n, 2))
    return torch.from_numpy(y + g.normal(size=(n, 2))), torch.from_numpy(y)


def _values_1d(g: np.random.Generator, n: int) -> tuple[Any, Any]:
    y_pred, y = _values(g, n)
    return y_pred[:, 0], y[:, 0]


def _loss_per_sample(g: np.random.Generator, n: int) -> tuple[Any, Any]:
    # Average and Loss() see one value per update; y is unused (kept for uniform batching).
    return torch.from_numpy(g.random(n)), torch.zeros(n)


CASES: list[Case] = [
    Case("accuracy-binary", Accuracy, _probs),
    Case("accuracy-multiclass", Accuracy, _logits),
    Case("accuracy-labels", Accuracy, _labels),
    Case("accuracy-multilabel", lambda: Accuracy(is_multilabel=True), _multilabel),
    Case("top2", lambda: TopKCategoricalAccuracy(k=2), _logits),
    Case("precision-macro", Precision, _labels),
    Case("precision-binary", lambda: Precision(average="binary"), _probs),
    Case("recall-weighted", lambda: Recall(average="weighted"), _logits),
    Case("recall-per-class", lambda: Recall(average=None, num_classes=7), _labels),
    Case("f1-micro", lambda: F1Score(average="micro"), _labels),
    Case("f1-multilabel", lambda: F1Score(is_multilabel=True), _multilabel),
    Case("confusion", ConfusionMatrix, _labels),
    Case("mse", MeanSquaredError, _values),
    Case("mae", MeanAbsoluteError, _values_1d),
    Case("rmse", RootMeanSquaredError, _values),
    Case("r2", R2Score, _values),
    Case("r2-1d", R2Score, _values_1d),
    Case("loss-fn", lambda: Loss(F.mse_loss), _values_1d),
]

# Metrics updated with one value at a time rather than (y_pred, y) batches.
SCALAR_CASES: list[Case] = [
    Case("loss-output", Loss, _loss_per_sample),
    Case("average", Average, _loss_per_sample),
]


def feed(case: Case, metric: Metric, y_pred: Any, y: Any, batch: int = 7) -> Metric:
    """Update `metric` with the data in batches of `batch` (scalar cases: one value each)."""
    if case in SCALAR_CASES:
        for value in y_pred:
            metric.update(value)
        return metric
    for start in range(0, len(y), batch):
        metric.update((y_pred[start : start + batch], y[start : start + batch]))
    return metric
