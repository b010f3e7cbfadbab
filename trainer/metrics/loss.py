"""Loss: the average loss over an epoch, from the step output or from a loss function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trainer.metrics.base import Metric, NotComputableError
from trainer.metrics.transforms import as_tensor, default_output_transform, loss_output_transform


def _scalar(value: Any, what: str) -> float:
    """`value` as a float: a Python number as it is, else a one-element tensor's value."""
    # The usual loss is `loss.item()`: no tensor round trip for it (which would also round a
    # float64 Python float to float32, torch's default dtype).
    if type(value) is float or type(value) is int:
        return float(value)
    t = as_tensor(value, what)
    if t.numel() != 1:
        raise ValueError(f"{what} must be a single number, got shape {tuple(t.shape)}")
    return float(t)


class Loss(Metric):
    """Average loss.

    `Loss()` averages `output["loss"]` (or the output itself when it is a number) over
    iterations. `Loss(loss_fn)` calls `loss_fn(y_pred, y)` on each `(y_pred, y)` batch and
    weights it by `batch_size(y)` (default `len`), so with a mean-reduced loss it is the mean
    over samples.
    """

    def __init__(
        self,
        loss_fn: Callable[[Any, Any], Any] | None = None,
        output_transform: Callable[[Any], Any] | None = None,
        batch_size: Callable[[Any], int] = len,
    ) -> None:
        if output_transform is None:
            output_transform = (
                loss_output_transform if loss_fn is None else default_output_transform
            )
        super().__init__(output_transform)
        self.loss_fn = loss_fn
        self.batch_size = batch_size
        self.add_state("total", 0.0, "sum")
        self.add_state("count", 0, "sum", torch.int64)

    def update(self, output: Any) -> None:
        """Add one iteration's loss: a number, or a `(y_pred, y)` pair when there is a loss_fn."""
        if self.loss_fn is None:
            self._state["total"] += _scalar(output, "Loss: the loss")
            self._state["count"] += 1
            return
        y_pred, y = default_output_transform(output)
        # Loss functions want tensors; numpy arrays and lists are converted, tensors kept as is.
        y_pred = y_pred if isinstance(y_pred, torch.Tensor) else as_tensor(y_pred, "Loss: y_pred")
        y = y if isinstance(y, torch.Tensor) else as_tensor(y, "Loss: y")
        n = int(self.batch_size(y))
        loss = _scalar(self.loss_fn(y_pred, y), f"Loss: the value of {self.loss_fn!r}")
        self._state["total"] += loss * n
        self._state["count"] += n

    def compute(self) -> float:
        """Return the average loss as a float."""
        if self._state["count"] == 0:
            raise NotComputableError("Loss needs at least one iteration (or one sample)")
        return self._state["total"] / self._state["count"]

    def __repr__(self) -> str:
        return f"Loss(loss_fn={self.loss_fn!r})"
