"""Random data and batching helpers shared by the metric tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from trainer.metrics import Metric


def chunks(n: int, n_batches: int) -> list[slice]:
    """Split range(n) into `n_batches` contiguous, possibly uneven, slices."""
    bounds = np.linspace(0, n, n_batches + 1).astype(int)
    return [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def batches(y_pred: Any, y: Any, n_batches: int = 4) -> Iterator[tuple[Any, Any]]:
    """Yield (y_pred, y) batches of two arrays along their first dim."""
    for part in chunks(len(y), n_batches):
        yield y_pred[part], y[part]


def fed(metric: Metric, y_pred: Any, y: Any, n_batches: int = 4) -> Metric:
    """Update `metric` with the data in several batches and return it."""
    for pair in batches(y_pred, y, n_batches):
        metric.update(pair)
    return metric


def as_numpy(value: Any) -> Any:
    """A metric result as numpy (tensors) or unchanged (floats)."""
    return value.numpy() if isinstance(value, torch.Tensor) else value


def rng(seed: int) -> np.random.Generator:
    """A seeded numpy generator."""
    return np.random.default_rng(seed)


def multiclass_scores(seed: int, n: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float32 logits (n, classes) and int64 labels (n,) with every class present."""
    g = rng(seed)
    y = g.permutation(np.arange(n) % classes)
    return torch.from_numpy(g.normal(size=(n, classes)).astype(np.float32)), torch.from_numpy(y)


def close(a: Any, b: Any) -> bool:
    """Tell whether two results (floats or arrays) are numerically equal."""
    return bool(np.allclose(as_numpy(a), as_numpy(b), rtol=1e-9, atol=1e-12))
