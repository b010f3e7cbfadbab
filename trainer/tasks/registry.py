"""Data sets, models and optimizers the CLI can build by their config name.

A name is either registered here (`register_data`, `register_model`) or an import path
`"package.module:function"`, so your own task plugs in without touching this package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainer.config import ConfigError
from trainer.plugins import PluginError, import_path
from trainer.tasks.objectives import CLASSIFICATION, REGRESSION, TASKS

# Builders are imported on first use: the CLI must not pay for scikit-learn unless it trains.
_DATA: dict[str, Callable[..., DataBundle] | str] = {
    "digits": "trainer.tasks.digits:build",
    "diabetes": "trainer.tasks.diabetes:build",
}
_MODELS: dict[str, Callable[..., nn.Module] | str] = {"mlp": "trainer.tasks.mlp:build"}
_OPTIMIZERS: dict[str, Callable[[Iterable[Any], Any], torch.optim.Optimizer]] = {
    "adam": lambda params, o: torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay),
    "adamw": lambda params, o: torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay),
    "sgd": lambda params, o: torch.optim.SGD(
        params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
    ),
}


@dataclass
class DataBundle:
    """What a data builder returns: loaders, the task type and the sizes a model builder needs.

    `task` says what the job trains for (`trainer.tasks.objectives`): "classification" (batches
    of features and integer labels; the model outputs `num_classes` logits) or "regression"
    (batches of features and float targets shaped like the model's output, `(N, num_outputs)`).
    `num_outputs` is the model's output width; for classification it is `num_classes`.
    """

    train: DataLoader
    val: DataLoader
    in_features: int
    num_classes: int | None = None
    task: str = CLASSIFICATION
    num_outputs: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(
                f"DataBundle task {self.task!r} is not one of {', '.join(TASKS)}: the data "
                "builder must say which the data set is for"
            )
        if self.task == CLASSIFICATION:
            if self.num_classes is None or self.num_classes < 2:
                raise ValueError(
                    f"a classification DataBundle needs num_classes >= 2, got {self.num_classes!r}"
                )
            if self.num_outputs not in (None, self.num_classes):
                raise ValueError(
                    f"a classification DataBundle has num_outputs == num_classes "
                    f"({self.num_classes}), got num_outputs={self.num_outputs!r}"
                )
            self.num_outputs = self.num_classes
        elif self.num_outputs is None or self.num_outputs < 1 or self.num_classes is not None:
            raise ValueError(
                f"a {REGRESSION} DataBundle needs num_outputs >= 1 (the target's width) and no "
                f"num_classes, got num_outputs={self.num_outputs!r}, "
                f"num_classes={self.num_classes!r}"
            )


def register_data(name: str, builder: Callable[..., DataBundle]) -> None:
    """Make `data.name: <name>` build with `builder(cfg, epoch_fn) -> DataBundle`."""
    _DATA[name] = builder


def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make `model.name: <name>` build with `builder(cfg, in_features, num_outputs)`."""
    _MODELS[name] = builder


def build_data(cfg: Any, epoch_fn: Callable[[], int]) -> DataBundle:
    """The data set named by `data.name`; `epoch_fn` gives the current epoch for shuffling."""
    bundle = _resolve(_DATA, cfg.data.name, "data.name")(cfg, epoch_fn)
    if not isinstance(bundle, DataBundle):
        raise TypeError(f"data builder {cfg.data.name!r} returned {type(bundle).__name__}")
    return bundle


def build_model(cfg: Any, in_features: int, num_outputs: int) -> nn.Module:
    """The model named by `model.name`, sized for the data (outputs: classes or targets)."""
    return _resolve(_MODELS, cfg.model.name, "model.name")(cfg, in_features, num_outputs)


def build_optimizer(cfg: Any, params: Iterable[Any]) -> torch.optim.Optimizer:
    """The optimizer named by `optim.name` over `params`."""
    return _resolve(_OPTIMIZERS, cfg.optim.name, "optim.name")(params, cfg.optim)


def _resolve(registry: dict[str, Any], name: str, key: str) -> Callable[..., Any]:
    target = registry.get(name, name if ":" in name else None)
    if target is None:
        known = ", ".join(sorted(registry))
        raise ConfigError(
            f"unknown {key} {name!r}: use one of {known} or 'package.module:function'", key=key
        )
    if isinstance(target, str):
        try:
            target = import_path(target, what=key, where=f"config {key!r}")
        except PluginError as exc:
            raise ConfigError(str(exc), key=key) from None
        if name in registry:
            registry[name] = target
    return target
