"""Distributed(metric) on two gloo ranks equals the metric computed by one process on all data."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    mean_squared_error,
    precision_score,
    r2_score,
)

from trainer.metrics import Accuracy, Distributed, Metric

from ._programs import N, classification_data, metric_factories, pairs, regression_data


@pytest.fixture
def ranks(two_ranks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What `metrics_program` reported on each of two ranks, each fed half of the data."""
    return [reported["metrics"] for reported in two_ranks]


def one_process(name: str) -> Any:
    """The unwrapped metric fed all N samples in one process, in the same batch size."""
    make, kind = metric_factories()[name]
    metric: Metric = make()
    for batch in pairs(kind, slice(0, N)):
        metric.update(batch)
    return metric.compute()


def same(a: Any, b: Any) -> bool:
    """Equal up to float64 rounding (sums over ranks add in another order than one pass)."""
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(np.allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=0))


@pytest.mark.parametrize("name", sorted(metric_factories()))
def test_every_rank_holds_the_single_process_value(ranks: list[dict], name: str) -> None:
    reference = one_process(name)
    for values in ranks:
        assert same(values[name], reference), (name, values[name], reference)


def test_counts_are_exact(ranks: list[dict]) -> None:
    # Integer states are reduced as int64: the values equal the one-process ones bit for bit.
    for values in ranks:
        assert values["accuracy"] == one_process("accuracy")
        assert values["confusion"].dtype == torch.int64
        assert torch.equal(values["confusion"], one_process("confusion"))


def test_values_match_scikit_learn(ranks: list[dict]) -> None:
    c, r = classification_data(), regression_data()
    y, y_pred = c["y"].numpy(), c["y_pred"].numpy()
    for values in ranks:
        assert values["accuracy"] == pytest.approx(accuracy_score(y, y_pred), rel=1e-12)
        np.testing.assert_array_equal(values["confusion"].numpy(), confusion_matrix(y, y_pred))
        np.testing.assert_allclose(
            values["precision_per_class"].numpy(),
            precision_score(y, y_pred, average=None, zero_division=0),
            rtol=1e-12,
        )
        assert values["r2"] == pytest.approx(
            r2_score(r["y"][:, 0].numpy(), r["y_pred"][:, 0].numpy()), rel=1e-12
        )
        assert values["r2_two_outputs"] == pytest.approx(
            r2_score(r["y"].numpy(), r["y_pred"].numpy()), rel=1e-12
        )
        assert values["mse"] == pytest.approx(
            mean_squared_error(r["y"].numpy(), r["y_pred"].numpy()), rel=1e-12
        )
        assert values["loss"] == pytest.approx(
            float(F.cross_entropy(c["logits"], c["y"])), rel=1e-12
        )


def test_per_class_states_of_different_sizes_are_padded(ranks: list[dict]) -> None:
    # Rank 1's half only has classes 0-6, so its local matrix is 7x7; the global one is 10x10
    # and its rows 7-9 come from rank 0 alone.
    c = classification_data()
    for values in ranks:
        assert values["confusion"].shape == (10, 10)
        assert int(values["confusion"].sum()) == N
    assert int((c["y"][N // 2 :] >= 7).sum()) == 0


def test_min_and_max_entries_reduce_by_min_and_max(ranks: list[dict]) -> None:
    y = regression_data()["y"]
    for values in ranks:
        low, high = values["range"]
        assert low == float(y.min())
        assert torch.equal(high, y.amax(dim=0))


def test_a_rank_without_data_still_gets_the_global_value(ranks: list[dict]) -> None:
    # Only rank 0 averaged (tensor) values; rank 1's number state broadcasts as merge does.
    expected = regression_data()["y"][:5].mean(dim=0)
    for values in ranks:
        assert torch.allclose(values["average"], expected, rtol=1e-12, atol=0)


def test_compute_leaves_the_local_state_and_can_be_repeated(ranks: list[dict]) -> None:
    for values in ranks:
        for name in metric_factories():
            assert values[f"{name}:state kept"], name
            assert same(values[f"{name}:again"], values[name]), name


def test_states_that_cannot_merge_raise_on_every_rank(ranks: list[dict]) -> None:
    # Shapes (3,) and (4,): every rank raises (none waits forever for the others).
    messages = [values["mismatch"] for values in ranks]
    assert all(messages), messages
    assert "shape" in messages[0]


def test_without_a_process_group_it_is_the_wrapped_metric() -> None:
    c = classification_data()
    wrapped, plain = Distributed(Accuracy()), Accuracy()
    for batch in pairs("labels", slice(0, N)):
        wrapped.update(batch)
        plain.update(batch)
    assert wrapped.compute() == plain.compute()
    assert wrapped.compute() == accuracy_score(c["y"].numpy(), c["y_pred"].numpy())
    assert wrapped.state_dict() == plain.state_dict()
    assert wrapped.reductions == plain.reductions


def test_wrapping_twice_is_refused() -> None:
    # Reducing an already reduced state would count every other rank's samples twice.
    with pytest.raises(ValueError, match="distributed already"):
        Distributed(Distributed(Accuracy()))
    with pytest.raises(TypeError, match="Metric"):
        Distributed(lambda output: output)  # type: ignore[arg-type]
