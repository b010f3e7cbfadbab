"""What counts as a scalar output or metric, how windows average, and metric discovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer import Engine, Events
from trainer.bridge.metric_payload import attached_metrics, scalar_metrics
from trainer.bridge.outputs import OutputWindow, scalar_outputs
from trainer.metrics import Accuracy, Average, Loss


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (0.5, {"output": 0.5}),
        (3, {"output": 3.0}),
        (True, {}),
        (None, {}),
        (torch.tensor(2.5), {"output": 2.5}),
        (torch.tensor([[4.0]], requires_grad=True), {"output": 4.0}),
        (torch.tensor([1.0, 2.0]), {}),
        (np.float32(1.5), {"output": 1.5}),
        (np.array([7]), {"output": 7.0}),
        ((torch.zeros(2, 3), torch.zeros(2)), {}),
        (
            {"loss": torch.tensor(0.25), "acc": 1, "pred": torch.zeros(3), "name": "x", 5: 2.0},
            {"loss": 0.25, "acc": 1.0, "5": 2.0},
        ),
    ],
)
def test_scalar_outputs_are_named_as_the_catalogue_says(output, expected) -> None:
    assert scalar_outputs(output) == expected


def test_a_window_averages_each_output_over_the_iterations_that_had_it() -> None:
    window = OutputWindow()
    window.add({"loss": 1.0, "lr": torch.tensor(0.1)})
    window.add({"loss": torch.tensor(3.0)})
    window.add({"loss": 5, "extra": 2.0})
    assert window.drain() == ({"loss": 3.0, "lr": pytest.approx(0.1), "extra": 2.0}, 3)
    assert window.drain() == ({}, 0)
    window.add(0.5)
    window.add((1, 2))  # no scalar: counted, contributes nothing
    assert window.drain() == ({"output": 0.5}, 2)


def test_scalar_metrics_leave_out_what_is_not_a_number() -> None:
    metrics = {"acc": 0.9, "cm": torch.eye(2), "f1": torch.tensor(0.5), "flag": True, "n": 3}
    assert scalar_metrics(metrics) == {"acc": 0.9, "f1": 0.5, "n": 3.0}


def test_attached_metrics_are_found_by_the_name_they_were_attached_under() -> None:
    engine = Engine(lambda e, b: b)
    loss, accuracy, average = Loss(), Accuracy(), Average()
    engine.add_metric(loss, "loss")
    engine.add_metrics({"acc": accuracy})
    average.attach(engine, "avg")
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: None)  # not a metric
    assert attached_metrics(engine) == {"loss": loss, "acc": accuracy, "avg": average}
