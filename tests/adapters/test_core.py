"""LoopBridge: a framework's loop (played here by plain Python loops) on the bus.

What is checked is what the bus carries, read back through the bus API: every envelope passes
the message catalogue's check, control lands at the step it was seen at, and RUN_FINISHED names
the cause. On both buses (the `bus_url` fixture: in memory, and a private Redis).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from bridge._bus import TOPICS, BusClient, control, joined, types, vote, wait_until

from bus import Bus, Envelope, encode
from bus.messages import CONTROL, EVENTS, REGISTRY, check_data
from trainer.adapters import LoopBridge, StepDecision

STEPS = 5  # per epoch


def check_every_message(client: BusClient, run_id: str) -> list[Envelope]:
    """The run's events, each checked against the catalogue (and the registry's, the control)."""
    events = client.read(TOPICS.events(run_id))
    for env in events:
        check_data(env.type, env.data, topic=EVENTS)
    for env in client.read(TOPICS.registry()):
        check_data(env.type, env.data, topic=REGISTRY)
    for env in client.read(TOPICS.control(run_id)):
        check_data(env.type, env.data, topic=CONTROL)
    return events


def send_and_wait_seen(client: BusClient, bridge: LoopBridge, *envs: Envelope) -> None:
    """Append to the run's control topic; wait until the bridge's reader has handled it."""
    last = client.append(TOPICS.control(bridge.run_id), *envs)[-1]
    wait_until(lambda: bridge.run.control.last_id == last, f"control entry {last} to be read")


def play(
    bridge: LoopBridge,
    epochs: int = 2,
    on_step: Callable[[int], None] = lambda iteration: None,
    on_checkpoint: Callable[[], None] = lambda: None,
) -> list[StepDecision]:
    """A framework's loop: train steps, a validation per epoch; stops when told. Decisions."""
    decisions: list[StepDecision] = []
    iteration = 0
    bridge.start()
    for epoch in range(epochs):
        bridge.epoch_started("train", epoch, max_epochs=epochs, epoch_length=STEPS)
        for _ in range(STEPS):
            iteration += 1
            on_step(iteration)
            d = bridge.step_completed("train", outputs={"loss": 1.0 / iteration, "pred": [1, 2]})
            decisions.append(d)
            if d.checkpoint:
                on_checkpoint()
            if d.stop:
                return decisions
        bridge.split_started("val")
        bridge.epoch_started("val", 0, epoch_length=2)
        for _ in range(2):
            bridge.step_completed("val", outputs=0.5)
        bridge.epoch_completed("val", metrics={"accuracy": 0.5 + epoch / 10})
        bridge.split_completed("val")
        d = bridge.epoch_completed("train", metrics={"loss": 1.0 / iteration})
        decisions.append(d)
        if d.stop:
            break
    return decisions


def test_a_loop_publishes_the_catalogue_in_order(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    bridge = LoopBridge(
        bus_url, run_id, config={"lr": 0.1, "dir": Path("/x")}, framework="test", name="loop"
    )
    decisions = play(bridge)
    end = bridge.finish()

    assert all(d == StepDecision() for d in decisions)
    assert (end.status, end.epochs, end.iteration) == ("completed", 2, 2 * STEPS)
    events = check_every_message(client, run_id)
    epoch = [
        "EPOCH_STARTED",
        *["ITERATION_COMPLETED"] * STEPS,
        *["STARTED", "EPOCH_STARTED", "ITERATION_COMPLETED", "ITERATION_COMPLETED"],
        *["EPOCH_COMPLETED", "COMPLETED", "EPOCH_COMPLETED"],
    ]
    assert types(events) == ["RUN_STARTED", "STARTED", *epoch, *epoch, "COMPLETED", "RUN_FINISHED"]
    started = events[0].data
    assert (started["framework"], started["name"]) == ("test", "loop")
    assert started["config"] == {"lr": 0.1, "dir": "/x"}
    first_step = events[3]
    assert first_step.data["outputs"] == {"loss": 1.0} and first_step.iteration == 1
    val_end, train_end = events[12], events[14]
    assert (val_end.data["split"], val_end.data["metrics"], val_end.epoch) == (
        "val",
        {"accuracy": 0.5},
        0,
    )
    assert (train_end.data["split"], train_end.data["metrics"]) == ("train", {"loss": 1 / STEPS})
    assert events[-1].data["status"] == "completed"


def test_publish_every_coalesces_the_steps_in_between(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    bridge = LoopBridge(bus_url, run_id, publish_every=2)
    play(bridge, epochs=1)
    bridge.finish()

    train_steps = [
        env
        for env in check_every_message(client, run_id)
        if env.type == "ITERATION_COMPLETED" and env.data["split"] == "train"
    ]
    # Iterations 2 and 4, and the epoch's last (5) alone.
    assert [(e.iteration, e.data["count"]) for e in train_steps] == [(2, 2), (4, 2), (5, 1)]
    assert train_steps[0].data["outputs"]["loss"] == pytest.approx((1.0 + 0.5) / 2)


def test_a_terminate_stops_the_loop_at_the_next_step(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    bridge = LoopBridge(bus_url, run_id)

    def at(iteration: int) -> None:
        if iteration == 7:
            send_and_wait_seen(
                client, bridge, control(run_id, "TERMINATE", {"reason": "enough"}, "ops")
            )

    decisions = play(bridge, epochs=3, on_step=at)
    end = bridge.finish()

    assert len(decisions) == 7 + 1  # 7 steps and epoch 1's end; the stop comes with step 7
    assert decisions[-1] == StepDecision(stop=True, reason="enough", by="ops")
    assert (end.status, end.by, end.iteration, end.epochs) == ("terminated", "ops", 7, 1)
    events = check_every_message(client, run_id)
    assert types(events)[-4:] == ["ITERATION_COMPLETED", "TERMINATE", "COMPLETED", "RUN_FINISHED"]
    assert events[-1].data["reason"] == "enough"
    # Reported from then on, by every decision.
    assert bridge.decision.stop


@pytest.mark.parametrize("signed_with", ["s3cret", "forged"])
def test_with_a_secret_a_signed_terminate_stops_and_a_forged_one_is_ignored(
    bus_url: str, client: BusClient, run_id: str, signed_with: str
) -> None:
    bridge = LoopBridge(bus_url, run_id, secret="s3cret")

    def at(iteration: int) -> None:
        if iteration == 3:
            terminate = control(run_id, "TERMINATE", {"reason": "stop"}, "ops", secret=signed_with)
            send_and_wait_seen(client, bridge, terminate)

    decisions = play(bridge, on_step=at)
    end = bridge.finish()

    check_every_message(client, run_id)
    if signed_with == "s3cret":
        assert (decisions[-1].stop, end.status, end.iteration) == (True, "terminated", 3)
    else:
        assert not any(d.stop for d in decisions)
        assert (end.status, end.iteration) == ("completed", 2 * STEPS)
        assert [i.type for i in bridge.run.control.ignored] == ["TERMINATE"]


def test_a_vote_of_a_registered_voter_stops_and_names_it(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    bridge = LoopBridge(bus_url, run_id)

    def at(iteration: int) -> None:
        if iteration == 2:
            ballot = vote(run_id, "es-1", True, 0, "plateau")
            send_and_wait_seen(client, bridge, joined(run_id, "es-1"), ballot)

    decisions = play(bridge, on_step=at)
    end = bridge.finish()
    assert decisions[-1] == StepDecision(stop=True, reason="plateau", by="es-1", voter="es-1")
    assert (end.status, end.voter, end.iteration) == ("terminated", "es-1", 2)
    check_every_message(client, run_id)


def test_a_checkpoint_request_is_served_once_and_its_file_announced(
    bus_url: str, client: BusClient, run_id: str, tmp_path: Path
) -> None:
    bridge = LoopBridge(bus_url, run_id, checkpoint_dir=tmp_path / "ckpt")
    saved: list[Path] = []

    def at(iteration: int) -> None:
        if iteration == 3:
            request = control(run_id, "CHECKPOINT_REQUEST", {"reason": "backup"}, "ops")
            send_and_wait_seen(client, bridge, request)

    def save() -> None:  # the framework's own save
        path = tmp_path / "framework" / f"model-{len(saved)}.ckpt"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(1000))
        saved.append(path)
        bridge.checkpoint_ready(path, reason="requested")

    decisions = play(bridge, on_step=at, on_checkpoint=save)
    bridge.finish()

    assert [i for i, d in enumerate(decisions, 1) if d.checkpoint] == [3]
    assert len(saved) == 1 and saved[0].exists()  # the framework keeps its file
    ready = [e for e in check_every_message(client, run_id) if e.type == "CHECKPOINT_READY"]
    assert len(ready) == 1
    data = ready[0].data
    announced = Path(data["path"])
    assert announced.parent == tmp_path / "ckpt" / ".incoming"
    assert data["sha256"] == hashlib.sha256(saved[0].read_bytes()).hexdigest()
    assert (data["size"], data["iteration"], data["reason"]) == (1000, 3, "requested")
    assert announced.read_bytes() == saved[0].read_bytes()


def test_a_checkpoint_request_is_ignored_by_a_loop_that_cannot_save(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    bridge = LoopBridge(bus_url, run_id, serves_checkpoints=False)

    def at(iteration: int) -> None:
        if iteration == 2:
            request = control(run_id, "CHECKPOINT_REQUEST", {"reason": "backup"}, "ops")
            send_and_wait_seen(client, bridge, request)

    decisions = play(bridge, epochs=1, on_step=at)
    bridge.finish()
    assert not any(d.checkpoint for d in decisions)
    assert "no checkpoint" in bridge.run.control.ignored[-1].why


def test_an_exception_is_published_and_fails_the_run(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    bridge = LoopBridge(bus_url, run_id)
    bridge.start()
    bridge.step_completed(outputs={"loss": 1.0})
    error = ValueError("loss is nan")
    bridge.exception(error)
    end = bridge.finish(error)

    assert (end.status, end.reason) == ("failed", "ValueError: loss is nan")
    events = check_every_message(client, run_id)
    assert types(events)[-2:] == ["EXCEPTION_RAISED", "RUN_FINISHED"]
    assert events[-2].data["error_type"] == "ValueError"


def test_barrier_mode_waits_for_the_votes_on_the_epoch(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    bridge = LoopBridge(
        bus_url, run_id, barrier=True, barrier_timeout=120.0, heartbeat_timeout=120.0
    )

    def at(iteration: int) -> None:
        if iteration == 1:
            send_and_wait_seen(client, bridge, joined(run_id, "es-1"))
        if iteration == 2 * STEPS:  # epoch 1's vote is there before its barrier
            send_and_wait_seen(client, bridge, vote(run_id, "es-1", True, 1, "patience"))

    # The first barrier waits for the vote on epoch 0, sent once the training waits for it.
    async def vote_when_waited(bus: Bus) -> None:
        while bridge.engine().state_dict()["epochs_completed"] < 1:
            await asyncio.sleep(0.005)
        await bus.append(TOPICS.control(run_id), [encode(vote(run_id, "es-1", False, 0))])

    voter = client.spawn(vote_when_waited)
    decisions = play(bridge, epochs=4, on_step=at)
    voter.result(60)
    end = bridge.finish()
    barriers = bridge.run.barriers
    assert [(b.epoch, b.timed_out, b.tally.stop) for b in barriers] == [
        (0, False, False),
        (1, False, True),
    ]
    assert decisions[-1].stop and (end.epochs, end.iteration, end.reason) == (
        2,
        2 * STEPS,
        "patience",
    )
    check_every_message(client, run_id)


def test_the_embedded_default_runs_the_workers_into_a_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bridge = LoopBridge(framework="test", name="mlp", workers=["metrics", "tracking"])
    play(bridge)
    end = bridge.finish()

    assert end.status == "completed"
    run_dir = bridge.run_dir
    assert run_dir is not None and run_dir.parent == (tmp_path / "runs").resolve()
    assert run_dir.name.startswith("mlp-") and bridge.run_id == run_dir.name
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len([r for r in rows if '"val/accuracy"' in r]) == 2


def test_a_stop_the_framework_made_itself_is_the_programs_with_its_reason(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    bridge = LoopBridge(bus_url, run_id)
    bridge.start()
    bridge.epoch_started("train", 0, max_epochs=5)
    bridge.step_completed(outputs=1.0)
    bridge.split_completed("train", terminated=True, reason="its own early stopping")
    end = bridge.finish()

    assert (end.status, end.reason, end.by) == ("terminated", "its own early stopping", None)
    events = check_every_message(client, run_id)
    assert types(events)[-3:] == ["TERMINATE", "COMPLETED", "RUN_FINISHED"]
