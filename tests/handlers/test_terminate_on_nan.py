"""TerminateOnNan stops a run whose outputs stop being finite."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from trainer import Engine, Events
from trainer.handlers import TerminateOnNan

from .toy import make_toy

nan, inf = float("nan"), float("inf")


def run_outputs(outputs: list[Any], handler: TerminateOnNan) -> int:
    """Run an engine whose step returns ``outputs`` in turn; return the iterations run."""
    engine = Engine(lambda e, batch: batch)
    engine.add_event_handler(Events.ITERATION_COMPLETED, handler)
    return engine.run(outputs).iteration


@pytest.mark.parametrize(
    "bad",
    [
        nan,
        -inf,
        torch.tensor([1.0, nan]),
        np.array([[0.0], [inf]]),
        {"loss": torch.tensor(1.0), "parts": [1.0, (2.0, inf)]},
        [torch.tensor(1.0), np.float32("nan")],
    ],
    ids=["nan", "-inf", "tensor", "ndarray", "nested-dict", "list-numpy-scalar"],
)
def test_stops_at_the_first_non_finite_output(bad: Any) -> None:
    assert run_outputs([1.0, 2.0, bad, 3.0, 4.0], TerminateOnNan()) == 3


def test_finite_outputs_and_non_numbers_run_to_the_end() -> None:
    outputs = [1.0, torch.tensor([1, 2]), {"name": "x", "v": None}, np.arange(3), 5]
    assert run_outputs(outputs, TerminateOnNan()) == 5


def test_output_transform_chooses_what_is_checked() -> None:
    outputs = [{"loss": 1.0, "debug": nan}, {"loss": nan, "debug": 0.0}]
    assert run_outputs(outputs, TerminateOnNan(lambda out: out["loss"])) == 2
    assert run_outputs(outputs, TerminateOnNan()) == 1


def test_a_diverging_model_is_stopped() -> None:
    toy = make_toy(n_batches=5, lr=1e6)
    toy.trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())
    state = toy.trainer.run(toy.data, max_epochs=20)
    assert state.iteration < 100
    assert not math.isfinite(state.output)
