"""Two ranks evaluating halves of the digits through Engines see the full set's metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix

from ._digits import EPOCHS, WORLD, digits_scores


@pytest.fixture
def ranks(two_ranks: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Per rank, per epoch: the evaluator's state.metrics and the sample indices it saw."""
    return [reported["digits"] for reported in two_ranks]


def test_every_rank_reports_the_full_set_accuracy(ranks: list[list[dict]]) -> None:
    scores, y = digits_scores()
    expected = accuracy_score(y.numpy(), scores.argmax(dim=1).numpy())
    for epochs in ranks:
        assert len(epochs) == EPOCHS
        for epoch in epochs:
            assert epoch["metrics"]["accuracy"] == pytest.approx(expected, rel=1e-12)


def test_every_rank_reports_the_full_set_confusion_matrix(ranks: list[list[dict]]) -> None:
    scores, y = digits_scores()
    expected = confusion_matrix(y.numpy(), scores.argmax(dim=1).numpy())
    for epochs in ranks:
        for epoch in epochs:
            np.testing.assert_array_equal(epoch["metrics"]["confusion"].numpy(), expected)


def test_an_unwrapped_metric_stays_local(ranks: list[list[dict]]) -> None:
    # Each rank's plain Accuracy covers its own half: their mean is the global value.
    scores, y = digits_scores()
    correct = scores.argmax(dim=1) == y
    for epoch in range(EPOCHS):
        local = [ranks[r][epoch]["metrics"]["this rank's accuracy"] for r in range(WORLD)]
        seen = [ranks[r][epoch]["seen"] for r in range(WORLD)]
        for value, indices in zip(local, seen, strict=True):
            assert value == pytest.approx(float(correct[indices].double().mean()), rel=1e-12)


def test_the_ranks_split_each_epoch_and_shuffle_it_anew(ranks: list[list[dict]]) -> None:
    for epoch in range(EPOCHS):
        shares = [ranks[r][epoch]["seen"] for r in range(WORLD)]
        assert sorted(shares[0] + shares[1]) == list(range(1796))
    for epochs in ranks:
        # The Engine called the sampler's set_epoch: the second epoch has another order.
        assert epochs[0]["seen"] != epochs[1]["seen"]
