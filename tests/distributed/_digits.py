"""The digits evaluation set: built in the test process only (the ranks get it as arguments)."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

WORLD = 2
EPOCHS = 2


def digits_scores() -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-centroid scores (minus the distance to each class mean) and labels.

    Digits has 1797 samples; the last is left out so that the 2 ranks' DistributedSampler
    shares are equal halves with no padding (padding would count a sample twice).
    """
    x, y = load_digits(return_X_y=True)
    x, y = torch.from_numpy(x[:1796]), torch.from_numpy(y[:1796])
    centroids = torch.stack([x[y == k].mean(dim=0) for k in range(10)])
    return -torch.cdist(x, centroids), y
