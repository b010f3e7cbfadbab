"""Envelope ids are ULIDs: 26 Crockford base32 characters, unique, sortable by creation time."""

from __future__ import annotations

import dataclasses
import multiprocessing
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import Envelope, new_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")


def decode_ulid_ms(ulid: str) -> int:
    """The ULID spec's time field: the first 10 characters, base 32, in milliseconds."""
    value = 0
    for char in ulid[:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value


def test_ids_are_well_formed_and_unique() -> None:
    ids = [new_id() for _ in range(20_000)]
    assert all(ULID.match(i) for i in ids)
    assert len(set(ids)) == len(ids)


@given(st.floats(min_value=0, max_value=2**47 / 1000), st.floats(min_value=0.002, max_value=1e6))
def test_ids_carry_their_time_and_sort_by_it(now: float, later_by: float) -> None:
    earlier, later = new_id(now), new_id(now + later_by)
    assert decode_ulid_ms(earlier) == int(now * 1000)
    assert earlier < later


def test_envelopes_get_fresh_ids() -> None:
    a = Envelope(type="STARTED", run_id="r", source="trainer:0")
    b = Envelope(type="STARTED", run_id="r", source="trainer:0")
    assert a.id != b.id and ULID.match(a.id)


def _ids_in_child(queue: multiprocessing.Queue) -> None:
    queue.put([new_id(1.0) for _ in range(100)])


def test_forked_processes_do_not_repeat_each_others_ids() -> None:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_ids_in_child, args=(queue,)) for _ in range(2)]
    for child in children:
        child.start()
    batches = [queue.get(timeout=30) for _ in children]
    for child in children:
        child.join()
    mine = [new_id(1.0) for _ in range(100)]
    assert len(set(batches[0]) | set(batches[1]) | set(mine)) == 300


def test_making_ids_leaves_the_global_random_state_alone() -> None:
    import random

    random.seed(7)
    expected = random.random()
    random.seed(7)
    new_id()
    assert random.random() == expected


def test_new_envelope_is_the_envelope_the_class_builds() -> None:
    """The trainer's fast constructor gives a true, frozen Envelope equal to Envelope(...)."""
    from bus.envelope import new_envelope

    env = new_envelope("ITERATION_COMPLETED", "run-1", "trainer:0", {"count": 1}, 2, 3)
    assert type(env) is Envelope
    assert env == Envelope(
        "ITERATION_COMPLETED", "run-1", "trainer:0", {"count": 1}, 2, 3, id=env.id, ts=env.ts
    )
    assert len(env.id) == 26 and env.sig is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.epoch = 5  # type: ignore[misc]


def test_ids_of_consecutive_milliseconds_keep_their_own_time() -> None:
    """The cached time prefix follows the clock: each id decodes to its own millisecond."""
    first, second = new_id(1000.000), new_id(1000.001)
    assert (decode_ulid_ms(first), decode_ulid_ms(second)) == (1_000_000, 1_000_001)
    assert new_id(1000.000)[:10] == first[:10]
