"""Scenarios 3, 4 and 5 of the stack: the checkpoint worker's retention, replicas, and resume."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
import torch
from stack_harness import Stack, eventually, manifest

from trainer import config as config_module
from trainer.events import Events
from trainer.handlers import Checkpoint, DiskSaver
from trainer.job import Job
from trainer.reproducibility import prepare_process
from trainer.retention import RetentionPolicy, best

pytestmark = pytest.mark.heavy(120)  # seconds in the suite: scheduled first

EPOCH = 23  # iterations per digits epoch


def in_process_checkpoints(config_path: Path, directory: Path) -> tuple[list[str], str, str]:
    """The reference: the same job with the in-process Checkpoint handler and the same settings.

    Returns the files it keeps, its latest and its best, as the job before the bus kept them.
    """
    cfg = config_module.load(config_path)
    prepare_process(cfg.run.seed, cfg.run.threads)  # as `trainer run` does
    job = Job(cfg)
    trainer, evaluator = job.trainer, job.evaluator
    evaluated_at = {"iteration": -1}

    def validate(engine) -> None:
        evaluator.run(job.data.val)
        evaluated_at["iteration"] = engine.state.iteration

    sign = 1.0 if cfg.checkpoint.mode == "max" else -1.0

    def score(engine) -> float:
        if evaluated_at["iteration"] != engine.state.iteration:
            return math.nan  # only a checkpoint right after a validation has a score
        return sign * evaluator.state.metrics[cfg.checkpoint.score]

    handler = Checkpoint(
        job.to_save(),
        DiskSaver(directory),
        score_function=score,
        score_name=cfg.checkpoint.score,
        global_step_transform=lambda engine: engine.state.iteration,
        retention=RetentionPolicy(
            keep_last=cfg.checkpoint.n_saved, keep_best=cfg.checkpoint.n_best
        ),
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, validate, priority=100)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(every=cfg.checkpoint.every), handler)
    trainer.run(job.data.train, max_epochs=cfg.train.epochs)
    kept = handler.saved
    return sorted(r.name for r in kept), kept[-1].name, best(kept).name


def test_the_checkpoint_worker_keeps_what_the_in_process_handler_keeps(stack: Stack) -> None:
    config = stack.config(
        train={"epochs": 6},
        early_stopping={"patience": None},
        checkpoint={"every": 1, "unit": "epoch", "n_saved": 2, "n_best": 1, "score": "accuracy"},
    )
    expected_files, expected_latest, expected_best = in_process_checkpoints(
        config, stack.cwd / "reference"
    )

    run_dir = stack.cwd / "bus-run"
    workers = [stack.worker("metrics", "ck"), stack.worker("checkpoint", "ck")]
    stack.trainer(config, "ck", "--run-dir", run_dir).succeeded()
    for w in workers:
        w.succeeded()
    kept = manifest(run_dir / "checkpoints")
    on_disk = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert on_disk == expected_files
    assert sorted(e["file"] for e in kept["checkpoints"]) == expected_files
    assert (kept["latest"], kept["best"]) == (expected_latest, expected_best)
    # The kept files hold what the in-process handler saved, bit for bit.
    for name in expected_files:
        ours = torch.load(run_dir / "checkpoints" / name, weights_only=True)["model"]
        theirs = torch.load(stack.cwd / "reference" / name, weights_only=True)["model"]
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_a_killed_checkpoint_replica_leaves_nothing_unfiled_or_filed_twice(stack: Stack) -> None:
    config = stack.config(
        data={"name": "slow_digits:build"},
        train={"epochs": 3},
        early_stopping={"patience": None},
        extra={"batch_delay": 0.02},
        checkpoint={"every": 3, "unit": "iteration", "n_saved": 4, "n_best": 0, "score": None},
    )
    run_dir = stack.cwd / "replicas"
    fast_reclaim = ("--claim-idle", "1")
    doomed = stack.worker("checkpoint", "rep", "--name", "ck-a", *fast_reclaim, name="ck-a")
    survivor = stack.worker("checkpoint", "rep", "--name", "ck-b", *fast_reclaim, name="ck-b")
    trainer = stack.trainer(config, "rep", "--run-dir", run_dir)
    eventually(
        lambda: [e for e in stack.events("rep", "CHECKPOINT_SAVED") if e.source == "ck-a"],
        what="replica ck-a to file a checkpoint",
    )
    doomed.signal(9)
    assert doomed.wait() == -9
    trainer.succeeded()
    survivor.succeeded()

    ready = stack.events("rep", "CHECKPOINT_READY")
    saved = stack.events("rep", "CHECKPOINT_SAVED")
    assert len(ready) >= 3 * EPOCH // 3
    # Every checkpoint is accounted for once, whichever replica filed it.
    assert sorted(e.data["ready_id"] for e in saved) == sorted(e.id for e in ready)
    assert {e.source for e in saved} == {"ck-a", "ck-b"}
    kept = manifest(run_dir / "checkpoints")
    files = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert sorted(e["file"] for e in kept["checkpoints"]) == files
    steps = sorted(e.data["iteration"] for e in ready)
    assert [e["step"] for e in kept["checkpoints"]] == steps[-4:]
    assert kept["latest"] == f"checkpoint_{steps[-1]}.pt"


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = manifest(run_dir / "checkpoints")["latest"]
    return torch.load(run_dir / "checkpoints" / latest, weights_only=True)["model"]


def test_a_trainer_killed_mid_epoch_resumes_to_the_uninterrupted_weights(stack: Stack) -> None:
    every_10 = {"every": 10, "unit": "iteration", "n_saved": None, "n_best": 0, "score": None}
    config = stack.config(
        data={"name": "slow_digits:build"},
        train={"epochs": 3},
        early_stopping={"patience": None},
        checkpoint=every_10,
        extra={"batch_delay": 0.03},
    )
    # The reference: the same job, uninterrupted, on the embedded default (no delay needed).
    reference = stack.cwd / "uninterrupted"
    stack.start("reference", "run", config, "extra.batch_delay=0", "--run-dir", reference)
    stack.procs[-1].succeeded()

    run_dir = stack.cwd / "killed"
    workers = [stack.worker("metrics", "res"), stack.worker("checkpoint", "res")]
    first = stack.trainer(config, "res", "--run-dir", run_dir, name="trainer-1")
    # Killed once the checkpoint of iteration 30 (in the middle of the second epoch) is written
    # and one checkpoint is filed: resuming from whichever is latest by then must end the same.
    eventually(
        lambda: (
            [e for e in stack.events("res", "CHECKPOINT_READY") if e.data["iteration"] == 30]
            and stack.events("res", "CHECKPOINT_SAVED")
        ),
        what="the checkpoint of iteration 30 to be written, and one to be filed",
    )
    first.signal(9)
    assert first.wait() == -9
    killed_at = max(e.iteration for e in stack.events("res", "ITERATION_COMPLETED"))
    assert killed_at < 3 * EPOCH  # it really died before the end
    down = 3.0
    time.sleep(down)  # the run is down for a while: its duration must not count it

    # No --run-id: the resumed run continues under the id it had, where its workers wait.
    second = stack.start(
        "trainer-2", "run", config, "--bus", stack.url, "--run-dir", run_dir, "--resume", "latest"
    )
    out = second.succeeded()
    resumed_from = re.search(r"^resuming from (.+) \(in epoch [23]/3, ", out, re.MULTILINE)
    assert resumed_from and "run id: res" in out, out
    for w in workers:
        w.succeeded()
    finished = stack.finished("res")
    assert (finished.data["status"], finished.data["iteration"]) == ("completed", 3 * EPOCH)
    started = stack.events("res", "RUN_STARTED")
    assert [s.data["resumed_from"] for s in started] == [None, resumed_from.group(1)]
    # Training time only: at most the wall time from the first start less the time it was down.
    wall = finished.ts - started[0].ts
    assert 0 < finished.data["duration_s"] < wall - down
    ours, theirs = final_weights(run_dir), final_weights(reference)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), f"weights differ in {name}"
