"""Scenarios 1, 2, 6 and 9 of the stack: metrics aggregated by a worker process, stops by votes.

Each test runs `trainer run --bus` and `trainer worker KIND` as separate processes on a private
Redis, as a deployment does, and reads the run back from its streams.
"""

from __future__ import annotations

import json
import re

import pytest
from stack_harness import HERE, Stack, eventually

from bus import Envelope, decode, encode, sign
from trainer.engine import Engine
from trainer.handlers import EarlyStopping

pytestmark = pytest.mark.heavy(130)  # seconds in the suite: scheduled first

EPOCH = 23  # iterations per digits epoch (1437 training samples, batches of 64)


def printed_outputs(out: str) -> str:
    """The run directory `trainer run` printed (`outputs: DIR`)."""
    match = re.search(r"^outputs: (.+)$", out, re.MULTILINE)
    assert match, out
    return match.group(1)


def epoch_metrics(stack: Stack, run_id: str, split: str) -> dict[int, dict[str, float]]:
    """The in-process metrics the trainer published at each EPOCH_COMPLETED of a split."""
    return {
        e.epoch: e.data["metrics"]
        for e in stack.events(run_id, "EPOCH_COMPLETED")
        if e.data["split"] == split
    }


def aggregated(stack: Stack, run_id: str, split: str) -> dict[int, dict[str, float]]:
    """The values the metrics worker published in METRICS for each epoch of a split."""
    return {
        e.data["epoch"]: e.data["values"]
        for e in stack.events(run_id, "METRICS")
        if e.data["split"] == split and not e.data.get("running")
    }


def test_the_aggregators_metrics_equal_the_in_process_ones_epoch_by_epoch(stack: Stack) -> None:
    config = stack.config(train={"epochs": 3}, early_stopping={"patience": None})
    metrics = stack.worker("metrics", "agg")
    stack.trainer(config, "agg").succeeded()
    metrics.succeeded()
    for split, names in (("train", {"loss"}), ("val", {"loss", "accuracy"})):
        published = epoch_metrics(stack, "agg", split)
        assert sorted(published) == [0, 1, 2]
        assert aggregated(stack, "agg", split) == published
        assert all(set(values) == names for values in published.values())
    ranks = {tuple(e.data["ranks"]) for e in stack.events("agg", "METRICS")}
    assert ranks == {(0,)}


def in_process_stop_epoch(scores: list[float], patience: int, min_delta: float) -> int | None:
    """The 0-indexed epoch at which Ignite-style EarlyStopping fed `scores` terminates."""
    trainer = Engine(lambda engine, batch: None)
    scores_in = iter(scores)
    stopper = EarlyStopping(patience, lambda _: next(scores_in), trainer, min_delta=min_delta)
    for epoch in range(len(scores)):
        stopper(trainer)
        if trainer.should_terminate:
            return epoch
    return None


def test_in_barrier_mode_the_voter_stops_at_the_epoch_in_process_early_stopping_does(
    stack: Stack,
) -> None:
    patience, min_delta, epochs = 2, 0.01, 15
    config = stack.config(
        train={"epochs": epochs},
        early_stopping={"patience": patience, "min_delta": min_delta},
        bus={"barrier": True},
    )
    workers = [stack.worker("metrics", "es"), stack.worker("early-stop", "es", "--name", "es-1")]
    out = stack.trainer(config, "es").succeeded()
    for w in workers:
        w.succeeded()
    finished = stack.finished("es")
    assert finished.data["status"] == "terminated", finished.data
    assert finished.data["by"] == "es-1"
    assert "stopped by es-1" in out

    # The reference: Ignite-style EarlyStopping, in process, fed the validation accuracies the
    # trainer itself computed. It must stop at the very epoch the run stopped at, no earlier.
    accuracies = epoch_metrics(stack, "es", "val")
    last = finished.data["epochs"] - 1
    assert sorted(accuracies) == list(range(last + 1))
    scores = [accuracies[epoch]["accuracy"] for epoch in range(last + 1)]
    assert in_process_stop_epoch(scores, patience, min_delta) == last
    assert last < epochs - 1  # it did stop early: the comparison is worth something
    trained = [e.epoch for e in stack.events("es", "EPOCH_STARTED") if e.data["split"] == "train"]
    assert max(trained) == last


def test_without_barrier_a_stop_vote_lands_mid_epoch(stack: Stack) -> None:
    # Slow batches (20 ms): the vote comes early in an epoch (the voter votes on the previous
    # epoch's end) and the stop must land a few iterations later, not at the epoch's end. The
    # bench measures how few (stack_overhead.py part 2); a loaded machine delays it some.
    config = stack.config(
        data={"name": "slow_digits:build"},
        train={"epochs": 5},
        early_stopping={"patience": 1, "min_delta": 0.5},
        bus={"barrier": False},
    )
    workers = [stack.worker("metrics", "nb"), stack.worker("early-stop", "nb", "--name", "es-2")]
    stack.trainer(config, "nb").succeeded()
    for w in workers:
        w.succeeded()
    finished = stack.finished("nb")
    assert (finished.data["status"], finished.data["by"]) == ("terminated", "es-2")
    # Where the trainer was when the stop vote landed: its last ITERATION_COMPLETED published
    # (its `ts`, taken when the step ended; the publisher writes them up to 0.1 s later) before
    # the vote's entry on the control stream (stream ids are the server's clock, on this host).
    raw = stack.raw()
    control = raw.xrange(stack.topics.control("nb"))
    votes = [(i, decode(f[b"env"])) for i, f in control if decode(f[b"env"]).type == "VOTE"]
    landed = next(i for i, v in votes if v.data["stop"])
    landed_ms = int(landed.split(b"-")[0])
    before = [
        env.iteration
        for env in (decode(f[b"env"]) for _, f in raw.xrange(stack.topics.events("nb")))
        if env.type == "ITERATION_COMPLETED" and env.ts * 1000 <= landed_ms
    ]
    assert finished.data["iteration"] - max(before) <= EPOCH // 2


def test_a_voter_made_of_redis_py_and_msgpack_stops_the_run_and_is_named(stack: Stack) -> None:
    config = stack.config(
        data={"name": "slow_digits:build"},
        train={"epochs": 20},
        early_stopping={"patience": None},
    )
    trainer = stack.trainer(config, "plain")
    # Its VOTE's source is not its voter name: `by` is the source, `voter` the name.
    source = "java-client:host-7"
    voter = stack.start_script(
        "voter", HERE / "plain_voter.py", stack.url, "plain", "java-voter-1", source
    )
    assert voter.wait(120) == 0, voter.output()
    out = trainer.succeeded()
    finished = stack.finished("plain")
    assert finished.data["status"] == "terminated"
    assert (finished.data["by"], finished.data["voter"]) == (source, "java-voter-1")
    assert finished.data["epochs"] < 20
    metrics = json.loads((stack.cwd / printed_outputs(out) / "metrics.json").read_text())
    assert (metrics["by"], metrics["voter"]) == (source, "java-voter-1")


def test_with_a_secret_forged_terminates_are_ignored_and_a_signed_one_obeyed(stack: Stack) -> None:
    secret = {"TRAINER_BUS_SECRET": "s3cret-shared"}
    config = stack.config(
        data={"name": "slow_digits:build"},
        train={"epochs": 6},
        early_stopping={"patience": None},
        extra={"batch_delay": 0.02},
    )
    trainer = stack.trainer(config, "sig", env=secret)
    eventually(lambda: stack.events("sig", "ITERATION_COMPLETED"), what="training to start")
    control = stack.topics.control("sig")

    def terminate(source: str) -> Envelope:
        return Envelope(type="TERMINATE", run_id="sig", source=source, data={"reason": "stop!"})

    # One run, both forgeries: an unsigned TERMINATE and one signed with the wrong secret.
    for bad in (terminate("mallory"), sign(terminate("eve"), "not-the-secret")):
        stack.raw().xadd(control, {"env": encode(bad)})
        seen = len(stack.events("sig", "ITERATION_COMPLETED"))
        eventually(
            lambda seen=seen: len(stack.events("sig", "ITERATION_COMPLETED")) > seen + 30,
            what=f"training to go on past the forged TERMINATE from {bad.source}",
        )
        assert stack.finished("sig") is None
    stack.raw().xadd(control, {"env": encode(sign(terminate("ops-console"), "s3cret-shared"))})
    trainer.succeeded()
    finished = stack.finished("sig")
    assert (finished.data["status"], finished.data["by"]) == ("terminated", "ops-console")
    assert finished.data["epochs"] < 6
    # Each ignored envelope was logged, naming its source.
    assert "mallory" in trainer.output() and "eve" in trainer.output()


def test_a_dead_voter_does_not_hold_a_barrier_past_its_heartbeat_timeout(stack: Stack) -> None:
    config = stack.config(
        data={"name": "slow_digits:build"},
        train={"epochs": 4},
        early_stopping={"patience": None},
        extra={"batch_delay": 0.01},
        # A barrier that would wait ten minutes for a vote: only the heartbeat rule frees it.
        bus={"barrier": True, "barrier_timeout": 600.0, "heartbeat_timeout": 2.0},
    )
    voter = stack.worker("budget", "dead", "--name", "doomed", "--heartbeat", "0.5")
    trainer = stack.trainer(config, "dead")
    eventually(
        lambda: [e for e in stack.envelopes(stack.topics.control("dead")) if e.type == "VOTE"],
        what="the voter's first vote",
    )
    voter.signal(9)  # SIGKILL: no WORKER_LEFT, heartbeats simply stop
    assert voter.wait() == -9
    trainer.succeeded(timeout=120)  # ten minutes per epoch if the dead voter held the barrier
    finished = stack.finished("dead")
    assert (finished.data["status"], finished.data["epochs"]) == ("completed", 4)
