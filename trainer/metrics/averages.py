"""Average (mean over updates) and RunningAverage (an exponential moving average)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from trainer.metrics.base import Metric, NotComputableError
from trainer.metrics.transforms import as_tensor, identity

if TYPE_CHECKING:
    from trainer.engine import Engine


def _number_or_tensor(value: Any, what: str) -> float | torch.Tensor:
    """A float for single numbers, else a float64 CPU tensor."""
    t = as_tensor(value, what).double()
    return float(t) if t.ndim == 0 else t.cpu().clone()


def _as_result(value: float | torch.Tensor) -> float | torch.Tensor:
    return float(value) if isinstance(value, torch.Tensor) and value.ndim == 0 else value


class Average(Metric):
    """Mean over updates of a number or of a tensor (elementwise; every update has one shape).

    The default output transform is the identity: attach it to an engine whose step returns a
    number, or give an `output_transform` picking the value out of the output.
    """

    def __init__(self, output_transform: Callable[[Any], Any] = identity) -> None:
        super().__init__(output_transform)
        self.add_state("total", 0.0, "sum")
        self.add_state("count", 0, "sum", torch.int64)

    def update(self, output: Any) -> None:
        """Add one value (a number or a tensor)."""
        value = _number_or_tensor(output, "Average: the value")
        total = self._state["total"]
        if isinstance(total, torch.Tensor) and total.shape != getattr(value, "shape", ()):
            raise ValueError(
                f"Average: value of shape {tuple(getattr(value, 'shape', ()))} does not match "
                f"the shape {tuple(total.shape)} of earlier values"
            )
        self._state["total"] = total + value
        self._state["count"] += 1

    def compute(self) -> float | torch.Tensor:
        """Return the mean: a float for numbers, a float64 tensor for tensors."""
        if self._state["count"] == 0:
            raise NotComputableError("Average needs at least one update")
        return _as_result(self._state["total"] / self._state["count"])


class RunningAverage(Metric):
    """Exponential moving average `v = alpha * v + (1 - alpha) * x` of a value per iteration.

    `x` is either a metric `src` computed on each batch alone, or `output_transform(output)`.
    Attached to an engine it writes `engine.state.metrics[name]` after every iteration (what
    progress bars show); with `epoch_bound=True` (default) it restarts at each epoch.

    Merge rule: the state is the sum of running averages and how many there are, so merging
    the states of several ranks gives the mean of their running averages (which is not the
    running average of the interleaved stream: no exact one exists).
    """

    def __init__(
        self,
        src: Metric | None = None,
        alpha: float = 0.98,
        output_transform: Callable[[Any], Any] | None = None,
        epoch_bound: bool = True,
    ) -> None:
        if (src is None) == (output_transform is None):
            raise ValueError(
                "RunningAverage: give exactly one of src (a Metric) or output_transform"
            )
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"RunningAverage: alpha must be in (0, 1], got {alpha}")
        super().__init__(src.output_transform if src is not None else output_transform)
        self.src = src
        self.alpha = alpha
        self.epoch_bound = epoch_bound
        self.add_state("total", 0.0, "sum")
        self.add_state("count", 0, "sum", torch.int64)

    def update(self, output: Any) -> None:
        """Fold one iteration's value (src's input when there is a src) into the average."""
        if self.src is not None:
            self.src.reset()
            self.src.update(output)
            output = self.src.compute()
        value = _number_or_tensor(output, "RunningAverage: the value")
        s = self._state
        if s["count"] > 0:
            value = self.alpha * (s["total"] / s["count"]) + (1.0 - self.alpha) * value
        s["total"], s["count"] = value, 1

    def compute(self) -> float | torch.Tensor:
        """Return the current running average (a float for numbers)."""
        if self._state["count"] == 0:
            raise NotComputableError("RunningAverage needs at least one update")
        return _as_result(self._state["total"] / self._state["count"])

    def started(self, engine: Engine) -> None:
        """EPOCH_STARTED hook: reset if epoch-bound."""
        if self.epoch_bound:
            self.reset()

    def iteration_completed(self, engine: Engine, name: str | None = None) -> None:
        """ITERATION_COMPLETED hook: update and publish the value under the metric's name."""
        super().iteration_completed(engine)
        if name is not None:
            engine.state.metrics[name] = self.compute()

    def settings(self) -> dict[str, Any]:
        """alpha and epoch_bound; `src` stays home because merge/compute never use it."""
        return {"alpha": float(self.alpha), "epoch_bound": bool(self.epoch_bound)}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> RunningAverage:
        """A twin fed raw values: its merge/compute are those of the original, src or not."""
        # The constructor insists on a src or an output_transform; the twin is only merged and
        # computed, for which the state (sum of averages, count) is all there is.
        return cls(output_transform=identity, **settings)

    def __repr__(self) -> str:
        return f"RunningAverage(src={self.src!r}, alpha={self.alpha})"
