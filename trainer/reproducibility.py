"""Process set-up that makes a run repeatable: seeded RNGs and a fixed torch thread count.

Where a run starts (the CLI's `trainer run`, or a program composing a `trainer.job.Job`), call
`prepare_process` before building the job, and `seed_rank` after it is built and before it
trains; a resume then restores the checkpoint's RNG states over these seeds.
"""

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


def prepare_process(seed: int, threads: int | None) -> None:
    """Before the job is built: `threads` torch threads, and every global RNG seeded with `seed`.

    The same seed on every rank, so that the model's initial weights are alike on all of them.
    """
    set_threads(threads)
    seed_everything(seed)


def seed_rank(seed: int, rank: int, world_size: int) -> None:
    """After the job is built, in a job of several ranks: reseed with `seed + rank`.

    From here on each rank draws its own numbers (dropout, augmentation), which checkpoints
    keep per rank. One rank keeps the stream `prepare_process` started.
    """
    if world_size > 1:
        seed_everything(seed + rank)
