"""Two `trainer agent` processes share one sweep's queue over real Redis, with nothing of
`trainer sweep` running trials (--parallel 0): every trial runs exactly once, and one agent
SIGKILLed mid-trial leaves its trial to the other, which resumes it from its checkpoint (its
RUN_STARTED carries `resumed_from`) and completes it.

One sweep for the whole module (the processes and their trials are what costs): the test
functions look at it from different sides.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from redis_server import RedisServer
from stack.stack_harness import EXAMPLE, eventually
from sweep_stack import TOPICS, Sweep

from bus import Envelope
from bus.messages import (
    CHECKPOINT_SAVED,
    ITERATION_COMPLETED,
    RUN_FINISHED,
    RUN_STARTED,
    SWEEP_FINISHED,
    SWEEP_STARTED,
    TRIAL_ENDED,
    TRIAL_STARTED,
)

pytestmark = pytest.mark.heavy(140)  # seconds in the suite: scheduled first

SWEEP = "agents-sweep"
TRIALS = 4
EPOCHS = 3
HANG = 240.0  # a hang guard, never a statement about speed


def config(cwd: Path) -> Path:
    """The digits job, slowed down (a trial must be caught in the middle), three epochs."""
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["run"]["dir"] = str(cwd / "runs")
    cfg["data"]["name"] = "slow_digits:build"
    cfg["extra"] = {"batch_delay": 0.04}
    cfg["train"] = {"epochs": EPOCHS, "progress_bar": False}
    cfg["early_stopping"] = {"patience": None}
    cfg["workers"] = ["metrics", "checkpoint", "tracking"]
    cfg["sweep"] = {
        "params": {"optim.lr": "choice(0.01, 0.005, 0.003, 0.001)"},
        "sampler": "grid",
        "parallel": 0,
        "reclaim_after": 3.0,
    }
    path = cwd / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sweep]:
    """The sweep, run to its end: one agent killed mid-trial, the other finishing it all."""
    server = RedisServer().start()
    cwd = tmp_path_factory.mktemp("agents")
    s = Sweep(server.url, cwd)
    try:
        coordinator = s.start("sweep", "sweep", config(cwd), "--bus", s.url, "--sweep-id", SWEEP)
        eventually(
            lambda: any(e.type == SWEEP_STARTED for e in s.envelopes(TOPICS.sweeps())),
            60,
            "SWEEP_STARTED",
        )
        doomed = s.start("agent-a", "agent", "--bus", s.url, "--sweep", SWEEP, "--name", "agent-a")
        survivor = s.start(
            "agent-b", "agent", "--bus", s.url, "--sweep", SWEEP, "--name", "agent-b"
        )

        def a_trial_with_a_checkpoint() -> Envelope | None:
            for started in s.sweep_events(SWEEP, TRIAL_STARTED):
                if started.data["agent"] != "agent-a":
                    continue
                run_id = started.data["run_id"]
                if s.events(run_id, CHECKPOINT_SAVED) and not s.events(run_id, RUN_FINISHED):
                    return started
            return None

        started = eventually(a_trial_with_a_checkpoint, HANG, "agent-a mid-trial, checkpointed")
        run_id = started.data["run_id"]
        pid = s.events(run_id, RUN_STARTED)[-1].data["pid"]
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.wait(30)
        s.killed = {"run_id": run_id, "trial": started.data["trial"], "pid": pid}
        # The trial's process dies with its agent, so nothing runs it twice at once.
        eventually(lambda: _gone(pid), 30, f"the killed agent's trial process {pid} to end")
        s.killed["saved"] = [e.data for e in s.events(run_id, CHECKPOINT_SAVED)]
        coordinator.succeeded(HANG)
        survivor.succeeded(60)
        yield s
    finally:
        s.close()
        server.close()


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"])


def _sessions(s: Sweep, run_id: str) -> list[Envelope]:
    return [e for e in s.events(run_id, RUN_STARTED) if e.source == "trainer:0"]


def test_every_trial_ends_once_and_the_sweep_finishes(sweep: Sweep) -> None:
    ended = sweep.sweep_events(SWEEP, TRIAL_ENDED)
    assert sorted(e.data["trial"] for e in ended) == list(range(TRIALS))
    assert {e.data["status"] for e in ended} == {"completed"}
    finished = [e for e in sweep.envelopes(TOPICS.sweeps()) if e.type == SWEEP_FINISHED]
    assert len(finished) == 1 and finished[0].data["status"] == "completed"
    assert finished[0].data["trials"] == TRIALS


def test_every_trial_but_the_taken_over_one_ran_in_one_session(sweep: Sweep) -> None:
    runs = {e.data["trial"]: e.data["run_id"] for e in sweep.sweep_events(SWEEP, TRIAL_STARTED)}
    assert sorted(runs) == list(range(TRIALS))
    for trial, run_id in runs.items():
        sessions = _sessions(sweep, run_id)
        finished = sweep.events(run_id, RUN_FINISHED)
        assert [e.data["status"] for e in finished] == ["completed"], run_id
        assert finished[0].data["epochs"] == EPOCHS
        if trial == sweep.killed["trial"]:
            continue
        assert len(sessions) == 1 and sessions[0].data["resumed_from"] is None, run_id


def test_the_killed_agents_trial_is_resumed_from_its_checkpoint_by_the_other(
    sweep: Sweep,
) -> None:
    run_id, trial = sweep.killed["run_id"], sweep.killed["trial"]
    takes = [e.data for e in sweep.sweep_events(SWEEP, TRIAL_STARTED) if e.data["trial"] == trial]
    assert [t["agent"] for t in takes] == ["agent-a", "agent-b"]
    assert takes[0]["resumed_from"] is None and takes[1]["resumed_from"] is not None
    first, second = _sessions(sweep, run_id)
    assert first.data["resumed_from"] is None
    resumed_from = second.data["resumed_from"]
    saved = {Path(d["path"]).name: d for d in sweep.killed["saved"]}
    assert Path(resumed_from).name in saved, (resumed_from, list(saved))
    at = saved[Path(resumed_from).name]["iteration"]
    # It went on from the checkpoint: the first iteration after the resume is the next one.
    entries = sweep.envelopes(TOPICS.events(run_id))
    after = entries[entries.index(second) + 1 :]
    first_step = next(e for e in after if e.type == ITERATION_COMPLETED)
    assert first_step.iteration == at + 1
    ended = [e.data for e in sweep.sweep_events(SWEEP, TRIAL_ENDED) if e.data["trial"] == trial]
    assert [(e["agent"], e["status"]) for e in ended] == [("agent-b", "completed")]


def test_each_trials_directory_holds_its_whole_run(sweep: Sweep) -> None:
    for started in sweep.sweep_events(SWEEP, TRIAL_STARTED):
        run_dir = sweep.cwd / "runs" / started.data["run_id"]
        meta = json.loads((run_dir / "run.json").read_text())
        assert meta["status"] == "completed" and meta["sweep"]["id"] == SWEEP
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert sorted({r["epoch"] for r in rows if "val/accuracy" in r}) == [1, 2, 3]
        assert (run_dir / "checkpoints" / "manifest.json").is_file()
        assert (run_dir / "trial.log").is_file()
