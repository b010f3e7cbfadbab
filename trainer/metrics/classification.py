"""Per-class counting metrics: Precision, Recall, F1Score and ConfusionMatrix.

Their state holds one count per class. Without `num_classes` the class count grows with the
largest label seen, and states of different sizes are padded with zeros before merging; give
`num_classes` when states must have a fixed shape (e.g. for an all-reduce across ranks).

Zero division follows scikit-learn's default (`zero_division="warn"`) without the warning: a
class whose score has a zero denominator scores 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from trainer.metrics.base import Metric, NotComputableError
from trainer.metrics.labels import class_labels, multilabel_indicators
from trainer.metrics.state import StateValue, merge_states
from trainer.metrics.transforms import default_output_transform, pair_as_tensors

AVERAGES = ("binary", "macro", "micro", "weighted", None, False)


def _grow(t: torch.Tensor, size: int, ndim: int) -> torch.Tensor:
    """Zero-pad every dim of a per-class count tensor up to `size` classes."""
    if t.numel() == 0:
        return torch.zeros((size,) * ndim, dtype=t.dtype)
    missing = size - t.shape[0]
    return F.pad(t, (0, missing) * ndim) if missing > 0 else t


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den as float64, 0 where den is 0 (scikit-learn's default zero division)."""
    num, den = num.double(), den.double()
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, 1.0), 0.0)


class _PerClassCounts(Metric):
    """State of per-class counts that grows with the labels seen and pads before merging."""

    # State entries holding per-class counts, with their number of class dims.
    _count_dims: ClassVar[dict[str, int]] = {}

    def __init__(self, output_transform: Callable[[Any], Any], num_classes: int | None) -> None:
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"{type(self).__name__}: num_classes must be >= 1, got {num_classes}")
        super().__init__(output_transform)
        self.num_classes = num_classes
        size = num_classes or 0
        for name, ndim in self._count_dims.items():
            self.add_state(name, torch.zeros((size,) * ndim), "sum", torch.int64)
        self.add_state("samples", 0, "sum", torch.int64)

    def _classes(self, state: Mapping[str, StateValue]) -> int:
        first = next(iter(self._count_dims))
        return int(state[first].shape[0]) if state[first].numel() else 0

    def _grown(self, state: Mapping[str, StateValue], size: int) -> dict[str, StateValue]:
        grown = dict(state)
        for name, ndim in self._count_dims.items():
            grown[name] = _grow(state[name], size, ndim)
        return grown

    def _ensure_classes(self, needed: int) -> int:
        """Grow the state to hold `needed` classes, refusing more than `num_classes`."""
        if self.num_classes is not None and needed > self.num_classes:
            raise ValueError(
                f"{type(self).__name__}: saw class {needed - 1} but num_classes={self.num_classes}"
            )
        size = max(needed, self._classes(self._state))
        self._state = self._grown(self._state, size)
        return size

    def merge(self, other_state: Mapping[str, Any]) -> None:
        """Fold another state in, padding the smaller one's classes with zero counts."""
        other = self._restore(other_state)
        size = max(self._classes(self._state), self._classes(other))
        self._state = merge_states(
            self._grown(self._state, size), self._grown(other, size), self._reductions
        )

    def _restore(self, state: Mapping[str, Any]) -> dict[str, StateValue]:
        restored = super()._restore(state)
        # An empty count list ([] on the wire) has lost its dims: give them back.
        for name, ndim in self._count_dims.items():
            if restored[name].numel() == 0:
                restored[name] = restored[name].reshape((0,) * ndim)
        return restored


class _PrecisionRecallBase(_PerClassCounts):
    """Per-class true positives, predicted positives and actual positives, then averaged."""

    _count_dims: ClassVar[dict[str, int]] = {"tp": 1, "pred_pos": 1, "true_pos": 1}

    def __init__(
        self,
        average: str | bool | None = "macro",
        num_classes: int | None = None,
        is_multilabel: bool = False,
        threshold: float = 0.5,
        output_transform: Callable[[Any], Any] = default_output_transform,
    ) -> None:
        name = type(self).__name__
        if average not in AVERAGES:
            raise ValueError(f"{name}: average must be one of {AVERAGES}, got {average!r}")
        if is_multilabel and average == "binary":
            raise ValueError(f"{name}: average='binary' does not apply to multilabel inputs")
        super().__init__(output_transform, num_classes)
        self.average = average
        self.is_multilabel = is_multilabel
        self.threshold = threshold

    def update(self, output: Any) -> None:
        """Add the per-class counts of one `(y_pred, y)` batch."""
        name = type(self).__name__
        y_pred, y = pair_as_tensors(name, output)
        s = self._state
        if self.is_multilabel:
            pred, true = multilabel_indicators(name, y_pred, y, self.threshold)
            classes = pred.shape[1]
            # (N, C, ...) -> (N * ..., C): every extra position is one more sample per label.
            pred = pred.movedim(1, -1).reshape(-1, classes)
            true = true.movedim(1, -1).reshape(-1, classes)
            if self._classes(s) not in (0, classes):
                raise ValueError(
                    f"{name}: multilabel y_pred has {classes} labels but earlier batches had "
                    f"{self._classes(s)}"
                )
            self._ensure_classes(classes)
            s = self._state
            # Reduce on the inputs' device, then add the small per-class sums to the CPU state.
            s["tp"] += (pred * true).sum(dim=0).cpu()
            s["pred_pos"] += pred.sum(dim=0).cpu()
            s["true_pos"] += true.sum(dim=0).cpu()
            s["samples"] += int(pred.shape[0])
            return
        pred, true, implied = class_labels(name, y_pred, y, self.threshold)
        seen = int(max(pred.max(), true.max())) + 1 if pred.numel() else 0
        size = self._ensure_classes(max(implied, seen))
        s = self._state
        s["tp"] += torch.bincount(true[pred == true], minlength=size).cpu()
        s["pred_pos"] += torch.bincount(pred, minlength=size).cpu()
        s["true_pos"] += torch.bincount(true, minlength=size).cpu()
        s["samples"] += int(pred.numel())

    def _score(
        self, tp: torch.Tensor, pred_pos: torch.Tensor, true_pos: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def compute(self) -> float | torch.Tensor:
        """Return the averaged score, or per-class scores when `average` is None/False."""
        name = type(self).__name__
        s = self._state
        if s["samples"] == 0:
            raise NotComputableError(f"{name} needs at least one sample")
        tp, pred_pos, true_pos = s["tp"], s["pred_pos"], s["true_pos"]
        per_class = self._score(tp, pred_pos, true_pos)
        if self.average is None or self.average is False:
            return per_class
        if self.average == "micro":
            return float(self._score(tp.sum(), pred_pos.sum(), true_pos.sum()))
        if self.average == "binary":
            if per_class.numel() > 2:
                raise ValueError(
                    f"{name}: average='binary' needs 0/1 labels, but labels up to "
                    f"{per_class.numel() - 1} were seen; use 'macro', 'micro' or 'weighted'"
                )
            return float(per_class[1]) if per_class.numel() == 2 else 0.0
        if self.average == "weighted":
            return float(_safe_div((per_class * true_pos).sum(), true_pos.sum()))
        # macro, like scikit-learn: over the classes present in y or y_pred (multilabel: all).
        present = torch.ones_like(tp, dtype=torch.bool)
        if not self.is_multilabel:
            present = (pred_pos + true_pos) > 0
        return float(per_class[present].mean()) if bool(present.any()) else 0.0

    def settings(self) -> dict[str, Any]:
        """average, num_classes, is_multilabel and threshold."""
        return {
            "average": self.average,
            "num_classes": None if self.num_classes is None else int(self.num_classes),
            "is_multilabel": bool(self.is_multilabel),
            "threshold": float(self.threshold),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(average={self.average!r}, num_classes={self.num_classes}, "
            f"is_multilabel={self.is_multilabel})"
        )


class Precision(_PrecisionRecallBase):
    """Precision tp / (tp + fp), like sklearn's `precision_score`.

    `average`: "macro" (default), "micro", "weighted", "binary" (class 1's score) or None/False
    for a float64 tensor of per-class scores.
    """

    def _score(
        self, tp: torch.Tensor, pred_pos: torch.Tensor, true_pos: torch.Tensor
    ) -> torch.Tensor:
        return _safe_div(tp, pred_pos)


class Recall(_PrecisionRecallBase):
    """Recall tp / (tp + fn), like sklearn's `recall_score` (same `average` as Precision)."""

    def _score(
        self, tp: torch.Tensor, pred_pos: torch.Tensor, true_pos: torch.Tensor
    ) -> torch.Tensor:
        return _safe_div(tp, true_pos)


class F1Score(_PrecisionRecallBase):
    """F1 = 2tp / (2tp + fp + fn), like sklearn's `f1_score` (same `average` as Precision)."""

    def _score(
        self, tp: torch.Tensor, pred_pos: torch.Tensor, true_pos: torch.Tensor
    ) -> torch.Tensor:
        return _safe_div(2 * tp, pred_pos + true_pos)


NORMALIZE = (None, "true", "pred", "all")


class ConfusionMatrix(_PerClassCounts):
    """Counts C[i, j] of samples of true class i predicted as j (sklearn's `confusion_matrix`).

    Takes the same multiclass or binary inputs as Accuracy. `normalize` ("true", "pred", "all")
    divides by row sums, column sums or the total, as in scikit-learn (empty rows give 0).
    """

    _count_dims: ClassVar[dict[str, int]] = {"matrix": 2}

    def __init__(
        self,
        num_classes: int | None = None,
        normalize: str | None = None,
        threshold: float = 0.5,
        output_transform: Callable[[Any], Any] = default_output_transform,
    ) -> None:
        if normalize not in NORMALIZE:
            raise ValueError(
                f"ConfusionMatrix: normalize must be one of {NORMALIZE}, got {normalize!r}"
            )
        super().__init__(output_transform, num_classes)
        self.normalize = normalize
        self.threshold = threshold

    def update(self, output: Any) -> None:
        """Add the (true, predicted) pairs of one `(y_pred, y)` batch."""
        y_pred, y = pair_as_tensors("ConfusionMatrix", output)
        pred, true, implied = class_labels("ConfusionMatrix", y_pred, y, self.threshold)
        seen = int(max(pred.max(), true.max())) + 1 if pred.numel() else 0
        size = self._ensure_classes(max(implied, seen))
        pairs = torch.bincount(true * size + pred, minlength=size * size)
        self._state["matrix"] += pairs.reshape(size, size).cpu()
        self._state["samples"] += int(pred.numel())

    def compute(self) -> torch.Tensor:
        """Return the (C, C) matrix: int64 counts, or float64 fractions when normalizing."""
        if self._state["samples"] == 0:
            raise NotComputableError("ConfusionMatrix needs at least one sample")
        matrix = self._state["matrix"].clone()
        if self.normalize == "true":
            return _safe_div(matrix, matrix.sum(dim=1, keepdim=True).expand_as(matrix))
        if self.normalize == "pred":
            return _safe_div(matrix, matrix.sum(dim=0, keepdim=True).expand_as(matrix))
        if self.normalize == "all":
            return _safe_div(matrix, matrix.sum().expand_as(matrix))
        return matrix

    def settings(self) -> dict[str, Any]:
        """num_classes, normalize and threshold."""
        return {
            "num_classes": None if self.num_classes is None else int(self.num_classes),
            "normalize": self.normalize,
            "threshold": float(self.threshold),
        }

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, normalize={self.normalize!r})"
