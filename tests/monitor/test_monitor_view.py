"""The monitor's view: sparklines, durations, and the text a finished run renders to."""

from __future__ import annotations

import math

from monitor_envelopes import (
    T0,
    env,
    finished,
    metrics,
    saved,
    started,
    training,
    vote,
    worker,
)
from rich.console import Console

from workers.monitor.state import CONTROL, EVENTS, MonitorState
from workers.monitor.view import duration, render, sparkline


def test_sparkline_draws_lowest_to_highest_and_marks_non_finite_values() -> None:
    assert sparkline([0.0, 1.0]) == "▁█"
    assert sparkline([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == "▁▂▃▄▅▆▇█"
    assert sparkline([3.0, 3.0, 3.0]) == "▄▄▄"
    assert sparkline([0.0, math.nan, 2.0, math.inf]) == "▁·█·"
    assert sparkline(range(100), width=5) == "▁▃▅▆█"  # the last 5 values only
    assert sparkline([]) == ""


def test_durations_read_as_a_person_would_say_them() -> None:
    assert [duration(s) for s in (None, 4.4, 64, 3725)] == ["-", "4s", "1m 04s", "1h 02m"]


def text_of(state: MonitorState, now: float) -> str:
    console = Console(record=True, width=120, force_terminal=False)
    console.print(render(state, now))
    return console.export_text()


def test_a_finished_run_renders_its_progress_metrics_workers_checkpoints_and_end() -> None:
    state = MonitorState("digits-7")
    events = [
        started("digits-7", epochs=3, ts=T0),
        *training("digits-7", epochs=2, length=5, t0=T0, dt=0.1, losses=[2.0, 1.25]),
        metrics("digits-7", "val", 0, T0 + 0.6, {"accuracy": 0.5}),
        metrics("digits-7", "val", 1, T0 + 1.1, {"accuracy": 0.6}),
        saved("digits-7", "/ck/checkpoint_10.pt", 1, 10, ["latest", "best"], score=0.6, ts=T0 + 1),
        finished("digits-7", "terminated", "no improvement", "es-1", 2, 10, T0 + 1.2),
    ]
    for e in events:
        state.feed(EVENTS, e)
    control = [
        worker("WORKER_JOINED", "es-1", "early-stop", T0, run="digits-7", votes=True),
        vote("es-1", True, 1, "no improvement", T0 + 1.1, run="digits-7"),
        worker("WORKER_LEFT", "es-1", "early-stop", T0 + 1.3, run="digits-7"),
    ]
    for e in control:
        state.feed(CONTROL, e)
    text = text_of(state, T0 + 2)
    assert "run digits-7 (digits)" in text
    assert "status: terminated by es-1: no improvement (after 2 epochs, 10 iterations)" in text
    assert "2/3" in text and "10/15" in text  # epochs done of 3; iterations of 3 x 5 (learnt)
    # val accuracy from the aggregator, train loss from the trainer, each with its history
    assert "0.6000" in text and "▁█" in text and "1.2500" in text and "█▁" in text
    assert "stop @ epoch 2: no improvement" in text
    assert "checkpoint_10.pt" in text and "latest, best" in text
    assert "dead letters: 0" in text


def row_of(text: str, word: str) -> str:
    """The rendered line holding `word`."""
    return next(line for line in text.splitlines() if word in line)


def test_a_worker_not_heard_of_for_the_heartbeat_timeout_is_shown_gone_with_its_silence() -> None:
    state = MonitorState("r1")
    state.feed(EVENTS, started(heartbeat_timeout=3.0))
    for e in (
        worker("WORKER_JOINED", "b-1", "budget", T0, votes=True),
        worker("HEARTBEAT", "b-1", "budget", T0 + 1),
        worker("WORKER_JOINED", "m-1", "metrics", T0),
        worker("HEARTBEAT", "m-1", "metrics", T0 + 40),
    ):
        state.feed(CONTROL, e)
    text = text_of(state, T0 + 41)
    assert row_of(text, "b-1").split()[3:6] == ["gone", "40s", "ago"]
    assert row_of(text, "m-1").split()[2:5] == ["live", "1s", "ago"]
    assert "silent" not in text


def test_epochs_read_from_1_in_every_row_of_a_run_stopped_mid_epoch() -> None:
    # Stopped at iteration 7, in the second epoch (epoch 1 on the wire), after 1 epoch completed.
    state = MonitorState("r1")
    for e in (
        started(epochs=3, epoch_length=5),
        *training("r1", epochs=1, length=5, t0=T0, dt=0.1, losses=[2.0]),
        metrics("r1", "val", 0, T0 + 0.6, {"accuracy": 0.5}),
        env("ITERATION_COMPLETED", {"split": "train"}, epoch=1, iteration=7, ts=T0 + 0.8),
        saved("r1", "/ck/checkpoint_7.pt", 1, 7, ["latest"], ts=T0 + 0.9),
        env(
            "RUN_FINISHED",
            {"status": "terminated", "reason": "enough", "by": "web", "epochs": 1, "iteration": 7},
            epoch=1,
            iteration=7,
            ts=T0 + 0.9,
        ),
    ):
        state.feed(EVENTS, e)
    state.feed(CONTROL, vote("b-1", True, 1, "over budget", T0 + 0.85))
    text = text_of(state, T0 + 1)
    assert "(after 1 epoch, 7 iterations)" in text  # a count, not an epoch number
    assert row_of(text, "host0").split()[2:4] == ["2/3", "7/15"]  # it was in the second epoch
    assert row_of(text, "checkpoint_7.pt").split()[1:3] == ["2", "7"]
    assert "stop @ epoch 2: over budget" in text
    assert row_of(text, "accuracy").split()[2] == "1"  # the first epoch's value
