"""`trainer run --nproc 2` end to end: two ranks of the digits job over a private Redis.

Every process is the real command (stack_harness.Proc). (1) the metrics worker's METRICS over
the two ranks equal one process scoring the same data; (3) a job killed mid-epoch and resumed
ends with the weights of an uninterrupted one; (4) a rank killed ends the job, failed, in
bounded time, naming the rank. (2), stops agreed between ranks (a TERMINATE seen by one rank or
both, a NaN on one rank, a barrier vote), runs on real rank processes in tests/bridge/test_ranks.py.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from redis_server import RedisServer
from sklearn.metrics import accuracy_score
from stack_harness import eventually, manifest

from bus import Envelope
from trainer.tasks.digits import digits_tensors
from trainer.tasks.mlp import mlp

from .conftest import RankStack, rank_record
from .paced_digits import write_digits

pytestmark = pytest.mark.heavy(160)  # seconds in the suite: scheduled first

EPOCHS, EPOCH_LENGTH, EVERY = 3, 8, 4  # iterations per epoch, per rank; checkpoint every 4
LAST = EPOCHS * EPOCH_LENGTH
# Hang guards, far above what the runs take: a job that needs them is broken.
JOB_TIMEOUT = 180.0
LOST_RANK_TIMEOUT = 90.0
# Seconds a collective waits for a lost rank in these jobs (dist.timeout): the bound of (4).
COLLECTIVE_TIMEOUT = 20.0


def job_config(stack: RankStack, batch_delay: float, **sections: Any) -> Path:
    """The digits example as 2 ranks run it here: short epochs, checkpoints every 4 iterations."""
    digits = stack.cwd / "digits.pt"
    if not digits.exists():
        write_digits(digits)
    return stack.config(
        data={"name": "paced_digits:build"},
        train={"epochs": EPOCHS, "epoch_length": EPOCH_LENGTH, "progress_bar": False},
        checkpoint={"unit": "iteration", "every": EVERY, "n_saved": None, "score": None},
        early_stopping={"patience": None},
        dist={"timeout": COLLECTIVE_TIMEOUT},
        extra={"batch_delay": batch_delay, "digits_file": str(digits)},
        **sections,
    )


def checkpoint_at(run_dir: Path, iteration: int) -> dict[str, Any]:
    """The content of a checkpoint of `run_dir` taken at `iteration` (filed or not)."""
    for path in sorted((run_dir / "checkpoints").glob("**/*.pt")):
        state = torch.load(path, weights_only=True)
        if state["trainer"]["iteration"] == iteration:
            return state
    raise AssertionError(f"no checkpoint of iteration {iteration} under {run_dir}")


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"weights differ in {name}"


def of_type(events: list[Envelope], type_: str) -> list[Envelope]:
    return [e for e in events if e.type == type_]


def ranks_gone(run_dir: Path) -> bool:
    """Whether every recorded rank process of `run_dir` has ended."""
    for rank in (0, 1):
        try:
            os.kill(rank_record(run_dir, rank)["pid"], 0)
        except ProcessLookupError:
            continue
        return False
    return True


@dataclass
class Finished:
    """A job that ran to its end: its directory, what it printed, its run's events."""

    run_dir: Path
    output: str
    events: list[Envelope]


@pytest.fixture(scope="module")
def uninterrupted(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Finished:
    """Three epochs of 2 ranks, uninterrupted, with a metrics and a checkpoint worker."""
    stack = RankStack(redis_server.url, tmp_path_factory.mktemp("uninterrupted"))
    try:
        config = job_config(stack, batch_delay=0.0)
        workers = [stack.worker(kind, "whole") for kind in ("metrics", "checkpoint")]
        run_dir = stack.cwd / "whole"
        output = stack.job(config, "whole", "--run-dir", run_dir).succeeded(JOB_TIMEOUT)
        for worker in workers:
            worker.succeeded(JOB_TIMEOUT)
        # Read back now: the tests after this one flush the session's Redis.
        return Finished(run_dir, output, stack.events("whole"))
    finally:
        stack.close()


def test_each_epochs_metrics_over_two_ranks_equal_one_process_over_the_same_data(
    uninterrupted: Finished,
) -> None:
    events = uninterrupted.events
    started = of_type(events, "RUN_STARTED")
    assert sorted((e.source, e.data["rank"], e.data["world_size"]) for e in started) == [
        ("trainer:0", 0, 2),
        ("trainer:1", 1, 2),
    ]
    reports = {
        (e.data["split"], e.data["epoch"]): e.data
        for e in of_type(events, "METRICS")
        if not e.data["running"]
    }
    assert sorted(reports) == [(s, e) for s in ("train", "val") for e in range(EPOCHS)]
    _, _, x_val, y_val = digits_tensors(0.2, seed=0)  # the example's split, whole
    printed = re.findall(
        r"^epoch (\d+)/3  train_loss ([0-9.]+)  val_loss ([0-9.]+)  val_accuracy ([0-9.]+)$",
        uninterrupted.output,
        re.MULTILINE,
    )
    assert [int(p[0]) for p in printed] == [1, 2, 3]  # rank 0 alone prints
    for epoch in range(EPOCHS):
        # The weights validated at this epoch's end, scored by one process on the whole split.
        model = mlp(64, [128], 10)
        model.load_state_dict(
            checkpoint_at(uninterrupted.run_dir, EPOCH_LENGTH * (epoch + 1))["model"]
        )
        with torch.no_grad():
            logits = model(x_val)
        val = reports[("val", epoch)]
        assert val["ranks"] == [0, 1]
        assert val["values"]["accuracy"] == pytest.approx(
            accuracy_score(y_val.numpy(), logits.argmax(dim=1).numpy()), abs=1e-12
        )
        assert val["values"]["loss"] == pytest.approx(
            torch.nn.functional.cross_entropy(logits, y_val).item(), rel=1e-5
        )
        # The training loss: the mean of both ranks' losses of the epoch, as published per step.
        losses = [
            e.data["outputs"]["loss"]
            for e in of_type(events, "ITERATION_COMPLETED")
            if e.data["split"] == "train" and e.epoch == epoch
        ]
        assert len(losses) == 2 * EPOCH_LENGTH
        train = reports[("train", epoch)]
        assert train["ranks"] == [0, 1]
        assert train["values"]["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-9)
        # What rank 0 printed is the whole data's too, not its own share's.
        _, train_loss, val_loss, val_accuracy = printed[epoch]
        assert train_loss == f"{train['values']['loss']:.4f}"
        assert (val_loss, val_accuracy) == (
            f"{val['values']['loss']:.4f}",
            f"{val['values']['accuracy']:.4f}",
        )
    finished = of_type(events, "RUN_FINISHED")
    assert sorted(e.source for e in finished) == ["trainer:0", "trainer:1"]
    assert {(e.data["status"], e.data["iteration"]) for e in finished} == {("completed", LAST)}


def test_a_job_killed_mid_epoch_and_resumed_ends_with_the_uninterrupted_weights(
    stack: RankStack, uninterrupted: Finished
) -> None:
    config = job_config(stack, batch_delay=0.25)
    run_dir = stack.cwd / "killed"
    checkpointer = stack.worker("checkpoint", "killed")
    job = stack.job(config, "killed", "--run-dir", run_dir)

    def filed() -> list[int]:
        try:
            return [e["step"] for e in manifest(run_dir / "checkpoints")["checkpoints"]]
        except (OSError, ValueError):
            return []

    # In epoch 2 (iterations 9 to 16), once the checkpoint of iteration 12 is filed.
    eventually(lambda: 12 in filed(), timeout=JOB_TIMEOUT, what="the checkpoint of iteration 12")
    os.killpg(job.proc.pid, signal.SIGKILL)  # the launcher and torch's launcher with it
    job.wait()
    # The ranks end with their launcher rather than train on alone.
    eventually(lambda: ranks_gone(run_dir), timeout=60, what="the ranks to end")
    checkpointer.signal(signal.SIGTERM)
    checkpointer.wait(JOB_TIMEOUT)
    assert manifest(run_dir / "checkpoints")["latest"] is not None
    assert max(filed()) == 12, filed()  # killed in the middle of epoch 2

    # No delay this time: it changes no number.
    resumed = stack.job(
        config,
        "killed",
        "--run-dir",
        run_dir,
        "--resume",
        "latest",
        "extra.batch_delay=0",
        name="resumed",
    )
    out = resumed.succeeded(JOB_TIMEOUT)
    assert "resuming from" in out and re.findall(r"^epoch (\d+)/3", out, re.MULTILINE) == [
        "2",
        "3",
    ]
    assert_same_weights(
        checkpoint_at(run_dir, LAST)["model"],
        checkpoint_at(uninterrupted.run_dir, LAST)["model"],
    )


def test_a_lost_rank_fails_the_job_in_bounded_time_naming_the_rank(stack: RankStack) -> None:
    config = job_config(stack, batch_delay=0.1)
    run_dir = stack.cwd / "lost"
    job = stack.job(config, "lost", "--run-dir", run_dir)

    def both_training() -> bool:
        steps = stack.events("lost", "ITERATION_COMPLETED")
        return {e.source for e in steps if e.iteration >= 3} == {"trainer:0", "trainer:1"}

    eventually(both_training, timeout=JOB_TIMEOUT, what="both ranks to train")
    lost = rank_record(run_dir, 1)["pid"]
    os.kill(lost, signal.SIGKILL)

    status = job.wait(LOST_RANK_TIMEOUT)  # the bound: a hang fails here
    out = job.output()
    assert status == 1, out
    assert re.search(
        rf"^trainer: error: the job failed: rank 1 \(pid {lost}\) was killed by SIGKILL",
        out,
        re.MULTILINE,
    ), out
    # The surviving rank reported the run failed, naming the rank it lost.
    finished = stack.events("lost", "RUN_FINISHED")
    assert [e.source for e in finished] == ["trainer:0"], finished
    (end,) = finished
    assert end.data["status"] == "failed"
    assert f"rank 1 (pid {lost}" in end.data["reason"] and "was lost" in end.data["reason"]
    eventually(lambda: ranks_gone(run_dir), timeout=30, what="the surviving rank to end")
