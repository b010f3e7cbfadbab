"""Regression metrics: MeanSquaredError, MeanAbsoluteError, RootMeanSquaredError, R2Score.

y_pred and y must have the same shape. MSE, MAE and RMSE take any shape and average over all
elements, which for (N, D) targets equals scikit-learn's `multioutput="uniform_average"` for MSE
and MAE; RMSE is the square root of that MSE (as in Ignite), whereas scikit-learn's
`root_mean_squared_error` averages per-output RMSEs. R2Score takes (N,) or (N, D) and averages
per-output scores uniformly, as scikit-learn does. Sums are float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from trainer.metrics.base import Metric, NotComputableError
from trainer.metrics.transforms import check_same_shape, default_output_transform, pair_as_tensors


class _Regression(Metric):
    """Reads a same-shape float64 `(y_pred, y)` pair from each batch."""

    def _pair(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        name = type(self).__name__
        y_pred, y = pair_as_tensors(name, output)
        check_same_shape(name, y_pred, y)
        return y_pred.double(), y.double()


class _MeanOfErrors(_Regression):
    """Mean over all elements of an elementwise error."""

    def __init__(self, output_transform: Callable[[Any], Any] = default_output_transform) -> None:
        super().__init__(output_transform)
        self.add_state("sum_errors", 0.0, "sum")
        self.add_state("count", 0, "sum", torch.int64)

    def _errors(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, output: Any) -> None:
        """Add the errors of one `(y_pred, y)` batch."""
        y_pred, y = self._pair(output)
        self._state["sum_errors"] += float(self._errors(y_pred, y).sum())
        self._state["count"] += int(y.numel())

    def compute(self) -> float:
        """Return the mean error as a float."""
        if self._state["count"] == 0:
            raise NotComputableError(f"{type(self).__name__} needs at least one sample")
        return self._state["sum_errors"] / self._state["count"]


class MeanSquaredError(_MeanOfErrors):
    """Mean of (y_pred - y)^2 (sklearn's `mean_squared_error`)."""

    def _errors(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (y_pred - y).square()


class MeanAbsoluteError(_MeanOfErrors):
    """Mean of |y_pred - y| (sklearn's `mean_absolute_error`)."""

    def _errors(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (y_pred - y).abs()


class RootMeanSquaredError(MeanSquaredError):
    """Square root of the mean squared error over all elements."""

    def compute(self) -> float:
        """Return the RMSE as a float."""
        return math.sqrt(super().compute())


class R2Score(_Regression):
    """Coefficient of determination 1 - SS_res / SS_tot (sklearn's `r2_score`).

    The state is per-output sums (n, sum y, sum y^2, sum of squared residuals), so SS_tot is
    sum y^2 - (sum y)^2 / n in float64: fine unless |mean| dwarfs the spread by ~1e7 or more.
    An output with constant y scores 1 if predicted exactly, else 0 (scikit-learn's
    `force_finite=True`). Fewer than 2 samples raise NotComputableError.
    """

    # Relative size under which SS_tot is rounding noise of a constant y.
    _CONSTANT_RTOL = 1e-12

    def __init__(self, output_transform: Callable[[Any], Any] = default_output_transform) -> None:
        super().__init__(output_transform)
        self.add_state("n", 0, "sum", torch.int64)
        self.add_state("sum_y", 0.0, "sum")
        self.add_state("sum_y2", 0.0, "sum")
        self.add_state("sum_res2", 0.0, "sum")

    def update(self, output: Any) -> None:
        """Add the per-output sums of one `(y_pred, y)` batch."""
        y_pred, y = self._pair(output)
        if y.ndim > 2:
            raise ValueError(f"R2Score: y must have shape (N,) or (N, D), got {tuple(y.shape)}")

        def per_output(x: torch.Tensor) -> float | torch.Tensor:
            # 1-D targets keep plain-number state; (N, D) targets keep one sum per output.
            return float(x.sum()) if y.ndim == 1 else x.sum(dim=0).cpu()

        s = self._state
        s["n"] += int(y.shape[0])
        s["sum_y"] = s["sum_y"] + per_output(y)
        s["sum_y2"] = s["sum_y2"] + per_output(y.square())
        s["sum_res2"] = s["sum_res2"] + per_output((y - y_pred).square())

    def compute(self) -> float:
        """Return R2 averaged uniformly over outputs, as a float."""
        s = self._state
        if s["n"] < 2:
            raise NotComputableError(f"R2Score needs at least 2 samples, got {s['n']}")
        sum_y = torch.as_tensor(s["sum_y"], dtype=torch.float64)
        sum_y2 = torch.as_tensor(s["sum_y2"], dtype=torch.float64)
        res = torch.as_tensor(s["sum_res2"], dtype=torch.float64)
        tot = (sum_y2 - sum_y.square() / s["n"]).clamp(min=0.0)
        constant = tot <= self._CONSTANT_RTOL * sum_y2
        safe_tot = torch.where(constant, 1.0, tot)
        scores = torch.where(constant, (res == 0).double(), 1.0 - res / safe_tot)
        return float(scores.mean())
