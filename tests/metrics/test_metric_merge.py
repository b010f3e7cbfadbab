"""Merging the states of two halves of the data gives the value of the whole, for every metric."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.codec import to_native

from ._catalogue import CASES, SCALAR_CASES, Case, feed
from ._data import close


def over_the_wire(state: dict) -> dict:
    """What the aggregator sees: the state as msgpack-native values, packed and unpacked."""
    return msgpack.unpackb(msgpack.packb(to_native(state)), strict_map_key=False)


@pytest.mark.parametrize("case", CASES + SCALAR_CASES, ids=lambda c: c.name)
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(4, 40), cut=st.floats(0.0, 1.0))
def test_merged_halves_compute_the_whole(case: Case, seed: int, n: int, cut: float) -> None:
    y_pred, y = case.data(np.random.default_rng(seed), n)
    k = round(cut * n)
    whole = feed(case, case.make(), y_pred, y)
    first = feed(case, case.make(), y_pred[:k], y[:k])
    second = feed(case, case.make(), y_pred[k:], y[k:])
    first.merge(over_the_wire(second.state_dict()))
    assert close(first.compute(), whole.compute())


THREE_PART_CASES = [
    c for c in CASES if c.name in {"accuracy-binary", "precision-macro", "confusion", "r2"}
]


@pytest.mark.parametrize("case", THREE_PART_CASES, ids=lambda c: c.name)
def test_merging_is_order_independent_over_three_parts(case: Case) -> None:
    y_pred, y = case.data(np.random.default_rng(3), 30)
    parts = [slice(0, 9), slice(9, 20), slice(20, 30)]
    states = [feed(case, case.make(), y_pred[p], y[p]).state_dict() for p in parts]
    forward, backward = case.make(), case.make()
    for state in states:
        forward.merge(state)
    for state in reversed(states):
        backward.merge(state)
    whole = feed(case, case.make(), y_pred, y).compute()
    assert close(forward.compute(), whole)
    assert close(backward.compute(), whole)
