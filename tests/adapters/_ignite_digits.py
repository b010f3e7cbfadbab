"""An Ignite training job on scikit-learn's digits: the MLP, a trainer and an evaluator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from ignite.engine import Engine, Events, create_supervised_evaluator, create_supervised_trainer
from ignite.metrics import Accuracy, Loss
from torch.utils.data import DataLoader, TensorDataset

from trainer.tasks.digits import digits_tensors
from trainer.tasks.mlp import mlp


@dataclass
class Job:
    """What an Ignite user has before calling trainer.run()."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    trainer: Engine
    evaluator: Engine
    train: DataLoader
    val: DataLoader


def digits_job(seed: int = 0, lr: float = 0.05, train_size: int = 512, batch: int = 64) -> Job:
    """The digits MLP with Ignite's supervised trainer and an evaluator run every epoch."""
    torch.manual_seed(seed)
    x_train, y_train, x_val, y_val = digits_tensors(0.25, seed)
    train = DataLoader(TensorDataset(x_train[:train_size], y_train[:train_size]), batch_size=batch)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=256)
    model = mlp(64, [32], 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    loss = torch.nn.CrossEntropyLoss()
    trainer = create_supervised_trainer(model, optimizer, loss)
    evaluator = create_supervised_evaluator(
        model, metrics={"accuracy": Accuracy(), "loss": Loss(loss)}
    )

    def validate(engine: Any) -> None:
        evaluator.run(val)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)
    return Job(model, optimizer, trainer, evaluator, train, val)
