"""Metrics with a mergeable state: the same code serves the Engine, ranks and the aggregator."""

from trainer.metrics.accuracy import Accuracy, TopKCategoricalAccuracy
from trainer.metrics.averages import Average, RunningAverage
from trainer.metrics.base import Metric, NotComputableError
from trainer.metrics.classification import ConfusionMatrix, F1Score, Precision, Recall
from trainer.metrics.distributed import Distributed
from trainer.metrics.loss import Loss
from trainer.metrics.regression import (
    MeanAbsoluteError,
    MeanSquaredError,
    R2Score,
    RootMeanSquaredError,
)
from trainer.metrics.state import REDUCTIONS, Reduction, merge_states
from trainer.metrics.transforms import default_output_transform

__all__ = [
    "REDUCTIONS",
    "Accuracy",
    "Average",
    "ConfusionMatrix",
    "Distributed",
    "F1Score",
    "Loss",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "Metric",
    "NotComputableError",
    "Precision",
    "R2Score",
    "Recall",
    "Reduction",
    "RootMeanSquaredError",
    "RunningAverage",
    "TopKCategoricalAccuracy",
    "default_output_transform",
    "merge_states",
]
