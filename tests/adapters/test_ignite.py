"""Ignite's Engine on the bus (`trainer.adapters.ignite.attach_bus`), end to end.

The Ignite job trains in the test's process; the workers are `trainer worker` processes on a
private Redis. What is checked is read back from the bus, the tracking store, the checkpoint
directory and `trainer runs show`, and every envelope of every run passes the catalogue's check.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from bridge._bus import TOPICS, BusClient, control, wait_until
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver, EarlyStopping
from stack.stack_harness import Stack, eventually, manifest

from bus import Envelope
from bus.messages import CONTROL, EVENTS, REGISTRY, check_data
from trainer.adapters.ignite import BusHandle, attach_bus

from ._ignite_digits import digits_job

MAX_EPOCHS = 30
PATIENCE, MIN_DELTA = 2, 0.01


def checked(stack: Stack, run_id: str) -> list[Envelope]:
    """The run's events, after checking every message of the run against the catalogue."""
    for env in stack.envelopes(TOPICS.registry()):
        check_data(env.type, env.data, topic=REGISTRY)
    for env in stack.envelopes(TOPICS.control(run_id)):
        check_data(env.type, env.data, topic=CONTROL)
    events = stack.events(run_id)
    for env in events:
        check_data(env.type, env.data, topic=EVENTS)
    return events


def joined(stack: Stack, run_id: str, kind: str) -> bool:
    """Whether a worker of `kind` has joined the run (on its control topic)."""
    return any(
        env.type == "WORKER_JOINED" and env.data["kind"] == kind
        for env in stack.envelopes(TOPICS.control(run_id))
    )


def at_iteration(engine: Engine, iteration: int, action: Any) -> None:
    """Run `action()` in the trainer's ITERATION_COMPLETED of `iteration`."""
    engine.add_event_handler(Events.ITERATION_COMPLETED(once=iteration), lambda _: action())


def send_and_wait_seen(client: BusClient, handle: BusHandle, env: Envelope) -> None:
    """Append to the run's control topic; wait until the trainer's reader has handled it."""
    last = client.append(TOPICS.control(handle.run_id), env)[-1]
    run = handle.bridge.run
    wait_until(lambda: run.control.last_id == last, f"control entry {last} to be read")


def ignite_stop_epoch(scores: list[float]) -> int | None:
    """The 0-based epoch at which Ignite's own EarlyStopping stops on these scores, or None."""
    clock = Engine(lambda engine, batch: None)
    stopped: list[bool] = []
    clock.terminate = lambda: stopped.append(True)  # type: ignore[method-assign]
    judge = Engine(lambda engine, batch: None)
    rule = EarlyStopping(
        PATIENCE, lambda engine: engine.state.metrics["accuracy"], clock, MIN_DELTA
    )
    for epoch, score in enumerate(scores):
        judge.state.metrics = {"accuracy": score}
        rule(judge)
        if stopped:
            return epoch
    return None


def test_the_early_stop_worker_stops_ignite_at_the_epoch_its_patience_says(
    stack: Stack, tmp_path: Path
) -> None:
    run_id = "ignite-early-stop"
    runs = tmp_path / "runs"
    workers = [
        stack.worker("metrics", run_id),
        stack.worker("tracking", run_id, "--dir", runs),
        stack.worker(
            "early-stop",
            run_id,
            *("--split", "val", "--metric", "accuracy", "--mode", "max"),
            *("--patience", str(PATIENCE), "--min-delta", str(MIN_DELTA)),
        ),
    ]
    eventually(lambda: joined(stack, run_id, "early-stop"), what="the voter to join")
    job = digits_job()
    handle = attach_bus(
        job.trainer,
        stack.url,
        evaluator=job.evaluator,
        run_id=run_id,
        config={"lr": 0.05, "model": "mlp[32]"},
        name="ignite-digits",
        # Exact: each epoch waits for the voter's vote on it (a dead voter no longer holds it).
        barrier=True,
        barrier_timeout=120.0,
    )
    job.trainer.run(job.train, max_epochs=MAX_EPOCHS)
    for worker in workers:
        worker.succeeded()

    events = checked(stack, run_id)
    val = [e for e in events if e.type == "EPOCH_COMPLETED" and e.data["split"] == "val"]
    scores = [e.data["metrics"]["accuracy"] for e in val]
    expected = ignite_stop_epoch(scores)
    assert expected is not None, f"no plateau within {MAX_EPOCHS} epochs: {scores}"
    end = handle.end
    assert end is not None
    assert (end.status, end.epochs, len(scores)) == ("terminated", expected + 1, expected + 1)
    assert end.by is not None and end.by.startswith("early-stop")
    assert job.trainer.state.epoch == expected + 1  # Ignite's own count (1-based) stopped there

    # The tracking store has every epoch's metrics of both splits.
    rows = [eval_row(line) for line in (runs / run_id / "metrics.jsonl").read_text().splitlines()]
    # Counted from 1 there, as people count epochs.
    assert sorted(r["epoch"] for r in rows if "val/accuracy" in r) == list(range(1, expected + 2))
    assert [
        r["val/accuracy"] for r in sorted(rows, key=lambda r: r["epoch"]) if "val/accuracy" in r
    ] == pytest.approx(scores)
    shown = subprocess.run(
        [sys.executable, "-m", "trainer.cli", "runs", "show", run_id, "--dir", str(runs)],
        capture_output=True,
        text=True,
        env=stack.env,
        timeout=120,
        check=True,
    ).stdout
    assert run_id in shown and "terminated" in shown and "ignite" in shown


def eval_row(line: str) -> dict[str, Any]:
    """One metrics.jsonl row."""
    import json

    return json.loads(line)


@pytest.mark.parametrize("signed_with", ["s3cret", "forged"])
def test_a_signed_terminate_stops_ignite_within_one_step_and_a_forged_one_is_ignored(
    stack: Stack, redis_client: BusClient, signed_with: str
) -> None:
    run_id = f"ignite-terminate-{signed_with}"
    job = digits_job()

    def terminate() -> None:
        signal = control(run_id, "TERMINATE", {"reason": "from ops"}, "ops", secret=signed_with)
        send_and_wait_seen(redis_client, handles[0], signal)

    # Attached first, so the signal is sent during step 5, before the adapter's handler of it.
    at_iteration(job.trainer, 5, terminate)
    handles = [attach_bus(job.trainer, stack.url, run_id=run_id, secret="s3cret")]
    handle = handles[0]
    job.trainer.run(job.train, max_epochs=2)

    events = checked(stack, run_id)
    end = handle.end
    assert end is not None
    if signed_with == "s3cret":
        # Seen during step 5: Ignite stops at the end of that very step.
        assert (job.trainer.state.iteration, end.status, end.by, end.reason) == (
            5,
            "terminated",
            "ops",
            "from ops",
        )
        assert [e.type for e in events][-3:] == ["TERMINATE", "COMPLETED", "RUN_FINISHED"]
    else:
        assert (job.trainer.state.iteration, end.status) == (2 * len(job.train), "completed")
        assert [i.type for i in handle.bridge.run.control.ignored] == ["TERMINATE"]


def test_a_checkpoint_request_is_saved_by_ignite_and_filed_by_the_checkpoint_worker(
    stack: Stack, redis_client: BusClient, tmp_path: Path
) -> None:
    run_id = "ignite-checkpoint"
    filed = tmp_path / "checkpoints"
    worker = stack.worker("checkpoint", run_id, "--n-saved", "all")
    eventually(lambda: joined(stack, run_id, "checkpoint"), what="the checkpoint worker")
    job = digits_job()
    to_save = {"model": job.model, "optimizer": job.optimizer}
    every_epoch = Checkpoint(to_save, DiskSaver(tmp_path / "ignite", require_empty=False))
    job.trainer.add_event_handler(Events.EPOCH_COMPLETED, every_epoch)
    handles: list[BusHandle] = []
    weights_at_3: dict[str, torch.Tensor] = {}

    def request() -> None:
        weights_at_3.update({k: v.clone() for k, v in job.model.state_dict().items()})
        ask = control(run_id, "CHECKPOINT_REQUEST", {"reason": "before the deploy"}, "ops")
        send_and_wait_seen(redis_client, handles[0], ask)

    # Attached first: sent during step 3, before the adapter's handler of it.
    at_iteration(job.trainer, 3, request)
    handles.append(
        attach_bus(
            job.trainer, stack.url, run_id=run_id, checkpoint=every_epoch, checkpoint_dir=filed
        )
    )
    job.trainer.run(job.train, max_epochs=2)
    worker.succeeded()

    events = checked(stack, run_id)
    steps = len(job.train)
    readies = [(e.data["reason"], e.iteration) for e in events if e.type == "CHECKPOINT_READY"]
    assert readies == [("requested", 3), ("scheduled", steps), ("scheduled", 2 * steps)]
    saved = [e for e in events if e.type == "CHECKPOINT_SAVED"]
    assert [e.data["iteration"] for e in saved] == [3, steps, 2 * steps]
    kept = {entry["step"]: filed / entry["file"] for entry in manifest(filed)["checkpoints"]}
    assert sorted(kept) == [3, steps, 2 * steps]
    state = torch.load(kept[3], weights_only=True)
    assert set(state) == {"model", "optimizer"}
    # The weights as they were after step 3 (the test copied them then).
    assert all(torch.equal(state["model"][k], v) for k, v in weights_at_3.items())
    # Ignite keeps its own files and its own retention (n_saved=1): the last epoch's.
    assert [p.name for p in (tmp_path / "ignite").iterdir() if p.suffix == ".pt"] != []


def test_without_a_bus_the_embedded_default_runs_the_workers_into_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    job = digits_job()
    handle = attach_bus(
        job.trainer,
        evaluator=job.evaluator,
        config={"lr": 0.05},
        name="digits-ignite",
        to_save={"model": job.model},
    )
    job.trainer.run(job.train, max_epochs=2)

    end = handle.end
    assert end is not None and end.status == "completed"
    run_dir = handle.bridge.run_dir
    assert run_dir is not None and run_dir.parent == (tmp_path / "runs").resolve()
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len([r for r in rows if '"val/accuracy"' in r]) == 2
