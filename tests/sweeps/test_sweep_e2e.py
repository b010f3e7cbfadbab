"""A digits sweep end to end over real Redis, every part its own process: `trainer sweep` running
P = 2 trials at a time (each a `trainer run` process with its workers), and the ASHA pruner as
`trainer worker pruner`. Some trials are pruned; each pruned trial's RUN_FINISHED names the
pruner as `by`, and every trial's directory is complete up to where it stopped.

One sweep for the module; its trials are kept cheap (8 iterations an epoch, 3 epochs), with
learning rates far enough apart that the worst are clearly below every rung's cutoff.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from redis_server import RedisServer
from stack.stack_harness import EXAMPLE, eventually
from sweep_stack import TOPICS, Sweep
from test_cli import run_main

from bus.messages import (
    CHECKPOINT_SAVED,
    METRICS,
    RUN_FINISHED,
    RUN_STARTED,
    TRIAL_ENDED,
    TRIAL_STARTED,
    VOTE,
)

pytestmark = pytest.mark.heavy(165)  # seconds in the suite: scheduled first

SWEEP = "e2e-sweep"
EPOCHS = 3
PRUNER = "pruner-e2e"
HANG = 300.0  # a hang guard, never a statement about speed


def config(cwd: Path) -> Path:
    cfg = yaml.safe_load(EXAMPLE.read_text())
    cfg["run"]["dir"] = str(cwd / "runs")
    cfg["train"] = {"epochs": EPOCHS, "epoch_length": 8, "progress_bar": False}
    cfg["early_stopping"] = {"patience": None}
    cfg["sweep"] = {
        "params": {
            "optim.lr": "choice(0.03, 0.01, 1e-5, 3e-6)",
            "model.hidden": "choice([16], [64])",
        },
        "sampler": "grid",
        "seed": 0,
        "parallel": 2,
    }
    path = cwd / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sweep]:
    server = RedisServer().start()
    cwd = tmp_path_factory.mktemp("e2e")
    s = Sweep(server.url, cwd)
    try:
        launcher = s.start("sweep", "sweep", config(cwd), "--bus", s.url, "--sweep-id", SWEEP)
        # The pruner may start once the sweep has a trial on the registry; it reads every
        # trial's history from the start, so it decides as one that was there from the first.
        eventually(lambda: s.events(f"{SWEEP}-t000", RUN_STARTED), HANG, "the first trial")
        pruner = s.start(
            "pruner",
            "worker",
            "pruner",
            "--bus",
            s.url,
            "--sweep",
            SWEEP,
            "--rule",
            "asha",
            "--name",
            PRUNER,
        )
        s.output = launcher.succeeded(HANG)
        pruner.signal(15)
        assert pruner.wait(30) == 0, pruner.output()
        yield s
    finally:
        s.close()
        server.close()


def _trials(s: Sweep) -> dict[int, str]:
    return {e.data["trial"]: e.data["run_id"] for e in s.sweep_events(SWEEP, TRIAL_STARTED)}


def test_every_trial_ran_once_and_some_were_pruned_by_the_pruner(sweep: Sweep) -> None:
    trials = _trials(sweep)
    assert sorted(trials) == list(range(8))
    ended = {e.data["trial"]: e.data for e in sweep.sweep_events(SWEEP, TRIAL_ENDED)}
    assert sorted(ended) == list(range(8))
    pruned = [t for t, data in ended.items() if data["status"] == "terminated"]
    assert pruned, "no trial was pruned"
    for trial, run_id in trials.items():
        finished = sweep.events(run_id, RUN_FINISHED)
        assert len(finished) == 1
        data = finished[0].data
        if trial in pruned:
            # The pruner's stop: RUN_FINISHED names it, and its reason says the rung.
            assert data["status"] == "terminated" and data["by"] == PRUNER, data
            assert data["voter"] == PRUNER and data["reason"].startswith("rung "), data
            votes = [
                e.data
                for e in sweep.envelopes(TOPICS.control(run_id))
                if e.type == VOTE and e.data["stop"]
            ]
            assert votes and votes[-1]["voter"] == PRUNER
            assert data["epochs"] == votes[-1]["epoch"] + 1  # stopped at the epoch voted on
        else:
            assert data["status"] == "completed" and data["epochs"] == EPOCHS, data
    assert f"{len(pruned)} pruned" in sweep.output


def test_every_trials_directory_is_complete_up_to_where_it_stopped(sweep: Sweep) -> None:
    for run_id in _trials(sweep).values():
        run_dir = sweep.cwd / "runs" / run_id
        finished = sweep.events(run_id, RUN_FINISHED)[0].data
        epochs = finished["epochs"]
        meta = json.loads((run_dir / "run.json").read_text())
        assert meta["status"] == finished["status"] and meta["sweep"]["id"] == SWEEP
        assert meta["epochs"] == epochs and meta["by"] == finished["by"]
        ended = json.loads((run_dir / "metrics.json").read_text())
        assert ended["status"] == finished["status"] and ended["epochs"] == epochs
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert sorted({r["epoch"] for r in rows if "val/accuracy" in r}) == list(
            range(1, epochs + 1)
        ), run_id
        # Every checkpoint the trial published was filed, the last at the epoch it stopped.
        manifest = json.loads((run_dir / "checkpoints" / "manifest.json").read_text())
        saved = sweep.events(run_id, CHECKPOINT_SAVED)
        assert saved and saved[-1].data["epoch"] == epochs - 1
        assert manifest["latest"] == Path(saved[-1].data["path"]).name
        assert (run_dir / "checkpoints" / manifest["latest"]).is_file()
        assert (run_dir / "config.yaml").is_file() and (run_dir / "trial.log").is_file()
        # The figures the pruner judged were on the bus: one per epoch of the val split.
        val = [e for e in sweep.events(run_id, METRICS) if e.data["split"] == "val"]
        assert sorted(e.data["epoch"] for e in val) == list(range(epochs))


def test_runs_compare_names_the_pruner_and_the_rung(sweep: Sweep, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich's table, wide enough for every column
    status, out, err = run_main(
        capsys, "runs", "compare", "--sweep", SWEEP, "--dir", sweep.cwd / "runs"
    )
    assert status == 0, err
    assert PRUNER in out and re.search(r"rung \d+ \(epoch \d+\)", out) and "pruned" in out
    assert "epochs used:" in out and "best: trial" in out
    status, out, _ = run_main(capsys, "runs", "ls", "--sweep", SWEEP, "--dir", sweep.cwd / "runs")
    assert status == 0 and out.count(f"{SWEEP}-t0") == 8
    png = sweep.cwd / "sweep.png"
    status, _, err = run_main(
        capsys, "runs", "plot", "--sweep", SWEEP, "--dir", sweep.cwd / "runs", "-o", png
    )
    assert status == 0 and png.read_bytes().startswith(b"\x89PNG"), err


def test_a_trial_may_have_two_ranks(redis_url: str, tmp_path: Path) -> None:
    s = Sweep(redis_url, tmp_path)
    try:
        cfg = yaml.safe_load(EXAMPLE.read_text())
        cfg["run"]["dir"] = str(tmp_path / "runs")
        cfg["train"] = {"epochs": 1, "epoch_length": 4, "progress_bar": False}
        path = tmp_path / "ranks.yaml"
        path.write_text(yaml.safe_dump(cfg))
        args = ["--param", "optim.lr=choice(0.01)", "--trials", "1", "--nproc", "2"]
        s.start("sweep", "sweep", path, "--bus", redis_url, "--sweep-id", "ranks", *args)
        s.procs[-1].succeeded(HANG)
        run_id = "ranks-t000"
        started = {e.source: e.data for e in s.events(run_id, RUN_STARTED)}
        assert sorted(started) == ["trainer:0", "trainer:1"]
        assert all(d["sweep"]["id"] == "ranks" and d["world_size"] == 2 for d in started.values())
        finished = s.events(run_id, RUN_FINISHED)
        assert sorted(e.source for e in finished) == ["trainer:0", "trainer:1"]
        assert {e.data["status"] for e in finished} == {"completed"}
        ended = s.sweep_events("ranks", TRIAL_ENDED)
        assert [e.data["status"] for e in ended] == ["completed"]
    finally:
        s.close()
