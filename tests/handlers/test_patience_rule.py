"""The patience rule of early stopping, as a pure class."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainer.patience import Patience


def first_stop(rule: Patience, scores: list[float]) -> int | None:
    """1-based index of the score at which the rule first says stop, or None."""
    for i, score in enumerate(scores, start=1):
        if rule.step(score):
            return i
    return None


@pytest.mark.parametrize(
    ("scores", "patience", "expected"),
    [
        # 2 is not better than 2: two evaluations without improvement after the 2nd.
        ([1, 2, 2, 2], 2, 4),
        # Improvements keep resetting the counter; the last three do not improve on 5.
        ([1, 3, 2, 5, 4, 4, 5], 3, 7),
        ([1, 2, 3, 4, 5], 1, None),
        ([5, 4], 1, 2),
    ],
)
def test_stops_after_patience_evaluations_without_improvement(
    scores: list[float], patience: int, expected: int | None
) -> None:
    assert first_stop(Patience(patience), scores) == expected


def test_min_delta_requires_a_large_enough_gain() -> None:
    # Gains of 0.05 do not beat min_delta=0.1, so every score after the first counts as none.
    assert first_stop(Patience(2, min_delta=0.1), [1.0, 1.05, 1.1, 1.15]) == 3
    assert first_stop(Patience(2, min_delta=0.01), [1.0, 1.05, 1.1, 1.15]) is None


def test_cumulative_delta_lets_small_gains_add_up() -> None:
    scores = [0.0, 0.6, 1.2, 1.8]
    # Non-cumulative: the reference follows each score, so no step ever gains more than 1.
    assert first_stop(Patience(2, min_delta=1.0), scores) == 3
    # Cumulative: 1.2 beats the reference 0.0 by more than 1 and resets the counter.
    assert first_stop(Patience(2, min_delta=1.0, cumulative_delta=True), scores) is None


def test_min_mode_prefers_lower_scores() -> None:
    assert first_stop(Patience(2, mode="min"), [3.0, 2.0, 2.5, 2.0]) == 4
    assert first_stop(Patience(2, mode="min"), [3.0, 2.0, 1.0, 0.5]) is None


def test_nan_never_improves() -> None:
    assert first_stop(Patience(2), [1.0, float("nan"), float("nan")]) == 3


def test_bad_arguments_name_the_culprit() -> None:
    with pytest.raises(ValueError, match="patience"):
        Patience(0)
    with pytest.raises(ValueError, match="min_delta"):
        Patience(1, min_delta=-0.5)
    with pytest.raises(ValueError, match="mode"):
        Patience(1, mode="up")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="best_score"):
        Patience(1).load_state_dict({"counter": 0})


scores_lists = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=20)


@given(scores_lists, st.integers(1, 4), st.sampled_from([0.0, 0.5, 1.0, 2.0]))
def test_non_cumulative_matches_an_independent_formulation(
    scores: list[float], patience: int, min_delta: float
) -> None:
    # Without cumulative_delta the reference is the running max, so the counter is the number
    # of trailing scores that fail to beat the max of everything before them by min_delta.
    expected = None
    run = 0
    for i in range(1, len(scores)):
        run = run + 1 if scores[i] <= max(scores[:i]) + min_delta else 0
        if run >= patience:
            expected = i + 1
            break
    assert first_stop(Patience(patience, min_delta=min_delta), scores) == expected


@given(scores_lists, st.integers(1, 4), st.sampled_from([0.0, 1.0]), st.booleans())
def test_min_mode_is_max_mode_on_negated_scores(
    scores: list[float], patience: int, min_delta: float, cumulative: bool
) -> None:
    as_min = Patience(patience, min_delta, cumulative, mode="min")
    as_max = Patience(patience, min_delta, cumulative, mode="max")
    assert [as_min.step(s) for s in scores] == [as_max.step(-s) for s in scores]


@given(scores_lists, st.data(), st.integers(1, 4), st.booleans())
def test_state_dict_round_trip_resumes_the_same_decisions(
    scores: list[float], data: st.DataObject, patience: int, cumulative: bool
) -> None:
    cut = data.draw(st.integers(0, len(scores)))
    whole = Patience(patience, 0.5, cumulative)
    expected = [whole.step(s) for s in scores]
    first = Patience(patience, 0.5, cumulative)
    head = [first.step(s) for s in scores[:cut]]
    resumed = Patience(patience, 0.5, cumulative)
    resumed.load_state_dict(first.state_dict())
    assert head + [resumed.step(s) for s in scores[cut:]] == expected


def test_reset_forgets_history() -> None:
    rule = Patience(1)
    assert first_stop(rule, [2.0, 1.0]) == 2
    rule.reset()
    assert not rule.step(0.0)
    assert rule.best_score == 0.0 and rule.counter == 0
