"""scikit-learn's bundled diabetes data (442 patients, 10 features, one target) for regression."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from trainer.tasks.objectives import REGRESSION
from trainer.tasks.registry import DataBundle
from trainer.tasks.sampling import tensor_loaders
from trainer.tasks.split_cache import cached_split


def diabetes_tensors(
    val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_val, y_val): a seeded split, standardised by the training split.

    Features and the target are centred and scaled by the training split's mean and standard
    deviation (the validation split takes no part in them); targets have shape (N, 1).
    """
    split = cached_split("diabetes", val_fraction, seed, lambda: _split(val_fraction, seed))
    x_train, y_train = split["x_train"], split["y_train"]
    x_val, y_val = split["x_val"], split["y_val"]
    x_mean, x_std = x_train.mean(axis=0), x_train.std(axis=0)
    y_mean, y_std = y_train.mean(axis=0), y_train.std(axis=0)

    def scaled(a: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((a - mean) / std, dtype=torch.float32)

    return (
        scaled(x_train, x_mean, x_std),
        scaled(y_train, y_mean, y_std),
        scaled(x_val, x_mean, x_std),
        scaled(y_val, y_mean, y_std),
    )


def _split(val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """scikit-learn's diabetes data, split as `diabetes_tensors` says (unscaled)."""
    try:
        from sklearn.datasets import load_diabetes
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ImportError(
            f"data.name 'diabetes' needs scikit-learn, which ships the data set: "
            f"pip install scikit-learn ({exc})"
        ) from exc

    x, y = load_diabetes(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y.reshape(-1, 1), test_size=val_fraction, random_state=seed
    )
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}


def build(cfg: Any, epoch_fn: Callable[[], int]) -> DataBundle:
    """The `data.name: diabetes` builder: a regression bundle batched by `data.batch_size`."""
    x_train, y_train, x_val, y_val = diabetes_tensors(cfg.data.val_fraction, cfg.run.seed)
    train, val = tensor_loaders(cfg, epoch_fn, x_train, y_train, x_val, y_val)
    return DataBundle(
        train=train,
        val=val,
        in_features=x_train.shape[1],
        task=REGRESSION,
        num_outputs=y_train.shape[1],
    )
