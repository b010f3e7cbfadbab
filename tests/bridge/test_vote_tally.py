"""The vote tally: policies over live voters, latest votes, leaving and timeouts, ties."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainer.vote_tally import (
    Vote,
    VoterBook,
    parse_policy,
    stop_votes_needed,
    tally,
)

POLICIES = ["any", "majority", "all", 1, 2, 3]


def votes_of(*stops: bool) -> dict[str, Vote]:
    """Votes of voters v0, v1, ... in that arrival order."""
    return {f"v{i}": Vote(f"v{i}", stop, "r", 0, i + 1) for i, stop in enumerate(stops)}


def expected_stop(policy: str | int, stop_votes: int, live: int) -> bool:
    """The policies in words."""
    if live == 0 or stop_votes == 0:
        return False
    if policy == "any":
        return True
    if policy == "majority":
        return 2 * stop_votes > live
    if policy == "all":
        return stop_votes == live
    return stop_votes >= policy


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("n", range(5))
def test_every_combination_of_up_to_four_voters_follows_the_policy(policy, n: int) -> None:
    for stops in itertools.product([False, True], repeat=n):
        votes = votes_of(*stops)
        result = tally(votes, set(votes), policy)
        assert result.stop is expected_stop(policy, sum(stops), n), (policy, stops)
        assert (result.stop_votes, result.live) == (sum(stops), n)


@pytest.mark.parametrize("policy", POLICIES)
def test_voters_that_never_voted_count_as_continue(policy) -> None:
    votes = votes_of(True)
    live = {"v0", "quiet-1", "quiet-2"}
    assert tally(votes, live, policy).stop is expected_stop(policy, 1, 3)


def test_a_tie_under_majority_continues() -> None:
    votes = votes_of(True, True, False, False)
    assert not tally(votes, set(votes), "majority").stop
    votes = votes_of(True, True, True, False)
    assert tally(votes, set(votes), "majority").stop


def test_nothing_stops_without_live_voters() -> None:
    votes = votes_of(True, True)
    for policy in POLICIES:
        result = tally(votes, set(), policy)
        assert not result.stop and result.live == 0 and result.needed >= 1


def test_votes_of_voters_that_are_not_live_are_not_counted() -> None:
    votes = votes_of(True, True, False)
    result = tally(votes, {"v2"}, "any")
    assert not result.stop and result.stop_votes == 0


def test_a_quorum_larger_than_the_live_voters_cannot_be_reached() -> None:
    votes = votes_of(True, True)
    assert not tally(votes, set(votes), 3).stop
    assert tally(votes, set(votes), 2).stop


def test_the_tipping_voter_is_the_stop_vote_that_reached_the_quorum() -> None:
    votes = {
        "c": Vote("c", True, "third", 0, 9),
        "a": Vote("a", True, "first", 0, 2),
        "b": Vote("b", True, "second", 0, 5),
        "d": Vote("d", False, "no", 0, 7),
    }
    live = set(votes)
    assert tally(votes, live, "any").tipped_by.voter == "a"
    assert tally(votes, live, 2).tipped_by.voter == "b"
    assert tally(votes, live, "majority").tipped_by.voter == "c"  # 3 of 4
    assert tally(votes, live, "all").tipped_by is None
    result = tally(votes, live, "majority")
    assert result.describe() == "3 of 4 live voters voted stop (policy majority needs 3)"


@given(
    stops=st.lists(st.booleans(), max_size=8),
    live_mask=st.lists(st.booleans(), min_size=8, max_size=8),
    policy=st.sampled_from(["any", "majority", "all"]) | st.integers(1, 9),
)
def test_the_tally_agrees_with_the_policy_in_words(stops, live_mask, policy) -> None:
    votes = votes_of(*stops)
    live = {f"v{i}" for i, alive in enumerate(live_mask) if alive}
    live_stops = sum(1 for name, v in votes.items() if v.stop and name in live)
    result = tally(votes, live, policy)
    assert result.stop is expected_stop(policy, live_stops, len(live))
    assert result.needed == stop_votes_needed(policy, len(live))
    if result.stop:
        assert result.tipped_by.stop and result.tipped_by.voter in live
        counted_before = [
            v for n, v in votes.items() if n in live and v.stop and v.seq <= result.tipped_by.seq
        ]
        assert len(counted_before) == result.needed


@pytest.mark.parametrize(
    ("given_policy", "parsed"),
    [("any", "any"), ("majority", "majority"), ("all", "all"), (3, 3), ("2", 2)],
)
def test_policies_parse(given_policy, parsed) -> None:
    assert parse_policy(given_policy) == parsed


@pytest.mark.parametrize("bad", ["most", "", "0", 0, -1, True, 1.5, None])
def test_bad_policies_are_refused_naming_the_value(bad) -> None:
    with pytest.raises(ValueError, match=rf"policy {bad!r} is not a voting policy"):
        parse_policy(bad)


# ---- the book of voters ----------------------------------------------------------------------


def test_a_voter_is_live_until_its_heartbeats_stop_for_the_timeout() -> None:
    book = VoterBook(heartbeat_timeout=10)
    book.join("a", at=100)
    assert book.live(100) == {"a"} and book.live(110) == {"a"}
    assert book.live(110.5) == set()
    book.seen(["a"], at=110.2)  # a late heartbeat revives it
    assert book.live(115) == {"a"}
    assert book.expires_at("a") == pytest.approx(120.2)
    assert book.expires_at("nobody") is None


def test_signs_of_life_older_than_the_last_one_change_nothing() -> None:
    book = VoterBook(heartbeat_timeout=10)
    book.join("a", at=100)
    book.seen(["a"], at=50)
    book.join("a", at=40)
    assert book.expires_at("a") == 110


def test_signs_of_life_of_unregistered_workers_do_not_register_them() -> None:
    book = VoterBook(heartbeat_timeout=10)
    book.seen(["stranger"], at=1)
    assert book.registered == frozenset()
    assert book.vote("stranger", True, "r", 0, at=1) is None
    assert book.votes == {}


def test_the_latest_vote_stands_until_the_voter_votes_again() -> None:
    book = VoterBook(heartbeat_timeout=10)
    book.join("a", at=0)
    book.vote("a", True, "plateau", 0, at=1)
    assert book.tally("any", now=2).stop
    book.vote("a", False, "improving", 1, at=3)
    assert not book.tally("any", now=4).stop
    assert book.votes["a"].reason == "improving"


def test_a_vote_is_a_sign_of_life() -> None:
    book = VoterBook(heartbeat_timeout=10)
    book.join("a", at=0)
    book.vote("a", True, "r", 0, at=9)
    assert book.live(15) == {"a"}


def test_a_voter_that_leaves_no_longer_counts_and_a_rejoin_starts_afresh() -> None:
    book = VoterBook(heartbeat_timeout=10)
    book.join("a", at=0)
    book.join("b", at=0)
    book.vote("a", True, "r", 0, at=1)
    assert not book.tally("all", now=2).stop
    book.leave("b")
    assert book.tally("all", now=2).stop
    book.leave("a")
    book.join("a", at=3)
    assert not book.tally("any", now=4).stop


def test_a_dead_voter_no_longer_holds_the_run() -> None:
    book = VoterBook(heartbeat_timeout=5)
    book.join("alive", at=0)
    book.join("dead", at=0)
    book.vote("alive", True, "r", 0, at=4)
    assert not book.tally("all", now=4).stop
    assert book.tally("all", now=6).stop  # "dead" was last seen at 0
    assert book.tally("all", now=6).live == 1


def test_missing_votes_are_the_live_voters_without_a_vote_on_the_epoch() -> None:
    book = VoterBook(heartbeat_timeout=5)
    for name in ("a", "b", "c", "d"):
        book.join(name, at=0)
    book.vote("a", False, "r", 3, at=1)  # on this epoch
    book.vote("b", False, "r", 4, at=1)  # on a later one: counts as voted
    book.vote("c", False, "r", 2, at=1)  # on an earlier one: still missing
    assert book.missing_votes(3, now=2) == ["c", "d"]
    assert book.missing_votes(3, now=5.5) == ["c"]  # "d" went silent


@pytest.mark.parametrize("bad", [0, -1, True, "10"])
def test_a_bad_heartbeat_timeout_is_refused(bad) -> None:
    with pytest.raises(ValueError, match=rf"heartbeat_timeout must be .* got {bad!r}"):
        VoterBook(bad)


def test_the_tally_module_does_not_import_torch() -> None:
    probe = "import sys, trainer.vote_tally; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
