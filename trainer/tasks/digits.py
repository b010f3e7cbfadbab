"""scikit-learn's bundled digits (8x8 images, 10 classes) as train/validation DataLoaders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from trainer.tasks.objectives import CLASSIFICATION
from trainer.tasks.registry import DataBundle
from trainer.tasks.sampling import tensor_loaders
from trainer.tasks.split_cache import cached_split

PIXEL_MAX = 16.0  # digits pixels are integers 0..16


def digits_tensors(
    val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_val, y_val): pixels scaled to [0, 1], a stratified seeded split."""
    split = cached_split("digits", val_fraction, seed, lambda: _split(val_fraction, seed))

    def features(a: Any) -> torch.Tensor:
        return torch.as_tensor(a / PIXEL_MAX, dtype=torch.float32)

    def labels(a: Any) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.long)

    return (
        features(split["x_train"]),
        labels(split["y_train"]),
        features(split["x_val"]),
        labels(split["y_val"]),
    )


def _split(val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """scikit-learn's digits, split as `digits_tensors` says (unscaled)."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise ImportError(
            f"data.name 'digits' needs scikit-learn, which ships the data set: "
            f"pip install scikit-learn ({exc})"
        ) from exc

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=val_fraction, random_state=seed, stratify=y
    )
    return {"x_train": x_train, "y_train": y_train, "x_val": x_val, "y_val": y_val}


def build(cfg: Any, epoch_fn: Callable[[], int]) -> DataBundle:
    """The `data.name: digits` builder: loaders batched by `data.batch_size`."""
    x_train, y_train, x_val, y_val = digits_tensors(cfg.data.val_fraction, cfg.run.seed)
    train, val = tensor_loaders(cfg, epoch_fn, x_train, y_train, x_val, y_val)
    return DataBundle(
        train=train,
        val=val,
        in_features=x_train.shape[1],
        task=CLASSIFICATION,
        num_classes=10,
    )
