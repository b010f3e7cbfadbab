"""The monitor's state model, fed hand-built envelopes (no bus, no rich)."""

from __future__ import annotations

import pytest
from monitor_envelopes import (
    T0,
    env,
    epoch_completed,
    finished,
    metrics,
    saved,
    started,
    step,
    vote,
    worker,
)

from bus import DEAD_LETTER
from workers.monitor.state import CONTROL, DEAD_LETTERS, EVENTS, MonitorState


def fed(*envelopes, kind: str = EVENTS, state: MonitorState | None = None) -> MonitorState:
    state = state or MonitorState("r1")
    for e in envelopes:
        state.feed(kind, e)
    return state


def test_progress_rate_and_eta_come_from_envelope_times_and_the_learnt_epoch_length() -> None:
    # 4 epochs; 10 steps of the first epoch, 0.1 s apart: 10 it/s, and the epoch is 10 long.
    events = [started(epochs=4)]
    events += [step("r1", i, 0, T0 + 0.1 * i, 1.0) for i in range(1, 11)]
    state = fed(*events)
    (rank,) = state.ranks.values()
    assert rank.rate() == pytest.approx(10.0)
    assert state.epoch_length is None and state.eta(rank) is None  # the length is not known yet
    state.feed(EVENTS, epoch_completed("r1", "train", 0, 10, T0 + 1.0, {"loss": 1.0}))
    assert state.epoch_length == 10
    assert state.total_iterations == 40
    assert state.eta(rank) == pytest.approx(30 / 10.0)  # 30 iterations left at 10 it/s
    assert (rank.epoch, rank.iteration, rank.host) == (0, 10, "host0")


def test_the_configured_epoch_length_wins_and_a_resumed_run_learns_the_same_length() -> None:
    state = fed(started(epochs=5, epoch_length=7))
    assert state.total_iterations == 35
    # Resumed at iteration 20 (epoch 2 of length 10): its first epoch ends at iteration 30.
    resumed = fed(
        started(epochs=5, iteration=20, epoch=2, resumed_from="/ckpt/checkpoint_20.pt"),
        epoch_completed("r1", "train", 2, 30, T0 + 1, {"loss": 0.5}),
    )
    assert resumed.epoch_length == 10
    assert resumed.ranks["trainer:0"].resumed_from == "/ckpt/checkpoint_20.pt"


def test_metrics_come_from_the_aggregator_when_present_else_from_epoch_completed() -> None:
    state = fed(
        started(),
        epoch_completed("r1", "val", 0, 5, T0 + 1, {"accuracy": 0.5, "loss": 2.0}),
        epoch_completed("r1", "val", 1, 10, T0 + 2, {"accuracy": 0.6, "loss": 1.5}),
    )
    assert state.metrics["val"].source == "EPOCH_COMPLETED"
    assert state.metrics["val"].series() == {
        "accuracy": [(0, 0.5), (1, 0.6)],
        "loss": [(0, 2.0), (1, 1.5)],
    }
    # The aggregator's values (over every rank) replace the trainer's own, epoch by epoch.
    fed(
        metrics("r1", "val", 0, T0 + 1.1, {"accuracy": 0.55}),
        env("METRICS", {"split": "val", "epoch": 1, "values": {"accuracy": 9.0}, "running": True}),
        state=state,
    )
    assert state.metrics["val"].source == "METRICS"
    assert state.metrics["val"].series() == {"accuracy": [(0, 0.55)]}  # running values left out


def test_with_several_ranks_the_lowest_ranks_epoch_metrics_are_shown() -> None:
    state = fed(
        started(rank=1, world_size=2),
        started(rank=0, world_size=2),
        epoch_completed("r1", "train", 0, 5, T0 + 1, {"loss": 1.1}, rank=1),
        epoch_completed("r1", "train", 0, 5, T0 + 1, {"loss": 1.0}, rank=0),
    )
    assert state.metrics["train"].series() == {"loss": [(0, 1.0)]}
    assert sorted(r.rank for r in state.ranks.values()) == [0, 1]


def test_workers_heartbeats_votes_and_leaving() -> None:
    state = fed(
        started(heartbeat_timeout=10.0),
        kind=EVENTS,
    )
    fed(
        worker("WORKER_JOINED", "es-1", "early-stop", T0, votes=True, heartbeat=2.0),
        worker("WORKER_JOINED", "ckpt", "checkpoint", T0 + 1, votes=False),
        worker("HEARTBEAT", "es-1", "early-stop", T0 + 4),
        vote("es-1", False, 0, "improved", T0 + 5),
        vote("es-1", True, 1, "no improvement for 1 epoch", T0 + 6),
        worker("WORKER_LEFT", "ckpt", "checkpoint", T0 + 7),
        kind=CONTROL,
        state=state,
    )
    es, ckpt = state.workers["es-1"], state.workers["ckpt"]
    assert (es.kind, es.votes, es.left, es.heartbeat) == ("early-stop", True, False, 2.0)
    assert (es.vote.stop, es.vote.epoch, es.vote.reason) == (True, 1, "no improvement for 1 epoch")
    assert es.age(T0 + 8) == pytest.approx(2.0)
    assert (ckpt.kind, ckpt.votes, ckpt.left, ckpt.vote) == ("checkpoint", False, True, None)
    assert [w.name for w in state.live_workers(T0 + 8)] == ["es-1"]
    assert state.live_workers(T0 + 6 + 10.5) == []  # silent longer than bus.heartbeat_timeout


def test_checkpoints_kept_follow_saved_and_pruned_and_aliases_move() -> None:
    ready = env("CHECKPOINT_READY", {"path": "/in/c10.pt"}, iteration=10, ts=T0 + 2)
    state = fed(
        started(),
        saved("r1", "/ck/c5.pt", 0, 5, ["latest", "best"], score=0.5, ts=T0 + 1),
        ready,
    )
    assert list(state.pending_ready) == [ready.id]
    fed(saved("r1", "/ck/c10.pt", 1, 10, ["latest"], ready_id=ready.id, ts=T0 + 3), state=state)
    assert state.pending_ready == {}
    kept = {c.name: c.aliases for c in state.checkpoints.values()}
    assert kept == {"c5.pt": ["best"], "c10.pt": ["latest"]}
    fed(saved("r1", "/ck/c15.pt", 2, 15, ["latest", "best"], ts=T0 + 4), state=state)
    pruned = env("CHECKPOINT_PRUNED", {"path": "/ck/c5.pt", "aliases": []}, source="ckpt-w")
    fed(pruned, state=state)
    kept = {c.name: c.aliases for c in state.checkpoints.values()}
    assert kept == {"c10.pt": [], "c15.pt": ["latest", "best"]}
    assert state.checkpoints["/ck/c15.pt"].epoch == 2


def test_the_run_is_finished_once_every_rank_said_so_and_a_resume_runs_again() -> None:
    state = fed(started(rank=0, world_size=2), started(rank=1, world_size=2))
    assert state.status == "running"
    done = finished("r1", "terminated", "val accuracy did not improve", "es-1", 2, 10, T0 + 5)
    state.feed(EVENTS, done)
    assert not state.finished and state.status == "running"  # rank 1 still trains
    state.feed(EVENTS, env("RUN_FINISHED", dict(done.data), source="trainer:1", ts=T0 + 5))
    assert state.finished
    assert state.status == "terminated"
    assert (state.finish["by"], state.finish["reason"]) == ("es-1", "val accuracy did not improve")
    state.feed(EVENTS, started(rank=0, world_size=2, ts=T0 + 9, resumed_from="/ck/c10.pt"))
    assert not state.finished and state.status == "running"


def test_only_the_runs_dead_letters_are_counted_with_the_last_reason() -> None:
    state = MonitorState("r1")
    letters = [
        env(DEAD_LETTER, {"reason": "handler failed", "topic": "trainer:run:r1:events"}),
        # undecodable: no run id, but it came from this run's control topic
        env(
            DEAD_LETTER,
            {"reason": "undecodable: not msgpack", "topic": "trainer:run:r1:control"},
            run="",
        ),
        env(DEAD_LETTER, {"reason": "other run", "topic": "trainer:run:r2:events"}, run="r2"),
        env(DEAD_LETTER, {"reason": "no topic"}, run=""),
    ]
    fed(*letters, kind=DEAD_LETTERS, state=state)
    assert state.dead_letters.count == 2
    assert state.dead_letters.last_reason == "undecodable: not msgpack"


def test_malformed_data_and_other_runs_are_ignored_never_fatal() -> None:
    state = fed(started(epochs=3))
    junk = [
        env(
            "RUN_STARTED", {"config": "nope", "world_size": "two", "rank": None}, source="trainer:x"
        ),
        env("ITERATION_COMPLETED", {"split": "train", "outputs": [1, 2]}),
        env("ITERATION_COMPLETED", {"split": "train", "outputs": {"loss": "high", "acc": True}}),
        env("EPOCH_COMPLETED", {"split": 3, "metrics": {"loss": 1.0}}),
        env("EPOCH_COMPLETED", {"split": "train", "metrics": None}),
        env("METRICS", {"split": "val", "epoch": "1", "values": {"a": 1.0}}),
        env("CHECKPOINT_SAVED", {"path": None, "aliases": "latest"}),
        env("CHECKPOINT_SAVED", {"path": "/ck/a.pt", "aliases": "latest", "epoch": "x"}),
        env("RUN_FINISHED", {"status": 7}),
        env("RUN_FINISHED", {"status": "completed"}, run="other"),
    ]
    fed(*junk, state=state)
    control = [
        env("VOTE", {"stop": "yes", "epoch": "1"}, source="v"),
        env("WORKER_JOINED", {"kind": 3, "name": None}, source="w"),
        env("HEARTBEAT", {}, source="w"),
    ]
    fed(*control, kind=CONTROL, state=state)
    state.note_undecodable(EVENTS, "not msgpack")
    assert state.undecodable == {EVENTS: 1}
    assert (
        state.checkpoints["/ck/a.pt"].aliases == [] and state.checkpoints["/ck/a.pt"].epoch is None
    )
    assert state.workers["v"].vote.stop is False
    assert state.max_epochs == 3  # rank 0's config kept
    assert {r.source for r in state.ranks.values()} == {"trainer:0", "trainer:x"}


def test_a_terminate_on_the_control_topic_is_a_request_on_the_events_topic_an_event() -> None:
    state = fed(started(), env("TERMINATE", {"split": "train"}))
    assert state.terminate_requests == []
    fed(env("TERMINATE", {"reason": "by hand"}, source="ops"), kind=CONTROL, state=state)
    assert state.terminate_requests == [("ops", "by hand")]


def test_a_worker_heard_of_no_more_for_the_heartbeat_timeout_is_gone_until_heard_again() -> None:
    # bus.heartbeat_timeout 3 s in the run's config: the trainer stops counting the worker then.
    state = fed(started(heartbeat_timeout=3.0))
    joined = worker("WORKER_JOINED", "b-1", "budget", T0, votes=True, heartbeat=1.0)
    fed(joined, worker("HEARTBEAT", "b-1", "budget", T0 + 1), kind=CONTROL, state=state)
    fed(worker("WORKER_JOINED", "ck", "checkpoint", T0), kind=CONTROL, state=state)
    fed(worker("WORKER_LEFT", "ck", "checkpoint", T0 + 1), kind=CONTROL, state=state)
    b1, ck = state.workers["b-1"], state.workers["ck"]
    assert state.worker_status(b1, T0 + 4) == "live"  # 3 s since its last heartbeat: counted
    assert state.worker_status(b1, T0 + 4.5) == "gone"
    assert state.worker_status(b1, T0 + 3600) == "gone"  # and stays so (killed: no goodbye)
    assert state.worker_status(ck, T0 + 3600) == "left"
    assert state.live_workers(T0 + 4.5) == []
    fed(worker("HEARTBEAT", "b-1", "budget", T0 + 5), kind=CONTROL, state=state)
    assert state.worker_status(b1, T0 + 5.5) == "live"  # back (a stalled host, not a dead one)
    # Without bus.heartbeat_timeout in the config: the trainer's default, 10 s.
    default = fed(started(heartbeat_timeout=None))
    fed(joined, kind=CONTROL, state=default)
    assert default.heartbeat_timeout == 10.0
    assert default.worker_status(default.workers["b-1"], T0 + 10) == "live"
    assert default.worker_status(default.workers["b-1"], T0 + 10.5) == "gone"


def test_only_the_runs_own_envelopes_concern_it_another_runs_dead_letter_does_not() -> None:
    state = MonitorState("r1")
    assert state.concerns(EVENTS, started("r1"))
    assert not state.concerns(EVENTS, started("r2"))
    assert state.concerns(CONTROL, worker("HEARTBEAT", "w", "budget", T0))
    ours = env(DEAD_LETTER, {"reason": "x", "topic": "trainer:run:r1:control"}, run="")
    theirs = env(DEAD_LETTER, {"reason": "x", "topic": "trainer:run:r2:events"}, run="r2")
    assert state.concerns(DEAD_LETTERS, ours) and not state.concerns(DEAD_LETTERS, theirs)
