"""Process set-up that makes a run repeatable: seeded RNGs and a fixed torch thread count."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    """Use `threads` intra-op threads in torch (None keeps torch's default)."""
    if threads:
        torch.set_num_threads(threads)
