"""What an aggregator merges with: metric templates rebuilt once per (class, settings), and the
one-pass merge of plain-number states, which must give exactly what merging one by one gives."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.metrics import Accuracy, Loss, Metric, NotComputableError, Precision, registry
from trainer.metrics.registry import (
    MetricMessageError,
    MetricTemplates,
    metric_from_message,
    metric_from_settings,
    metric_state_message,
    register_metric,
)

from ._catalogue import CASES, SCALAR_CASES, Case, feed
from ._data import close

ALL_CASES = CASES + SCALAR_CASES


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Registrations made by a test are undone after it."""
    saved = dict(registry._by_name)
    yield
    registry._by_name.clear()
    registry._by_name.update(saved)


def over_msgpack(message: dict) -> dict:
    """What a subscriber decodes: the message packed and unpacked by msgpack, nothing else."""
    return msgpack.unpackb(msgpack.packb(message, use_bin_type=True), raw=False)


def where(name: Any) -> str:
    return f"metric_states[{name!r}] of EPOCH_COMPLETED e1"


def rank_messages(case: Case, seed: int, cuts: tuple[int, ...]) -> tuple[list[dict], Metric]:
    """The messages of the ranks that saw the parts of some data, and a metric fed all of it."""
    y_pred, y = case.data(np.random.default_rng(seed), cuts[-1])
    bounds = (0, *cuts)
    messages = [
        over_msgpack(metric_state_message(feed(case, case.make(), y_pred[a:b], y[a:b])))
        for a, b in itertools.pairwise(bounds)
    ]
    return messages, feed(case, case.make(), y_pred, y)


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_a_template_computes_what_a_fresh_twin_computes_epoch_after_epoch(case: Case) -> None:
    templates = MetricTemplates()
    for seed in range(3):  # one template for every epoch: nothing of one leaks into the next
        messages, whole = rank_messages(case, seed, (9, 20, 33))
        parts = []
        for message in messages:
            parsed, unknown = templates.parse({"m": message}, where)
            assert unknown == {}
            parts.append(parsed["m"])
        template = parts[0][0]
        assert all(t is template for t, _ in parts)  # the same class and settings: built once
        states = [state for _, state in parts]
        # The aggregator's way before templates: a fresh twin, each rank rebuilt and merged in.
        twin = metric_from_settings(messages[0]["class"], messages[0]["settings"])
        for message in messages:
            twin.merge(metric_from_message(message).state_dict())
        assert close(template.merged(states), twin.compute())
        assert close(template.merged(states), whole.compute())
    assert len(templates) == 1


def test_settings_share_a_template_when_equal_whatever_their_order() -> None:
    templates = MetricTemplates()
    state = {"tp": [1], "pred_pos": [1], "true_pos": [1], "samples": 1}
    macro = {"average": "macro", "num_classes": None, "is_multilabel": False, "threshold": 0.5}
    reordered = dict(reversed(list(macro.items())))
    weighted = {**macro, "average": "weighted"}
    found = [
        templates.lookup({"class": "Precision", "settings": s, "state": state}, lambda: "m")[0]
        for s in (macro, weighted, reordered, macro)
    ]
    assert found[0] is found[2] is found[3]
    assert found[1] is not found[0] and found[1].identity != found[0].identity
    assert found[0].metric.average == "macro" and found[1].metric.average == "weighted"


@pytest.mark.usefixtures("clean_registry")
def test_a_class_name_registered_again_gets_the_new_class() -> None:
    class Count(Metric):
        def __init__(self) -> None:
            super().__init__()
            self.add_state("n", 0, "sum", torch.int64)

        def update(self, output: Any) -> None:
            raise NotImplementedError

        def compute(self) -> Any:
            return self._state["n"]

    class Doubled(Count):
        def compute(self) -> Any:
            return 2 * self._state["n"]

    templates = MetricTemplates()
    message = {"class": "tests.Count", "settings": {}, "state": {"n": 3}}
    register_metric(Count, name="tests.Count")
    template, state = templates.parse({"c": message}, where)[0]["c"]
    assert template.merged([state]) == 3
    register_metric(Doubled, name="tests.Count", replace=True)
    template, state = templates.parse({"c": message}, where)[0]["c"]
    assert template.merged([state]) == 6


def test_unknown_classes_are_set_apart_and_the_others_parsed() -> None:
    accuracy = over_msgpack(metric_state_message(Accuracy()))
    perplexity = {"class": "Perplexity", "settings": {}, "state": {}}
    parsed, unknown = MetricTemplates().parse({"acc": accuracy, "ppl": perplexity}, where)
    assert list(parsed) == ["acc"]
    assert list(unknown) == ["Perplexity"]
    assert "metric_states['ppl']" in str(unknown["Perplexity"])
    assert "unknown metric class 'Perplexity'" in str(unknown["Perplexity"])


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        (None, "must be a map, got NoneType"),
        ({"class": "Accuracy", "settings": {}}, "lacks the keys ['state']"),
        ({"class": 7, "settings": {}, "state": {}}, "'class' must be a str, got 7"),
        ({"class": "Accuracy", "settings": [], "state": {}}, "settings of metric class"),
        ({"class": "Accuracy", "settings": {"k": 1}, "state": {}}, "cannot build metric class"),
        ({"class": "Loss", "settings": {}, "state": {"total": 1.0}}, "missing ['count']"),
        (
            {"class": "Loss", "settings": {}, "state": {"total": "1.0", "count": 1}},
            "'total' must be a number, a tensor or a list of numbers",
        ),
        (
            {"class": "Loss", "settings": {}, "state": {"total": None, "count": 1}},
            "state does not fit class 'Loss'",
        ),
    ],
)
def test_a_malformed_message_names_itself_and_the_problem(message: Any, problem: str) -> None:
    templates = MetricTemplates()
    templates.parse({"loss": over_msgpack(metric_state_message(Loss()))}, where)  # one known
    with pytest.raises(MetricMessageError) as info:
        templates.parse({"m": message}, where)
    assert str(info.value).startswith("metric_states['m'] of EPOCH_COMPLETED e1")
    assert problem in str(info.value)


def test_a_metric_name_must_be_a_str() -> None:
    with pytest.raises(MetricMessageError, match=r"metric_states\[3\] .*names must be str"):
        MetricTemplates().parse({3: metric_state_message(Loss())}, where)


def test_lists_are_checked_when_merged_and_a_bad_one_fails_the_merge() -> None:
    templates = MetricTemplates()
    good = over_msgpack(metric_state_message(Precision()))
    bad = {**good, "state": {**good["state"], "tp": [1, "x"]}}
    (template, state) = templates.parse({"p": bad}, where)[0]["p"]
    with pytest.raises(TypeError, match="'tp' is not a \\(nested\\) list of numbers"):
        template.merged([state])
    # Nothing of the failed merge stays in the template.
    with pytest.raises(NotComputableError):
        template.merged([])


# --- merging plain numbers in one pass ----------------------------------------------------------


class Spread(Metric):
    """A user metric with a plain-number entry of every reduction and dtype kind."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", 0.0, "sum")
        self.add_state("count", 0, "sum", torch.int64)
        self.add_state("low", float("inf"), "min")
        self.add_state("high", -(2**62), "max", torch.int64)

    def update(self, output: Any) -> None:
        raise NotImplementedError

    def compute(self) -> Any:
        return dict(self._state)


class SpreadMergedOneByOne(Spread):
    """Spread with a _restore of its own: merges go the general way, one state at a time."""

    def _restore(self, state: Any) -> dict[str, Any]:
        return super()._restore(state)


numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(-(2**62), 2**62),
)
plain_state = st.fixed_dictionaries(
    {"total": numbers, "count": st.integers(0, 2**40), "low": numbers, "high": numbers}
)
# What leaves the fast path in the middle of a run of plain states: a bool, a 0-d list...
odd_state = st.fixed_dictionaries(
    {
        "total": st.one_of(st.booleans(), st.just(torch.tensor(2.5, dtype=torch.float64))),
        "count": st.integers(0, 9),
        "low": numbers,
        "high": st.integers(-9, 9),
    }
)


@settings(max_examples=60, deadline=None)
@given(states=st.lists(st.one_of(plain_state, plain_state, odd_state), max_size=12))
def test_merging_all_at_once_gives_exactly_what_merging_one_by_one_gives(
    states: list[dict[str, Any]],
) -> None:
    all_at_once, one_by_one, fast_one_by_one = Spread(), SpreadMergedOneByOne(), Spread()
    all_at_once.merge_all(states)
    for state in states:
        one_by_one.merge(state)
        fast_one_by_one.merge(state)
    expected = one_by_one.compute()
    for merged in (all_at_once, fast_one_by_one):
        got = merged.compute()
        assert got == expected
        assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]


def test_merge_all_refuses_what_merge_refuses() -> None:
    with pytest.raises(KeyError, match=r"missing \['total'\], unexpected \['totl'\]"):
        Loss().merge_all([{"total": 1.0, "count": 1}, {"totl": 1.0, "count": 1}])
    with pytest.raises(TypeError, match="'count'"):
        Loss().merge_all([{"total": 1.0, "count": "one"}])


def test_the_checks_of_a_custom_restore_apply_to_merge_and_merge_all() -> None:
    class Counted(Loss):
        """Refuses states with a negative count, which its own _restore checks."""

        def _restore(self, state: Any) -> dict[str, Any]:
            if state["count"] < 0:
                raise ValueError(f"negative count {state['count']}")
            return super()._restore(state)

    states = [{"total": 3.0, "count": 2}, {"total": 1.0, "count": -2}]
    with pytest.raises(ValueError, match="negative count -2"):
        Counted().merge(states[1])
    with pytest.raises(ValueError, match="negative count -2"):
        Counted().merge_all(states)
    merged = Counted()
    merged.merge_all(states[:1])
    assert merged.compute() == 1.5
