"""The monitor's view: sparklines, durations, and the text a finished run renders to."""

from __future__ import annotations

import math

from monitor_envelopes import T0, finished, metrics, saved, started, training, vote, worker
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
