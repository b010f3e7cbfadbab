"""Barrier mode: a distributed early stop lands at exactly the epoch of an in-process one."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import Engine, Events
from trainer.bridge import BusRun
from trainer.handlers import EarlyStopping
from trainer.metrics import Average

from ._bus import TOPICS, BusClient, control, heartbeats, joined, vote, wait_until
from ._voter import patience_voter

ROOT = Path(__file__).resolve().parents[2]
# Validation scores by epoch: with patience 2 the rule stops after epoch 5 (0-indexed).
SCORES = [0.50, 0.60, 0.58, 0.61, 0.605, 0.60, 0.59, 0.70, 0.71, 0.72]
STEPS_PER_EPOCH = 4
HANG_GUARD = 60.0  # barrier_timeout of the tests: reached only if something is broken


def trainer_and_evaluator(scores: list[float]) -> tuple[Engine, Engine]:
    """A trainer validated after each epoch by an evaluator whose score is scores[epoch]."""
    trainer = Engine(lambda engine, batch: 0.0)
    evaluator = Engine(lambda engine, batch: batch)
    evaluator.add_metric(Average(), "score")
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda engine: evaluator.run([scores[engine.state.epoch]]),
        priority=100,
    )
    return trainer, evaluator


def in_process_stop(scores: list[float], patience: int) -> tuple[int, int, int]:
    """(epoch, iteration, epochs completed) where an in-process EarlyStopping stops."""
    trainer, evaluator = trainer_and_evaluator(scores)
    stopper = EarlyStopping(patience, lambda engine: engine.state.metrics["score"], trainer)
    evaluator.add_event_handler(Events.COMPLETED, stopper)
    trainer.run(range(STEPS_PER_EPOCH), max_epochs=len(scores))
    return trainer.state.epoch, trainer.state.iteration, trainer.state_dict()["epochs_completed"]


def registered(client: BusClient, run_id: str, *names: str) -> None:
    """Wait until each of `names` has sent WORKER_JOINED on the run's control topic."""

    def joined_names() -> set[str]:
        envs = client.read(TOPICS.control(run_id))
        return {env.data["name"] for env in envs if env.type == "WORKER_JOINED"}

    wait_until(lambda: set(names) <= joined_names(), f"{names} to join")


@pytest.mark.parametrize(
    ("policy", "voters"),
    [("any", ["early-stop"]), ("all", ["es-a", "es-b"]), ("majority", ["m1", "m2", "m3"])],
)
def test_a_barrier_stops_at_the_epoch_of_in_process_early_stopping(
    policy: str, voters: list[str], bus_url: str, client: BusClient, run_id: str
) -> None:
    expected = in_process_stop(SCORES, patience=2)
    assert expected[0] < len(SCORES) - 1  # the scores do make it stop early

    voting = [client.spawn(patience_voter(run_id, name, patience=2)) for name in voters]
    registered(client, run_id, *voters)
    trainer, evaluator = trainer_and_evaluator(SCORES)
    run = BusRun(bus_url, run_id, policy=policy, barrier=True, barrier_timeout=HANG_GUARD)
    run.attach(trainer)
    run.attach(evaluator, "val")
    with run:
        trainer.run(range(STEPS_PER_EPOCH), max_epochs=len(SCORES))
    end = run.finish()

    state = trainer.state
    assert (state.epoch, state.iteration, trainer.state_dict()["epochs_completed"]) == expected
    assert (end.status, end.epochs, end.iteration) == ("terminated", expected[2], expected[1])
    assert end.by in voters and "did not improve in 2 evaluations" in end.reason
    assert [b.epoch for b in run.barriers] == list(range(expected[0] + 1))
    assert not any(b.timed_out or b.missing for b in run.barriers)
    assert all(b.voters == tuple(sorted(voters)) for b in run.barriers)
    for cast in (future.result(HANG_GUARD) for future in voting):
        assert cast == [False] * expected[0] + [True]


def test_a_voter_that_stops_heartbeating_stops_holding_the_barrier(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    control_topic = TOPICS.control(run_id)
    client.append(control_topic, joined(run_id, "dies"), joined(run_id, "lives"))
    dying = client.spawn(heartbeats(run_id, "dies"))
    living = client.spawn(heartbeats(run_id, "lives"))
    trainer = Engine(lambda engine, batch: 0.0)
    run = BusRun(
        bus_url,
        run_id,
        policy="all",
        barrier=True,
        barrier_timeout=HANG_GUARD,
        heartbeat_timeout=1.0,
    )
    run.attach(trainer)

    def epoch_end(engine: Engine) -> None:
        dying.cancel()  # "dies" never votes and from now on sends nothing
        client.append(control_topic, vote(run_id, "lives", True, engine.state.epoch, "enough"))

    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), epoch_end)
    try:
        with run:
            trainer.run(range(3), max_epochs=5)
    finally:
        living.cancel()
    end = run.finish()

    (barrier,) = run.barriers
    assert (barrier.dropped, barrier.voters, barrier.timed_out) == (("dies",), ("lives",), False)
    assert (end.status, end.by, end.reason, end.epochs) == ("terminated", "lives", "enough", 1)


VOTER_PROCESS = """
import asyncio, sys
from bus import Envelope, Topics, encode, open_bus

async def main(url, run_id, name):
    bus = open_bus(url)
    topic = Topics().control(run_id)
    data = {"kind": "test", "name": name}
    joined = Envelope("WORKER_JOINED", run_id, name, {**data, "votes": True})
    await bus.append(topic, [encode(joined)])
    while True:
        await bus.append(topic, [encode(Envelope("HEARTBEAT", run_id, name, data))])
        await asyncio.sleep(0.05)

asyncio.run(main(*sys.argv[1:]))
"""


def test_a_sigkilled_voter_process_stops_holding_the_barrier(redis_url: str, run_id: str) -> None:
    client = BusClient(redis_url)
    voter = subprocess.Popen(
        [sys.executable, "-c", VOTER_PROCESS, redis_url, run_id, "doomed"], cwd=ROOT
    )
    try:
        registered(client, run_id, "doomed")
        client.append(TOPICS.control(run_id), joined(run_id, "survivor"))
        living = client.spawn(heartbeats(run_id, "survivor"))
        trainer = Engine(lambda engine, batch: 0.0)
        run = BusRun(
            redis_url,
            run_id,
            policy="all",
            barrier=True,
            barrier_timeout=HANG_GUARD,
            heartbeat_timeout=1.0,
        )
        run.attach(trainer)

        def epoch_end(engine: Engine) -> None:
            os.kill(voter.pid, signal.SIGKILL)
            voter.wait(HANG_GUARD)
            ballot = vote(run_id, "survivor", True, engine.state.epoch, "plateau")
            client.append(TOPICS.control(run_id), ballot)

        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), epoch_end)
        try:
            with run:
                trainer.run(range(3), max_epochs=5)
        finally:
            living.cancel()
    finally:
        voter.kill()
        voter.wait(HANG_GUARD)
        client.close()

    (barrier,) = run.barriers
    assert (barrier.dropped, barrier.voters, barrier.timed_out) == (
        ("doomed",),
        ("survivor",),
        False,
    )
    end = run.finish()
    assert (end.status, end.by, end.reason, end.epochs) == ("terminated", "survivor", "plateau", 1)


def test_terminate_ends_a_barrier_wait_at_once(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    control_topic = TOPICS.control(run_id)
    client.append(control_topic, joined(run_id, "never-votes"))
    beating = client.spawn(heartbeats(run_id, "never-votes"))
    trainer = Engine(lambda engine, batch: 0.0)
    run = BusRun(bus_url, run_id, barrier=True, barrier_timeout=HANG_GUARD)
    run.attach(trainer)
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED(once=1),
        lambda _: client.append(
            control_topic, control(run_id, "TERMINATE", {"reason": "x"}, "ops")
        ),
    )
    try:
        with run:
            trainer.run(range(3), max_epochs=5)
    finally:
        beating.cancel()
    (barrier,) = run.barriers
    assert barrier.interrupted and barrier.missing == ("never-votes",)
    end = run.finish()
    assert (end.status, end.by, end.epochs) == ("terminated", "ops", 1)


def test_a_barrier_that_times_out_tallies_the_votes_it_has(
    bus_url: str, client: BusClient, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    client.append(TOPICS.control(run_id), joined(run_id, "slow"))
    beating = client.spawn(heartbeats(run_id, "slow"))
    trainer = Engine(lambda engine, batch: 0.0)
    run = BusRun(bus_url, run_id, barrier=True, barrier_timeout=0.2)
    run.attach(trainer)
    try:
        with caplog.at_level(logging.WARNING, logger="trainer.bridge"), run:
            trainer.run(range(3), max_epochs=2)
    finally:
        beating.cancel()
    assert [(b.timed_out, b.missing, b.tally.stop) for b in run.barriers] == [
        (True, ("slow",), False)
    ] * 2
    assert [b.epoch for b in run.barriers] == [0, 1]  # the wire's 0-based epochs
    timed_out = [r.getMessage() for r in caplog.records if "timed out" in r.getMessage()]
    assert [m.split(" timed out")[0] for m in timed_out] == [
        "barrier after epoch 1/2",
        "barrier after epoch 2/2",
    ]
    assert run.finish().status == "completed"


def test_in_barrier_mode_votes_wait_for_the_barrier(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    control_topic = TOPICS.control(run_id)
    client.append(control_topic, joined(run_id, "v"))
    beating = client.spawn(heartbeats(run_id, "v"))
    trainer = Engine(lambda engine, batch: 0.0)
    run = BusRun(bus_url, run_id, barrier=True, barrier_timeout=HANG_GUARD)
    run.attach(trainer)

    def vote_mid_epoch(engine: Engine) -> None:
        last = client.append(control_topic, vote(run_id, "v", True, 0, "stop at the barrier"))[-1]
        wait_until(lambda: run.control.last_id == last, "the vote to be read")
        assert run.control.stop is None

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2), vote_mid_epoch)
    try:
        with run:
            trainer.run(range(5), max_epochs=3)
    finally:
        beating.cancel()
    end = run.finish()
    assert (end.status, end.by, end.iteration, end.epochs) == ("terminated", "v", 5, 1)


def test_without_voters_a_barrier_does_not_wait(bus_url: str, run_id: str) -> None:
    trainer = Engine(lambda engine, batch: 0.0)
    run = BusRun(bus_url, run_id, barrier=True, barrier_timeout=HANG_GUARD)
    run.attach(trainer)
    with run:
        trainer.run(range(2), max_epochs=3)
    assert [(b.voters, b.timed_out) for b in run.barriers] == [((), False)] * 3
    assert run.finish().status == "completed"
