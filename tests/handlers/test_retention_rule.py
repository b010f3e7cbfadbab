"""The checkpoint retention rule: keep the last n and/or the best k by score."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainer.retention import CheckpointRecord, RetentionPolicy, best, latest


def rec(name: str, step: int, score: float | None = None) -> CheckpointRecord:
    return CheckpointRecord(name=name, step=step, score=score)


def names(records: list[CheckpointRecord]) -> list[str]:
    return [r.name for r in records]


# Records in save order: steps increase, scores are small integers so ties happen often.
@st.composite
def histories(draw: st.DrawFn) -> list[CheckpointRecord]:
    scores = draw(
        st.lists(st.one_of(st.none(), st.integers(-3, 3).map(float)), min_size=1, max_size=12)
    )
    return [rec(f"c{i}", step=10 * (i + 1), score=s) for i, s in enumerate(scores)]


counts = st.one_of(st.none(), st.integers(0, 4))


def test_keep_last_n_keeps_the_newest_by_step() -> None:
    records = [rec("a", 30), rec("b", 10), rec("c", 20), rec("d", 40)]
    keep, prune = RetentionPolicy(keep_last=2).select(records)
    assert names(keep) == ["a", "d"]
    assert names(prune) == ["b", "c"]


def test_keep_best_k_keeps_the_highest_scores_and_newest_on_ties() -> None:
    records = [rec("a", 1, 0.5), rec("b", 2, 0.9), rec("c", 3, 0.7), rec("d", 4, 0.9)]
    keep, _ = RetentionPolicy(keep_last=0, keep_best=2).select(records)
    assert names(keep) == ["b", "d"]
    keep, _ = RetentionPolicy(keep_last=0, keep_best=1).select(records)
    assert names(keep) == ["d"]  # tie between b and d: the more recent wins


def test_union_of_last_and_best() -> None:
    records = [rec("a", 1, 0.9), rec("b", 2, 0.1), rec("c", 3, 0.2), rec("d", 4, 0.3)]
    keep, prune = RetentionPolicy(keep_last=1, keep_best=1).select(records)
    assert names(keep) == ["a", "d"]
    assert names(prune) == ["b", "c"]


def test_unscored_and_nan_records_never_count_as_best() -> None:
    records = [rec("a", 1, None), rec("b", 2, float("nan")), rec("c", 3, -5.0)]
    keep, _ = RetentionPolicy(keep_last=0, keep_best=2).select(records)
    assert names(keep) == ["c"]
    assert best(records) == records[2]


def test_none_keeps_everything() -> None:
    records = [rec("a", 1, 0.1), rec("b", 2), rec("c", 3, 0.3)]
    assert RetentionPolicy(keep_last=None, keep_best=0).select(records)[1] == []
    keep, prune = RetentionPolicy(keep_last=0, keep_best=None).select(records)
    assert names(keep) == ["a", "c"] and names(prune) == ["b"]


def test_admit_reports_whether_the_new_checkpoint_survives() -> None:
    policy = RetentionPolicy(keep_last=0, keep_best=2)
    kept = [rec("a", 1, 0.8), rec("b", 2, 0.9)]
    worse = policy.admit(kept, rec("c", 3, 0.1))
    assert not worse.new_kept
    assert names(worse.prune) == ["c"] and names(worse.keep) == ["a", "b"]
    better = policy.admit(kept, rec("d", 4, 0.85))
    assert better.new_kept
    assert names(better.prune) == ["a"] and names(better.keep) == ["b", "d"]


def test_admit_supersedes_a_record_of_the_same_name_without_pruning_it() -> None:
    policy = RetentionPolicy(keep_last=1)
    decision = policy.admit([rec("x", 5)], rec("x", 5))
    assert decision.new_kept
    assert decision.prune == []
    assert decision.keep == [rec("x", 5)]


def test_bad_arguments_name_the_culprit() -> None:
    with pytest.raises(ValueError, match="keep_last"):
        RetentionPolicy(keep_last=-1)
    with pytest.raises(ValueError, match="keep_best"):
        RetentionPolicy(keep_best=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\['a'\]"):
        RetentionPolicy().select([rec("a", 1), rec("a", 2)])


def test_latest_and_best_of_nothing_are_none() -> None:
    assert latest([]) is None
    assert best([rec("a", 1)]) is None
    assert latest([rec("a", 2), rec("b", 1)]) == rec("a", 2)


@given(histories(), counts, counts)
def test_keep_and_prune_partition_the_records(
    records: list[CheckpointRecord], n: int | None, k: int | None
) -> None:
    keep, prune = RetentionPolicy(keep_last=n, keep_best=k).select(records)
    assert sorted(names(keep) + names(prune)) == sorted(names(records))
    assert not set(names(keep)) & set(names(prune))


@given(histories(), st.integers(0, 4), st.integers(0, 4))
def test_never_keeps_more_than_n_plus_k(records: list[CheckpointRecord], n: int, k: int) -> None:
    keep, _ = RetentionPolicy(keep_last=n, keep_best=k).select(records)
    assert len(keep) <= n + k
    only_best, _ = RetentionPolicy(keep_last=0, keep_best=k).select(records)
    assert len(only_best) == min(k, sum(r.score is not None for r in records))


@given(histories(), st.integers(1, 4), counts)
def test_always_keeps_the_newest(records: list[CheckpointRecord], n: int, k: int | None) -> None:
    keep, _ = RetentionPolicy(keep_last=n, keep_best=k).select(records)
    assert records[-1] in keep
    assert latest(records) == records[-1]


@given(histories(), counts, st.integers(1, 4))
def test_always_keeps_the_best_scores(
    records: list[CheckpointRecord], n: int | None, k: int
) -> None:
    keep, prune = RetentionPolicy(keep_last=n, keep_best=k).select(records)
    scored = [r.score for r in records if r.score is not None]
    if scored:
        assert any(r.score == max(scored) for r in keep)
    # No pruned checkpoint scores strictly better than a checkpoint kept for its score.
    _, best_prune = RetentionPolicy(keep_last=0, keep_best=k).select(records)
    best_keep = [r for r in records if r not in best_prune]
    for dropped in (r for r in prune if r.score is not None):
        assert all(dropped.score <= r.score for r in best_keep if r.score is not None)


@given(histories(), counts, counts)
def test_admitting_one_at_a_time_equals_selecting_from_the_whole_history(
    records: list[CheckpointRecord], n: int | None, k: int | None
) -> None:
    policy = RetentionPolicy(keep_last=n, keep_best=k)
    kept: list[CheckpointRecord] = []
    pruned: list[CheckpointRecord] = []
    for new in records:
        decision = policy.admit(kept, new)
        kept = decision.keep
        pruned += decision.prune
    keep, prune = policy.select(records)
    assert kept == keep
    assert sorted(names(pruned)) == sorted(names(prune))
