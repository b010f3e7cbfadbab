"""The mergeable state: declared reductions, merge, state_dict / load_state_dict round trips."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
import torch

from bus.codec import to_native
from trainer.metrics import (
    REDUCTIONS,
    Accuracy,
    ConfusionMatrix,
    Metric,
    NotComputableError,
    R2Score,
    merge_states,
)

from ._catalogue import CASES, SCALAR_CASES, Case, feed
from ._data import close

ALL_CASES = CASES + SCALAR_CASES


class Extremes(Metric):
    """A user-defined metric using the min and max reductions."""

    def __init__(self) -> None:
        super().__init__(output_transform=lambda output: output)
        self.add_state("low", float("inf"), "min")
        self.add_state("high", float("-inf"), "max")
        self.add_state("per_position_max", torch.full((3,), float("-inf")), "max")

    def update(self, output: Any) -> None:
        values = torch.as_tensor(output, dtype=torch.float64)
        self._state["low"] = min(self._state["low"], float(values.min()))
        self._state["high"] = max(self._state["high"], float(values.max()))
        self._state["per_position_max"] = torch.maximum(self._state["per_position_max"], values)

    def compute(self) -> tuple[float, float, list[float]]:
        return self._state["low"], self._state["high"], self._state["per_position_max"].tolist()


def _wire(state: dict[str, Any]) -> dict[str, Any]:
    return msgpack.unpackb(msgpack.packb(to_native(state)), strict_map_key=False)


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_every_state_entry_declares_a_known_reduction(case: Case) -> None:
    metric = case.make()
    y_pred, y = case.data(np.random.default_rng(0), 10)
    state = feed(case, metric, y_pred, y).state_dict()
    assert set(metric.reductions) == set(state)
    assert set(metric.reductions.values()) <= set(REDUCTIONS)
    for name, value in state.items():
        assert isinstance(value, (int, float, torch.Tensor)), name


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_state_survives_msgpack_and_loads_into_a_fresh_metric(case: Case) -> None:
    y_pred, y = case.data(np.random.default_rng(1), 21)
    original = feed(case, case.make(), y_pred, y)
    restored = case.make()
    restored.load_state_dict(_wire(original.state_dict()))
    assert close(restored.compute(), original.compute())
    # And it keeps working: both continue identically on more data.
    more_pred, more_y = case.data(np.random.default_rng(2), 9)
    feed(case, original, more_pred, more_y)
    feed(case, restored, more_pred, more_y)
    assert close(restored.compute(), original.compute())


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_no_value_before_any_data_and_after_reset(case: Case) -> None:
    metric = case.make()
    with pytest.raises(NotComputableError):
        metric.compute()
    y_pred, y = case.data(np.random.default_rng(3), 8)
    feed(case, metric, y_pred, y).compute()
    metric.reset()
    with pytest.raises(NotComputableError):
        metric.compute()


def test_load_state_dict_replaces_rather_than_merges() -> None:
    a, b = Accuracy(), Accuracy()
    a.update(([1, 1, 1], [1, 1, 1]))
    b.update(([0, 1], [1, 1]))
    a.load_state_dict(b.state_dict())
    assert a.compute() == 0.5


def test_state_dict_is_a_snapshot() -> None:
    metric = ConfusionMatrix(num_classes=2)
    metric.update(([0, 1], [0, 1]))
    snapshot = metric.state_dict()
    metric.update(([0, 1], [0, 1]))
    assert int(snapshot["matrix"].sum()) == 2
    snapshot["matrix"] += 100
    assert int(metric.compute().sum()) == 4


def test_min_and_max_reductions_merge_through_the_wire() -> None:
    a, b = Extremes(), Extremes()
    a.update([1.0, 5.0, -2.0])
    b.update([0.5, 7.0, -3.0])
    a.merge(_wire(b.state_dict()))
    assert a.compute() == (-3.0, 7.0, [1.0, 7.0, -2.0])


def test_merge_states_is_a_public_pure_function() -> None:
    a = {"n": 2, "low": 1.0, "v": torch.tensor([1, 2])}
    b = {"n": 3, "low": 0.5, "v": torch.tensor([10, 20])}
    merged = merge_states(a, b, {"n": "sum", "low": "min", "v": "sum"})
    assert merged["n"] == 5 and merged["low"] == 0.5
    assert merged["v"].tolist() == [11, 22]
    assert a["v"].tolist() == [1, 2]


def test_merge_names_missing_and_unexpected_entries() -> None:
    with pytest.raises(KeyError, match=r"missing \['total'\], unexpected \['totl'\]"):
        Accuracy().merge({"correct": 1, "totl": 2})


def test_merge_of_differently_shaped_entries_names_entry_and_shapes() -> None:
    a, b = R2Score(), R2Score()
    a.update((np.zeros((3, 2)), np.ones((3, 2))))
    b.update((np.zeros((3, 4)), np.ones((3, 4))))
    with pytest.raises(ValueError, match=r"'sum_y'.*\(2,\).*\(4,\)"):
        a.merge(b.state_dict())


def test_unknown_reduction_is_refused_at_declaration() -> None:
    class Bad(Extremes):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("median", 0.0, "median")

    with pytest.raises(ValueError, match=r"'median'.*sum, min, max"):
        Bad()


def test_state_entry_must_be_numbers() -> None:
    with pytest.raises(TypeError, match="'correct'"):
        Accuracy().load_state_dict({"correct": "seven", "total": 1})
