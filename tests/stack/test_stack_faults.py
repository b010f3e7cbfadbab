"""Scenarios 7 and 8 of the stack: garbage on the topics, and a Redis restart mid-run."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgpack
import pytest
from redis_server import RedisServer
from stack_harness import Stack, eventually

from bus import DEAD_LETTER, Topics

GARBAGE = [
    b"\xc1 not msgpack at all",
    msgpack.packb({"v": 1, "type": "VOTE"}),  # a map, but not an envelope
    msgpack.packb({"v": 99, "id": "x"}),  # a schema version nobody knows
]


def test_garbage_on_both_topics_is_dead_lettered_and_everyone_keeps_running(
    stack: Stack,
) -> None:
    config = stack.config(
        data={"name": "slow_digits:build"},
        train={"epochs": 3},
        early_stopping={"patience": 5},
        extra={"batch_delay": 0.005},
    )
    kinds = ["metrics", "checkpoint", "early-stop", "nan-guard"]
    workers = [stack.worker(kind, "junk") for kind in kinds]
    trainer = stack.trainer(config, "junk")
    eventually(lambda: stack.events("junk", "ITERATION_COMPLETED"), what="training to start")
    raw = stack.raw()
    for payload in GARBAGE:
        raw.xadd(stack.topics.events("junk"), {"env": payload})
        raw.xadd(stack.topics.control("junk"), {"env": payload})
    raw.xadd(stack.topics.events("junk"), {"something": b"else"})  # no env field at all

    trainer.succeeded()
    for w in workers:
        w.succeeded()
    finished = stack.finished("junk")
    assert finished.data["status"] == "completed"
    metrics = [e for e in stack.events("junk", "METRICS") if e.data["split"] == "val"]
    assert sorted(e.data["epoch"] for e in metrics) == [0, 1, 2]

    dead = stack.envelopes(Topics().dead_letter())
    assert all(e.type == DEAD_LETTER for e in dead)
    by_group: dict[str, set[bytes]] = {}
    for e in dead:
        by_group.setdefault(e.data["group"], set()).add(e.data["payload"])
    # Every worker kind dead-lettered the events garbage through its own group (a voter's
    # group is its own, "<kind>:<name>": every voter must see every epoch)...
    for kind in kinds:
        [group] = [g for g in by_group if g == kind or g.startswith(f"{kind}:")]
        assert by_group[group] == {*GARBAGE, b""}, kind
    # ...and the trainer the control garbage.
    trainer_groups = [g for g in by_group if g.startswith("trainer")]
    assert trainer_groups and by_group[trainer_groups[0]] == set(GARBAGE)


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A private Redis of this test alone, with an append-only file so a restart keeps data."""
    server = RedisServer(durable=True).start()
    yield server
    server.close()


def test_a_redis_restart_mid_run_loses_and_repeats_nothing(
    durable_redis: RedisServer, tmp_path
) -> None:
    stack = Stack(durable_redis.url, tmp_path)
    try:
        config = stack.config(
            data={"name": "slow_digits:build"},
            train={"epochs": 4},
            early_stopping={"patience": None},
            extra={"batch_delay": 0.02},
        )
        run_dir = tmp_path / "restart"
        workers = [stack.worker(kind, "rr") for kind in ("metrics", "checkpoint")]
        trainer = stack.trainer(config, "rr", "--run-dir", run_dir)
        eventually(
            lambda: [e for e in stack.events("rr", "METRICS") if e.data["split"] == "val"],
            what="the first epoch's METRICS",
        )
        durable_redis.stop()  # a clean restart: the append-only file keeps what was written
        time.sleep(1.5)  # the trainer trains on meanwhile, its publisher keeping an outbox
        durable_redis.start()
        trainer.succeeded()
        for w in workers:
            w.succeeded()

        events = stack.events("rr")
        ids = [e.id for e in events]
        assert len(ids) == len(set(ids)), "an envelope arrived twice"
        iterations = [
            e.iteration
            for e in events
            if e.type == "ITERATION_COMPLETED" and e.data["split"] == "train"
        ]
        assert iterations == list(range(1, 4 * 23 + 1)), "iterations lost or out of order"
        for split in ("train", "val"):
            epochs = [
                e.data["epoch"] for e in events if e.type == "METRICS" and e.data["split"] == split
            ]
            assert sorted(epochs) == [0, 1, 2, 3], split
        ready = [e.id for e in events if e.type == "CHECKPOINT_READY"]
        saved = [e.data["ready_id"] for e in events if e.type == "CHECKPOINT_SAVED"]
        assert sorted(saved) == sorted(ready) and len(ready) == 4
        assert stack.finished("rr").data["status"] == "completed"
    finally:
        stack.close()
