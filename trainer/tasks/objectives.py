"""What each task type trains for: its loss, its validation metrics and which way each is better.

A data builder declares its task type (`DataBundle.task`); the job takes the loss function and
the validation metrics from here, and checks every config key naming a metric (and its `mode`)
against `goals`, the one table of which way a metric improves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from trainer.metrics import Accuracy, Loss, MeanAbsoluteError, MeanSquaredError, Metric, R2Score

CLASSIFICATION, REGRESSION = "classification", "regression"
TASKS = (CLASSIFICATION, REGRESSION)
MIN, MAX = "min", "max"


@dataclass(frozen=True)
class Objective:
    """One task type: `loss()` builds its loss function, `metrics(loss_fn)` its validation metrics.

    `goals` maps every validation metric, in the order the job reports them, to "min" (lower is
    better) or "max"; `headline` is the metric named first in the final result.
    """

    task: str
    loss: Callable[[], nn.Module]
    metrics: Callable[[nn.Module], dict[str, Metric]]
    goals: Mapping[str, str]
    headline: str

    @property
    def val_metrics(self) -> tuple[str, ...]:
        """The validation metrics' names, in report order."""
        return tuple(self.goals)

    def ranked(self) -> tuple[str, ...]:
        """The validation metrics' names, headline first (the order of the final result)."""
        return (self.headline, *(m for m in self.goals if m != self.headline))


def _classification_metrics(loss_fn: nn.Module) -> dict[str, Metric]:
    return {"loss": Loss(loss_fn), "accuracy": Accuracy()}


def _regression_metrics(loss_fn: nn.Module) -> dict[str, Metric]:
    return {
        "loss": Loss(loss_fn),
        "mse": MeanSquaredError(),
        "mae": MeanAbsoluteError(),
        "r2": R2Score(),
    }


OBJECTIVES: dict[str, Objective] = {
    CLASSIFICATION: Objective(
        task=CLASSIFICATION,
        loss=nn.CrossEntropyLoss,
        metrics=_classification_metrics,
        goals={"loss": MIN, "accuracy": MAX},
        headline="accuracy",
    ),
    REGRESSION: Objective(
        task=REGRESSION,
        loss=nn.MSELoss,
        metrics=_regression_metrics,
        goals={"loss": MIN, "mse": MIN, "mae": MIN, "r2": MAX},
        headline="r2",
    ),
}

# What the trainer engine itself measures (the mean of its steps' losses), whatever the task.
TRAIN_GOALS: Mapping[str, str] = {"loss": MIN}


def objective_for(task: str) -> Objective:
    """The objective of task type `task` ("classification" or "regression")."""
    try:
        return OBJECTIVES[task]
    except KeyError:
        raise ValueError(f"unknown task type {task!r}: use one of {', '.join(TASKS)}") from None
