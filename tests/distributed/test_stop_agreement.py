"""StopAgreement between two gloo ranks: what every rank agrees on, round after round."""

from __future__ import annotations

from typing import Any

import pytest

from trainer.distributed import Agreed

from ._digits import WORLD
from ._programs import AGREEMENT_ROUNDS


@pytest.fixture
def ranks(two_ranks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rank, what `agreement_program` reported."""
    return [reported["agreement"] for reported in two_ranks]


def expected(wishes: dict[int, tuple[dict[str, Any] | None, bool]]) -> Agreed:
    """What the ranks must agree given each rank's wishes: the lowest stopping rank's cause."""
    stopping = [rank for rank in range(WORLD) if wishes[rank][0] is not None]
    cause = None
    if stopping:
        stop = wishes[stopping[0]][0]
        assert stop is not None
        cause = {"voter": None, **stop, "rank": stopping[0]}
    return Agreed(bool(stopping), any(wishes[r][1] for r in range(WORLD)), cause)


def test_every_rank_agrees_each_round_on_the_same_outcome(ranks: list[dict[str, Any]]) -> None:
    for seen in ranks:
        assert seen["agreed"] == [expected(wishes) for wishes in AGREEMENT_ROUNDS]
        assert seen["agreements"] == len(AGREEMENT_ROUNDS) + 1
        assert seen["stops"] == sum(expected(w).stop for w in AGREEMENT_ROUNDS)


def test_an_agreement_never_finished_does_not_leak_into_the_next(
    ranks: list[dict[str, Any]],
) -> None:
    for seen in ranks:
        assert seen["after abandoned"] == Agreed(False, False, None)
        # The abandoned one still completed with its own flags: rank 1 (flag world - 1) stops.
        assert seen["abandoned flags"] == [WORLD - 1, 0]
