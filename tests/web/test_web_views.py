"""What the run page and the runs list are sent for a run the bus knows, from a MonitorState fed
hand-built envelopes (no server): epochs counted from 1 in every row, and liveness as the
monitor judges it."""

from __future__ import annotations

from typing import Any

from bus import Envelope
from workers.monitor.state import CONTROL, EVENTS, MonitorState
from workers.web.views import bus_listing_row, live_run

T0 = 1_700_000_000.0
RUN = "r1"


def envelope(type: str, data: dict[str, Any], source: str = "trainer:0", **kw: Any) -> Envelope:
    """One envelope of RUN (epoch and iteration 0 unless given)."""
    epoch, iteration = kw.get("epoch", 0), kw.get("iteration", 0)
    return Envelope(type, RUN, source, data, epoch, iteration, ts=kw["ts"])


def stopped_mid_epoch() -> MonitorState:
    """A 3-epoch run stopped at iteration 7, in its second epoch (epoch 1 on the wire), after
    one epoch completed; a voter voted stop on that epoch and a budget worker went silent."""
    config = {"run": {"name": "d"}, "train": {"epochs": 3, "epoch_length": 5}}
    config["bus"] = {"heartbeat_timeout": 2.0}
    started = {"config": config, "rank": 0, "world_size": 1, "host": "vm", "pid": 1}
    finish = {"status": "terminated", "reason": "enough", "by": "web", "epochs": 1, "iteration": 7}
    saved = {"path": "/ck/c7.pt", "epoch": 1, "iteration": 7, "aliases": ["latest"], "score": None}
    events = [
        envelope("RUN_STARTED", started, ts=T0),
        envelope("ITERATION_COMPLETED", {"split": "train"}, epoch=1, iteration=7, ts=T0 + 1),
        envelope("CHECKPOINT_SAVED", saved, source="ck", ts=T0 + 1.5),
        envelope("RUN_FINISHED", finish, epoch=1, iteration=7, ts=T0 + 2),
    ]
    control = [
        envelope("WORKER_JOINED", {"kind": "budget", "name": "b-1", "votes": True}, "b-1", ts=T0),
        envelope("VOTE", {"stop": True, "reason": "r", "voter": "b-1", "epoch": 1}, "b-1", ts=T0),
        envelope("WORKER_JOINED", {"kind": "early-stop", "name": "es"}, "es", ts=T0),
        envelope("HEARTBEAT", {"kind": "early-stop", "name": "es"}, "es", ts=T0 + 9),
    ]
    state = MonitorState(RUN)
    for e in events:
        state.feed(EVENTS, e)
    for e in control:
        state.feed(CONTROL, e)
    return state


def test_epochs_are_counted_from_1_in_every_row_and_the_runs_list() -> None:
    state = stopped_mid_epoch()
    view = live_run(state, now=T0 + 10)
    assert [r["epoch"] for r in view["ranks"]] == [2]  # the epoch it stopped in
    assert [c["epoch"] for c in view["checkpoints"]] == [2]
    votes = {w["name"]: w["vote"] for w in view["workers"]}
    assert votes["b-1"]["epoch"] == 2
    assert view["finish"]["epochs"] == 1  # a count of completed epochs, as the wire has it
    registry = MonitorState(RUN)  # the runs list knows a run from the registry alone
    for e in (
        envelope("RUN_STARTED", {"config": {}, "rank": 0}, ts=T0),
        envelope("RUN_FINISHED", {"status": "terminated", "epochs": 1}, epoch=1, ts=T0 + 2),
    ):
        registry.feed(EVENTS, e)
    assert bus_listing_row(registry, None)["epochs"] == 2
    assert bus_listing_row(registry, state)["epochs"] == 2


def test_a_worker_silent_past_the_heartbeat_timeout_is_gone_with_its_silence() -> None:
    view = live_run(stopped_mid_epoch(), now=T0 + 10)
    assert view["heartbeat_timeout"] == 2.0
    shown = [(w["name"], w["state"], w["age"]) for w in view["workers"]]
    assert shown == [("es", "live", 1.0), ("b-1", "gone", 10.0)]  # live ones first
