"""RecentIds: the bounded memory of handled envelope ids that consumers deduplicate with."""

from __future__ import annotations

import pytest

from bus.consumer import RecentIds


def test_it_remembers_the_last_size_ids_and_forgets_the_oldest_first() -> None:
    recent = RecentIds(3)
    for key in "abcd":
        recent.add(key)
    assert [key in recent for key in "abcd"] == [False, True, True, True]


def test_adding_a_remembered_id_again_makes_it_the_newest() -> None:
    recent = RecentIds(3)
    for key in "abca":  # "a" again: now "b" is the oldest
        recent.add(key)
    recent.add("d")
    assert [key in recent for key in "abcd"] == [True, False, True, True]


def test_a_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="dedup size must be >= 1, got 0"):
        RecentIds(0)
