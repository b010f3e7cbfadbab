"""Accuracy (binary, multiclass, multilabel) and top-k categorical accuracy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trainer.metrics.base import Metric, NotComputableError
from trainer.metrics.labels import class_labels, integer_labels, multilabel_indicators
from trainer.metrics.transforms import default_output_transform, pair_as_tensors


class _CorrectOverTotal(Metric):
    """A fraction of correct samples: the state is two counts reduced by sum."""

    def __init__(self, output_transform: Callable[[Any], Any]) -> None:
        super().__init__(output_transform)
        self.add_state("correct", 0, "sum", torch.int64)
        self.add_state("total", 0, "sum", torch.int64)

    def _add(self, correct: torch.Tensor) -> None:
        """Count one batch whose samples are marked right (True) or wrong (False)."""
        # count_nonzero: the same count as sum() on booleans, at about half the cost per batch.
        self._state["correct"] += int(torch.count_nonzero(correct))
        self._state["total"] += correct.numel()

    def compute(self) -> float:
        """Return correct / total as a float."""
        if self._state["total"] == 0:
            raise NotComputableError(f"{type(self).__name__} needs at least one sample")
        return self._state["correct"] / self._state["total"]


class Accuracy(_CorrectOverTotal):
    """Fraction of samples predicted right (sklearn's `accuracy_score`).

    Binary: y_pred probabilities (above `threshold` is 1) or 0/1 labels, same shape as y.
    Multiclass: y_pred scores (N, C) with y labels (N,), or labels of y's shape.
    Multilabel (`is_multilabel=True`): y_pred and y of shape (N, C); a sample is right only when
    all its C labels are (subset accuracy).
    """

    def __init__(
        self,
        output_transform: Callable[[Any], Any] = default_output_transform,
        is_multilabel: bool = False,
        threshold: float = 0.5,
    ) -> None:
        super().__init__(output_transform)
        self.is_multilabel = is_multilabel
        self.threshold = threshold

    def update(self, output: Any) -> None:
        """Count the right predictions of one `(y_pred, y)` batch."""
        y_pred, y = pair_as_tensors("Accuracy", output)
        if self.is_multilabel:
            pred, true = multilabel_indicators("Accuracy", y_pred, y, self.threshold)
            self._add((pred == true).reshape(pred.shape[0], -1).all(dim=1))
        else:
            pred, true, _ = class_labels("Accuracy", y_pred, y, self.threshold)
            self._add(pred == true)

    def settings(self) -> dict[str, Any]:
        """is_multilabel and threshold."""
        return {"is_multilabel": bool(self.is_multilabel), "threshold": float(self.threshold)}

    def __repr__(self) -> str:
        return f"Accuracy(is_multilabel={self.is_multilabel}, threshold={self.threshold})"


class TopKCategoricalAccuracy(_CorrectOverTotal):
    """Fraction of samples whose label is among the k highest scores (sklearn's
    `top_k_accuracy_score`); y_pred scores (N, C), y labels (N,). k >= C scores 1."""

    def __init__(
        self, k: int = 5, output_transform: Callable[[Any], Any] = default_output_transform
    ) -> None:
        if k < 1:
            raise ValueError(f"TopKCategoricalAccuracy: k must be >= 1, got {k}")
        super().__init__(output_transform)
        self.k = k

    def update(self, output: Any) -> None:
        """Count the samples of one `(y_pred, y)` batch whose label is in the top k."""
        y_pred, y = pair_as_tensors("TopKCategoricalAccuracy", output)
        if y_pred.ndim != 2 or y.shape != y_pred.shape[:1]:
            raise ValueError(
                f"TopKCategoricalAccuracy: expected y_pred (N, C) and y (N,), got y_pred of shape "
                f"{tuple(y_pred.shape)} and y of shape {tuple(y.shape)}"
            )
        true = integer_labels("TopKCategoricalAccuracy", y, "y")
        top = y_pred.topk(min(self.k, y_pred.shape[1]), dim=1).indices
        self._add((top == true.unsqueeze(1)).any(dim=1))

    def settings(self) -> dict[str, Any]:
        """k."""
        return {"k": int(self.k)}

    def __repr__(self) -> str:
        return f"TopKCategoricalAccuracy(k={self.k})"
