"""Control without barriers: votes, TERMINATE, signatures, stale history and garbage.

Workers are played by the test through the bus API alone: it appends control envelopes to the
run's control topic. A handler of the trainer sends them at a chosen iteration and waits until
the trainer's control reader has seen them, so that where the run stops is deterministic.
"""

from __future__ import annotations

import logging

import msgpack
import pytest

from bus import Envelope
from trainer import Engine, Events
from trainer.bridge import BusRun

from ._bus import TOPICS, BusClient, control, heartbeats, joined, types, vote, wait_until


def counting_trainer() -> Engine:
    """An engine whose step does nothing; 10 iterations per epoch over range(10)."""
    return Engine(lambda engine, batch: float(batch))


def at_iteration(engine: Engine, iteration: int, action) -> None:
    """Run `action()` in the trainer's ITERATION_COMPLETED of `iteration`."""
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=iteration), lambda _: action())


def send_and_wait_seen(client: BusClient, run: BusRun, *envs: Envelope | bytes) -> None:
    """Append to the run's control topic and wait until its reader has handled the last one."""
    last = client.append(TOPICS.control(run.run_id), *envs)[-1]
    wait_until(lambda: run.control.last_id == last, f"control entry {last} to be read")


def test_a_voter_on_the_bus_stops_the_run_and_is_named(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    trainer = counting_trainer()
    run = BusRun(bus_url, run_id)
    run.attach(trainer)
    at_iteration(
        trainer,
        3,
        lambda: send_and_wait_seen(
            client,
            run,
            joined(run_id, "early-stop-1"),
            vote(run_id, "early-stop-1", True, 0, "no improvement in 3 evaluations"),
        ),
    )
    with run:
        trainer.run(range(10), max_epochs=3)

    assert trainer.state.iteration == 3  # the first iteration boundary after the decision
    events = client.read(TOPICS.events(run_id))
    assert types(events)[-4:] == ["ITERATION_COMPLETED", "TERMINATE", "COMPLETED", "RUN_FINISHED"]
    finished = events[-1].data
    assert {k: finished[k] for k in ("status", "reason", "by", "voter", "epochs", "iteration")} == {
        "status": "terminated",
        "reason": "no improvement in 3 evaluations",
        "by": "early-stop-1",
        "voter": "early-stop-1",
        "epochs": 0,
        "iteration": 3,
    }
    assert client.read(TOPICS.registry())[-1].data["by"] == "early-stop-1"


def test_a_vote_stop_is_by_the_votes_source_and_names_the_voter_apart(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    # A client whose envelopes' source is not its voter name (DESIGN 4.1: `by` is the source).
    trainer = counting_trainer()
    run = BusRun(bus_url, run_id)
    run.attach(trainer)
    ballot = vote(run_id, "es-1", True, 0, "plateau")
    at_iteration(
        trainer,
        2,
        lambda: send_and_wait_seen(
            client,
            run,
            joined(run_id, "es-1"),
            control(run_id, "VOTE", ballot.data, "java-client:host-7"),
        ),
    )
    with run:
        trainer.run(range(10), max_epochs=3)
    end = run.finish()
    assert (end.status, end.by, end.voter, end.iteration) == (
        "terminated",
        "java-client:host-7",
        "es-1",
        2,
    )
    finished = client.read(TOPICS.events(run_id))[-1].data
    assert (finished["by"], finished["voter"]) == ("java-client:host-7", "es-1")


def test_terminate_stops_the_run_whatever_the_votes(
    bus_url: str, client: BusClient, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = counting_trainer()
    run = BusRun(bus_url, run_id, policy="all")
    run.attach(trainer)
    at_iteration(
        trainer,
        2,
        lambda: send_and_wait_seen(client, run, joined(run_id, "v"), vote(run_id, "v", False, 0)),
    )
    at_iteration(
        trainer,
        15,
        lambda: send_and_wait_seen(
            client, run, control(run_id, "TERMINATE", {"reason": "operator says so"}, "alice")
        ),
    )
    with caplog.at_level(logging.INFO, logger="trainer.bridge"), run:
        trainer.run(range(10), max_epochs=3)
    end = run.finish()
    assert (end.status, end.reason, end.by, end.iteration, end.epochs) == (
        "terminated",
        "operator says so",
        "alice",
        15,
        1,
    )
    # Text for people counts epochs from 1 (the second of three); the wire keeps epoch 1.
    assert "stopping in epoch 2/3, iteration 15" in caplog.text
    assert client.read(TOPICS.events(run_id))[-2].epoch == 1


# Each step: (voter, stop); the run must stop exactly at the step marked True.
SCRIPTS = {
    "any": [("a", True, True)],
    "majority": [("a", True, False), ("b", False, False), ("c", True, True)],
    "all": [("a", True, False), ("b", True, False), ("c", False, False), ("c", True, True)],
    2: [("a", True, False), ("a", False, False), ("b", True, False), ("c", True, True)],
}


@pytest.mark.parametrize("policy", list(SCRIPTS))
def test_each_policy_stops_at_the_vote_that_tips_it(
    policy, bus_url: str, client: BusClient, run_id: str
) -> None:
    control_topic = TOPICS.control(run_id)
    client.append(control_topic, *(joined(run_id, name) for name in "abc"))  # history
    trainer = counting_trainer()
    run = BusRun(bus_url, run_id, policy=policy, heartbeat_timeout=300)
    run.attach(trainer)
    script = SCRIPTS[policy]
    for step, (name, stop, tips) in enumerate(script, start=1):

        def act(name=name, stop=stop, tips=tips, step=step) -> None:
            send_and_wait_seen(client, run, vote(run_id, name, stop, 0, f"{name} at {step}"))
            assert (run.control.stop is not None) is tips

        at_iteration(trainer, step, act)
    with run:
        assert run.control.book.registered == {"a", "b", "c"}
        trainer.run(range(10), max_epochs=2)

    end = run.finish()
    assert (end.status, end.by, end.iteration) == ("terminated", script[-1][0], len(script))
    assert end.reason == f"{script[-1][0]} at {len(script)}"


def test_votes_of_unregistered_voters_are_ignored(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    trainer = counting_trainer()
    run = BusRun(bus_url, run_id)
    run.attach(trainer)
    at_iteration(
        trainer, 2, lambda: send_and_wait_seen(client, run, vote(run_id, "ghost", True, 0))
    )
    with run:
        trainer.run(range(10), max_epochs=2)
    assert run.finish().status == "completed"
    assert [(i.type, i.source) for i in run.control.ignored] == [("VOTE", "ghost")]
    assert "not a registered voter" in run.control.ignored[0].why


def test_commands_sent_before_the_start_are_stale_but_registrations_apply(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    client.append(
        TOPICS.control(run_id),
        joined(run_id, "old-voter"),
        vote(run_id, "old-voter", True, 0),
        control(run_id, "TERMINATE", {"reason": "meant for an earlier trainer"}, "ops"),
        control(run_id, "CHECKPOINT_REQUEST", {"reason": "old"}, "ops"),
    )
    trainer = counting_trainer()
    run = BusRun(bus_url, run_id, heartbeat_timeout=300)
    run.attach(trainer)
    with run:
        assert run.control.book.registered == {"old-voter"}
        trainer.run(range(10), max_epochs=2)
    assert run.finish().status == "completed"
    stale = [(i.type, i.why) for i in run.control.ignored]
    assert stale == [
        ("VOTE", "stale: sent before this trainer started"),
        ("TERMINATE", "stale: sent before this trainer started"),
        ("CHECKPOINT_REQUEST", "stale: sent before this trainer started"),
    ]


def test_with_a_secret_forged_signals_are_ignored_and_signed_ones_obeyed(
    bus_url: str, client: BusClient, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret"
    trainer = counting_trainer()
    run = BusRun(bus_url, run_id, secret=secret)
    run.attach(trainer)

    def forgeries() -> None:
        # Made when sent: envelopes from before the start would be stale, whatever their sig.
        signed = control(run_id, "TERMINATE", {"reason": "tampered"}, "ops", secret=secret)
        tampered = Envelope(  # a signed envelope whose source was changed afterwards
            "TERMINATE", run_id, "mallory", signed.data, id=signed.id, ts=signed.ts, sig=signed.sig
        )
        send_and_wait_seen(
            client,
            run,
            control(run_id, "TERMINATE", {"reason": "unsigned"}, "mallory"),
            control(run_id, "TERMINATE", {"reason": "forged"}, "mallory", secret="guess"),
            tampered,
        )

    def signed() -> None:
        send_and_wait_seen(
            client, run, control(run_id, "TERMINATE", {"reason": "signed"}, "ops", secret=secret)
        )

    at_iteration(trainer, 2, forgeries)
    at_iteration(trainer, 4, signed)
    with run:
        trainer.run(range(10), max_epochs=2)

    end = run.finish()
    assert (end.status, end.reason, end.by, end.iteration) == ("terminated", "signed", "ops", 4)
    ignored = [(i.source, i.why) for i in run.control.ignored]
    assert ignored == [
        ("mallory", "unsigned and a signing secret is configured"),
        ("mallory", "bad signature and a signing secret is configured"),
        ("mallory", "bad signature and a signing secret is configured"),
    ]
    logged = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert len(logged) == 3 and all("mallory" in line for line in logged)


def test_garbage_on_the_control_topic_is_dead_lettered_and_training_goes_on(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    control_topic = TOPICS.control(run_id)
    not_msgpack = b"\xc1\xc1 certainly not msgpack"
    not_an_envelope = msgpack.packb({"hello": "world"})
    bad_vote = control(run_id, "VOTE", {"stop": "yes", "reason": "", "voter": "v", "epoch": 0}, "v")
    trainer = counting_trainer()
    run = BusRun(bus_url, run_id)
    run.attach(trainer)
    at_iteration(
        trainer, 3, lambda: send_and_wait_seen(client, run, not_msgpack, not_an_envelope, bad_vote)
    )
    with run:
        trainer.run(range(10), max_epochs=2)

    assert run.finish().status == "completed" and trainer.state.iteration == 20
    letters = wait_until(
        lambda: [e for e in client.read(TOPICS.dead_letter()) if e.type == "DEAD_LETTER"],
        "the dead letters",
    )
    assert len(letters) == 3
    assert [letter.data["payload"] for letter in letters[:2]] == [not_msgpack, not_an_envelope]
    assert {letter.data["topic"] for letter in letters} == {control_topic}
    # docs/protocol.md 5.4: an undecodable entry names no run (""), found by its `topic`;
    # one that decoded keeps the run id of the original envelope.
    assert [letter.run_id for letter in letters] == ["", "", run_id]
    assert letters[0].data["reason"].startswith("undecodable: not msgpack")
    assert letters[1].data["reason"].startswith("undecodable:")
    assert letters[2].data["reason"] == (
        "rejected by the trainer: VOTE data 'stop' must be bool, got 'yes'"
    )


def test_envelopes_of_another_run_are_ignored(bus_url: str, client: BusClient, run_id: str) -> None:
    trainer = counting_trainer()
    run = BusRun(bus_url, run_id)
    run.attach(trainer)
    stray = control("other-run", "TERMINATE", {"reason": "not for you"}, "ops")
    at_iteration(trainer, 2, lambda: send_and_wait_seen(client, run, stray))
    with run:
        trainer.run(range(10))
    assert run.finish().status == "completed"
    assert run.control.ignored[0].why == "it is addressed to run 'other-run'"


def test_a_voter_that_goes_silent_stops_holding_the_run(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    # Policy all: "silent" never votes; once its heartbeat times out, "v" alone decides.
    client.append(TOPICS.control(run_id), joined(run_id, "silent"), joined(run_id, "v"))
    beating = client.spawn(heartbeats(run_id, "v"))
    trainer = counting_trainer()
    run = BusRun(bus_url, run_id, policy="all", heartbeat_timeout=1.0)
    run.attach(trainer)

    def vote_then_wait() -> None:
        send_and_wait_seen(client, run, vote(run_id, "v", True, 0, "done"))
        wait_until(lambda: run.control.stop is not None, "the silent voter to time out")

    at_iteration(trainer, 2, vote_then_wait)
    try:
        with run:
            trainer.run(range(10), max_epochs=2)
    finally:
        beating.cancel()
    end = run.finish()
    assert (end.status, end.by, end.iteration) == ("terminated", "v", 2)
