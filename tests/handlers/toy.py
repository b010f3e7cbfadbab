"""A tiny regression problem on a real Engine, shared by the handler tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainer import Engine


@dataclass
class Toy:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    data: list[tuple[torch.Tensor, torch.Tensor]]
    trainer: Engine


def make_toy(n_batches: int = 5, lr: float = 0.05, seed: int = 0, dropout: float = 0.0) -> Toy:
    """A Linear model (with optional dropout, to use the RNG) trained by SGD with momentum."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(dropout), nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    g = torch.Generator().manual_seed(seed + 1)
    data = [
        (torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)) for _ in range(n_batches)
    ]

    def step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        model.train()
        x, y = batch
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    return Toy(model, optimizer, data, Engine(step))


def scripted(values: list[float]) -> Any:
    """A score function returning the given values in turn, one per call."""
    it = iter(values)
    return lambda engine: next(it)
