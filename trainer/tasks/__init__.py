"""Jobs the `trainer` CLI can build from config: data sets, models, optimizers, task types."""

from trainer.tasks.objectives import (
    CLASSIFICATION,
    REGRESSION,
    TASKS,
    Objective,
    objective_for,
)
from trainer.tasks.registry import (
    DataBundle,
    build_data,
    build_model,
    build_optimizer,
    register_data,
    register_model,
)
from trainer.tasks.sampling import EpochShuffleSampler

__all__ = [
    "CLASSIFICATION",
    "REGRESSION",
    "TASKS",
    "DataBundle",
    "EpochShuffleSampler",
    "Objective",
    "build_data",
    "build_model",
    "build_optimizer",
    "objective_for",
    "register_data",
    "register_model",
]
