"""A multilayer perceptron built from config: class logits or regression outputs."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from torch import nn


def mlp(in_features: int, hidden: Sequence[int], num_outputs: int) -> nn.Sequential:
    """Linear layers of the given hidden widths with ReLU between, ending in `num_outputs`."""
    widths = [in_features, *hidden]
    layers: list[nn.Module] = []
    for width_in, width_out in pairwise(widths):
        layers += [nn.Linear(width_in, width_out), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], num_outputs))
    return nn.Sequential(*layers)


def build(cfg: Any, in_features: int, num_outputs: int) -> nn.Module:
    """The `model.name: mlp` builder: widths from `model.hidden`."""
    return mlp(in_features, list(cfg.model.hidden), num_outputs)
