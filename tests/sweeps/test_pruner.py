"""The pruner as a separate process over a private Redis, against a sweep's synthetic trials.

Trials are real Engines on real BusRuns (tests/sweeps/sweep_harness.py) whose val accuracy
follows curves written here; they obey the pruner through the trainer's own vote tally and
barrier. Expected decisions are worked out by hand from the rules' definitions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sweep_harness import ROOT, BusReader, Pruner, Trial, eventually

NAME = "pruner-under-test"


def run_through(reader: BusReader, trial: Trial, votes_before: int = 0) -> dict:
    """Release every epoch of `trial`, wait for its end; its RUN_FINISHED data."""
    trial.release()
    trial.join()
    return eventually(lambda: reader.finished(trial.run_id), f"{trial.run_id} RUN_FINISHED")


def assert_pruned(finished: dict, rung: int, epoch: int) -> None:
    """RUN_FINISHED says the pruner stopped the trial at `rung`, after `epoch` epochs."""
    assert finished["status"] == "terminated", finished
    assert finished["by"] == NAME and finished["voter"] == NAME, finished
    assert f"rung {rung} (epoch {epoch}):" in finished["reason"], finished
    assert finished["epochs"] == epoch, finished


def assert_completed(finished: dict, epochs: int) -> None:
    """RUN_FINISHED says the trial trained to its end."""
    assert finished["status"] == "completed" and finished["by"] is None, finished
    assert finished["epochs"] == epochs, finished


def decided(pruner: Pruner, trials: list[Trial]) -> list[tuple[str, str, str, str]]:
    """(trial, epoch, stop, reason) of the pruner's logged decisions on `trials`."""
    ids = {t.run_id for t in trials}
    return [
        (d["trial"], d["epoch"], d["stop"], d["reason"])
        for d in pruner.decisions()
        if d["trial"] in ids
    ]


def test_asha_prunes_the_expected_trials_and_a_restarted_pruner_decides_alike(
    redis_url: str, tmp_path: Path
) -> None:
    # ASHA, eta 2, rungs at epochs 1 and 2 (below each trial's 4 epochs). Trials one after the
    # other; at each rung the top ceil(n/2) of the n values recorded so far go on.
    reader = BusReader(redis_url)
    sweep = "s1"
    t0 = Trial(redis_url, sweep, 0, [0.50, 0.60, 0.70, 0.80])  # first at both rungs: completes
    # rung 1 {.5 .6}: keep 1, cutoff .6: goes on; rung 2 {.6 .5}: cutoff .6: stopped at rung 2
    t1 = Trial(redis_url, sweep, 1, [0.60, 0.50, 0.90, 0.90])
    # rung 1 {.6 .5 .4}: keep 2, cutoff .5: stopped at rung 1
    t2 = Trial(redis_url, sweep, 2, [0.40, 0.90, 0.90, 0.90])
    # after the restart: rung 1 {.6 .5 .45 .4}: keep 2, cutoff .5: stopped at rung 1 (a pruner
    # that had forgotten t0..t2 would let it go on: the first value at the rung)
    t3 = Trial(redis_url, sweep, 3, [0.45, 0.90, 0.90, 0.90])
    # rung 1 {.7 .6 .5 .45 .4}: keep 3, cutoff .5: goes on; rung 2 holds t0 .6 and t1 .5
    # (t2, t3 stopped at rung 1): {.6 .55 .5}, keep 2, cutoff .55, a tie: goes on, completes
    t4 = Trial(redis_url, sweep, 4, [0.70, 0.55, 0.90, 0.90])
    args = ["--sweep", sweep, "--rule", "asha", "--reduction-factor", "2", "--name", NAME]
    args += ["--heartbeat", "0.2", "--claim-idle", "1"]

    t0.start()  # its RUN_STARTED makes the sweep known; its first epoch waits for the pruner
    first = Pruner(redis_url, tmp_path / "pruner-1.log", *args)
    second = None
    try:
        eventually(lambda: reader.joined(t0.run_id, NAME), "the pruner joining trial 0")
        assert_completed(run_through(reader, t0), 4)
        t1.start()
        eventually(lambda: reader.joined(t1.run_id, NAME), "the pruner joining trial 1")
        assert_pruned(run_through(reader, t1), rung=2, epoch=2)
        t2.start()
        eventually(lambda: reader.joined(t2.run_id, NAME), "the pruner joining trial 2")
        assert_pruned(run_through(reader, t2), rung=1, epoch=1)
        t3.start()
        eventually(lambda: reader.joined(t3.run_id, NAME), "the pruner joining trial 3")
        before = decided(first, [t0, t1, t2])
        first.kill()  # mid-sweep: trial 3 is live and waits at its first epoch

        second = Pruner(redis_url, tmp_path / "pruner-2.log", *args, "--follow-from", "start")
        eventually(lambda: reader.joined(t3.run_id, NAME) == 2, "the restarted pruner joining")
        assert_pruned(run_through(reader, t3), rung=1, epoch=1)
        t4.start()
        eventually(lambda: reader.joined(t4.run_id, NAME), "the pruner joining trial 4")
        assert_completed(run_through(reader, t4), 4)

        # The restarted pruner rebuilt trials 0-2 from the streams: the same decisions, word
        # for word, as the pruner that watched them live.
        assert len(before) == 5, first.output()  # t0 rungs 1, 2; t1 rungs 1, 2; t2 rung 1
        assert decided(second, [t0, t1, t2]) == before, second.output()
        assert second.stop() == 0
    finally:
        for process in (first, second):
            if process is not None and process.proc.poll() is None:
                process.kill()
        for trial in (t0, t1, t2, t3, t4):
            trial.release(8)  # a trial left waiting by a failed assertion ends too


def test_median_counts_running_trials(redis_url: str, tmp_path: Path) -> None:
    # Median from epoch 1 with one other trial's value enough: trial 1 at epoch 1 is held
    # against trial 0's .5 while trial 0 is still running (no trial has finished): best .4
    # below the median .5 of 1 other trial: stopped after epoch 1.
    reader = BusReader(redis_url)
    t0 = Trial(redis_url, "s2", 0, [0.5, 0.6, 0.7]).start()
    t1 = Trial(redis_url, "s2", 1, [0.4, 0.9, 0.9]).start()
    args = ["--sweep", "s2", "--rule", "median", "--min-trials", "1", "--name", NAME]
    pruner = Pruner(redis_url, tmp_path / "pruner.log", *args, "--heartbeat", "0.2")
    try:
        eventually(lambda: reader.joined(t0.run_id, NAME), "the pruner joining trial 0")
        eventually(lambda: reader.joined(t1.run_id, NAME), "the pruner joining trial 1")
        t0.release(1)
        eventually(lambda: reader.votes(t0.run_id, NAME), "the vote on trial 0's first epoch")
        t1.release(1)
        t1.join()
        finished = eventually(lambda: reader.finished(t1.run_id), "trial 1's RUN_FINISHED")
        assert finished["status"] == "terminated" and finished["voter"] == NAME, finished
        assert finished["reason"].endswith(
            "epoch 1: best accuracy so far 0.4 below the median 0.5 of 1 other trial at this epoch"
        ), finished
        assert reader.finished(t0.run_id) is None  # trial 0 was running all along
        assert_completed(run_through(reader, t0), 3)
        assert pruner.stop() == 0
    finally:
        if pruner.proc.poll() is None:
            pruner.kill()
        for trial in (t0, t1):
            trial.release(8)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--sweep", "s3", "--reduction-factor", "1"],
            "pruner --reduction-factor 1 is not an int >= 2",
        ),
        (
            ["--sweep", "s3", "--rule", "bandit"],
            "pruner --rule 'bandit' is not one of 'asha', 'median', 'hyperband'",
        ),
        (
            ["--sweep", "nope"],
            "pruner --sweep 'nope': no sweep of that id on 'trainer:sweeps' and no trial of it "
            "on the registry 'trainer:runs'; give the id `trainer sweep` printed (sweeps there: "
            "s3)",
        ),
        (
            ["--sweep", "s3", "--rule", "median", "--reduction-factor", "3"],
            "pruner --rule median takes no --reduction-factor (its options: --min-resource, "
            "--min-trials)",
        ),
        (
            ["--sweep", "s3", "--min-resource", "4", "--max-resource", "4"],
            "pruner --max-resource 4 leaves no rung below it (the first is at epoch 4): give a "
            "value above --min-resource, or leave it out",
        ),
    ],
)
def test_bad_options_are_one_line_exit_2_and_start_nothing(
    redis_url: str, options: list[str], message: str
) -> None:
    reader = BusReader(redis_url)
    trial = Trial(redis_url, "s3", 0, [0.5]).start()  # sweep s3 exists; nothing else does
    try:
        keys = reader.keys()
        done = subprocess.run(
            [sys.executable, "-m", "trainer.cli", "worker", "pruner", "--bus", redis_url, *options],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr == f"trainer: error: trainer worker: {message}\n"
        assert reader.keys() == keys  # no group, no WORKER_JOINED: nothing started
    finally:
        trial.release()
        trial.join()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--run", "r1"],
            "pruner --run r1: the pruner follows every trial of its --sweep; leave --run out",
        ),
        (
            ["--from", "now"],
            "pruner --from now: the pruner's history is the whole sweep's; say --follow-from now",
        ),
        ([], "pruner needs --sweep ID: the id `trainer sweep` printed for the sweep to prune"),
    ],
)
def test_options_the_pruner_cannot_run_with_are_refused_before_connecting(
    capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    from trainer.cli import main

    sweep = [] if not options else ["--sweep", "s4"]
    with pytest.raises(SystemExit) as exited:
        main(["worker", "pruner", "--bus", "redis://127.0.0.1:1/0", *sweep, *options])
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"trainer: error: trainer worker: {message}\n"
