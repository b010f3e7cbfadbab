"""TerminateOnNan: stop the run when the step's output holds a NaN or an infinity."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from trainer.engine import Engine

logger = logging.getLogger(__name__)


def _identity(output: Any) -> Any:
    return output


def is_finite(value: Any) -> bool:
    """False if ``value`` (a number, tensor, array or nested list/tuple/dict) holds a NaN/inf."""
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    if isinstance(value, np.ndarray):
        return bool(np.isfinite(value).all()) if np.issubdtype(value.dtype, np.inexact) else True
    if isinstance(value, numbers.Complex):
        return math.isfinite(abs(value))
    if isinstance(value, Mapping):
        return all(is_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(is_finite(v) for v in value)
    return True


class TerminateOnNan:
    """Terminate the engine when ``output_transform(state.output)`` contains NaN or inf.

    Attach it to ITERATION_COMPLETED. Numbers, tensors, numpy arrays and lists, tuples and
    dicts of them are checked; anything else (strings, None...) is ignored.
    """

    def __init__(self, output_transform: Callable[[Any], Any] = _identity) -> None:
        if not callable(output_transform):
            raise TypeError(f"output_transform must be callable, got {output_transform!r}")
        self.output_transform = output_transform

    def __call__(self, engine: Engine) -> None:
        """Check the latest output and terminate the engine if it is not finite."""
        output = self.output_transform(engine.state.output)
        if not is_finite(output):
            logger.warning(
                "TerminateOnNan: output of iteration %d contains NaN or inf; stopping",
                engine.state.iteration,
            )
            engine.terminate(f"the output of iteration {engine.state.iteration} is NaN or inf")
