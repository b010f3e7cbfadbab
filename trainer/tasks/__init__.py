"""Jobs the `trainer` CLI can build from config: data sets, models and optimizers by name."""

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
    "DataBundle",
    "EpochShuffleSampler",
    "build_data",
    "build_model",
    "build_optimizer",
    "register_data",
    "register_model",
]
