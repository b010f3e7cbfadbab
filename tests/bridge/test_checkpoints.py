"""Checkpoints through the run: snapshots off the hot path, files that restore exactly."""

from __future__ import annotations

import copy
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from trainer import Engine, Events
from trainer.bridge import BusRun
from trainer.bridge.snapshot import Snapshots, copy_pending, frozen_copy, snapshot
from trainer.bridge.staging import Stager
from trainer.checkpoint_store import RNGState, file_sha256
from trainer.handlers import Checkpoint

from ._bus import TOPICS, BusClient, control, wait_until


class Setup:
    """A small model trained with momentum SGD, and what a checkpoint of it holds."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(4, 3)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.data = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(5)]

        def step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> dict:
            x, y = batch
            self.optimizer.zero_grad()
            loss = nn.functional.cross_entropy(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            # Draw from every RNG so that their states move on with training.
            random.random(), np.random.rand(), torch.rand(1)
            return {"loss": loss}

        self.trainer = Engine(step)
        self.to_save = {
            "model": self.model,
            "optimizer": self.optimizer,
            "trainer": self.trainer,
            "rng": RNGState(),
        }
        self.seen: dict[int, dict] = {}  # iteration -> a deep copy of the state then

    def state(self) -> dict:
        """A deep copy of what a checkpoint holds now."""
        return copy.deepcopy({name: obj.state_dict() for name, obj in self.to_save.items()})

    def record_at(self, event) -> None:
        """Keep a reference copy of the state at `event` (before the run's snapshot there)."""

        def record(engine: Engine) -> None:
            self.seen[engine.state.iteration] = self.state()

        self.trainer.add_event_handler(event, record)


def ready(client: BusClient, run_id: str) -> list:
    """The CHECKPOINT_READY envelopes of the run."""
    return [e for e in client.read(TOPICS.events(run_id)) if e.type == "CHECKPOINT_READY"]


def assert_same_state(loaded: dict, reference: dict) -> None:
    model, ref = loaded["model"], reference["model"]
    assert list(model) == list(ref)
    assert all(torch.equal(model[k], ref[k]) for k in ref)
    momentum = loaded["optimizer"]["state"]
    ref_momentum = reference["optimizer"]["state"]
    assert all(
        torch.equal(momentum[i]["momentum_buffer"], ref_momentum[i]["momentum_buffer"])
        for i in ref_momentum
    )
    assert loaded["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]
    assert loaded["trainer"] == reference["trainer"]
    assert torch.equal(loaded["rng"]["torch"], reference["rng"]["torch"])
    assert loaded["rng"]["python"] == reference["rng"]["python"]


def test_epoch_checkpoints_are_announced_and_restore_the_state_exactly(
    bus_url: str, client: BusClient, run_id: str, tmp_path: Path
) -> None:
    setup = Setup()
    setup.record_at(Events.EPOCH_COMPLETED)
    run = BusRun(bus_url, run_id, checkpoint_dir=tmp_path / "ckpt")
    run.attach(setup.trainer)
    run.checkpoint(setup.to_save, every=1, unit="epoch")
    with run:
        setup.trainer.run(setup.data, max_epochs=3)

    announced = ready(client, run_id)
    # The last scheduled checkpoint is at the final iteration: no "final" one on top.
    assert [(e.epoch, e.iteration) for e in announced] == [(0, 5), (1, 10), (2, 15)]
    directory = (tmp_path / "ckpt").resolve()
    for env in announced:
        data = env.data
        path = Path(data["path"])
        assert path == directory / ".incoming" / f"checkpoint_{env.iteration}.pt"
        assert (data["dir"], data["name"]) == (str(directory), "checkpoint")
        assert (data["epoch"], data["iteration"]) == (env.epoch, env.iteration)
        assert (data["epoch_end"], data["reason"]) == (True, "scheduled")
        assert data["size"] == path.stat().st_size and data["sha256"] == file_sha256(path)
        loaded = torch.load(path, weights_only=True)
        assert sorted(loaded) == ["model", "optimizer", "rng", "trainer"]
        assert_same_state(loaded, setup.seen[env.iteration])
    started = client.read(TOPICS.events(run_id))[0]
    assert started.data["checkpoint_dir"] == str(directory)
    # CHECKPOINT_READY is out before RUN_FINISHED: the run waited for its writes.
    assert client.read(TOPICS.events(run_id))[-2].type == "CHECKPOINT_READY"

    # Restoring the first checkpoint into fresh objects resumes exactly where it was taken.
    fresh = Setup()
    Checkpoint.load_objects(fresh.to_save, announced[0].data["path"])
    assert fresh.trainer.state_dict() == setup.seen[5]["trainer"]
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            fresh.model.state_dict().values(), setup.seen[5]["model"].values(), strict=True
        )
    )


@pytest.mark.parametrize("overlap", [True, False], ids=["overlapped", "copied-at-once"])
def test_iteration_checkpoints_and_a_final_one(
    bus_url: str, client: BusClient, run_id: str, tmp_path: Path, overlap: bool
) -> None:
    setup = Setup()
    setup.record_at(Events.ITERATION_COMPLETED)
    run = BusRun(bus_url, run_id)
    run.attach(setup.trainer)
    run.checkpoint(
        setup.to_save, every=4, unit="iteration", directory=tmp_path, name="state", overlap=overlap
    )
    with run:
        setup.trainer.run(setup.data, max_epochs=2)
        setup.seen[10] = setup.state()  # the final checkpoint holds the state after the run

    announced = ready(client, run_id)
    summary = [(e.iteration, e.data["reason"], e.data["epoch_end"]) for e in announced]
    # The run ends with its second epoch: that epoch's metrics score the final checkpoint.
    assert summary == [(4, "scheduled", False), (8, "scheduled", False), (10, "final", True)]
    for env in announced:
        assert Path(env.data["path"]).name == f"state_{env.iteration}.pt"
        assert_same_state(
            torch.load(env.data["path"], weights_only=True), setup.seen[env.iteration]
        )
    stats = run.checkpoint_stats
    assert [s.iteration for s in stats] == [4, 8, 10]
    assert all(s.blocked >= 0 and s.write is not None and s.error is None for s in stats)
    assert [s.sha256 for s in stats] == [e.data["sha256"] for e in announced]


def test_a_checkpoint_request_is_served_at_the_next_iteration_boundary(
    bus_url: str, client: BusClient, run_id: str, tmp_path: Path
) -> None:
    setup = Setup()
    setup.record_at(Events.ITERATION_COMPLETED)
    setup.record_at(Events.EPOCH_COMPLETED)  # what the epoch-end checkpoints hold
    run = BusRun(bus_url, run_id, checkpoint_dir=tmp_path)
    run.attach(setup.trainer)
    run.checkpoint(setup.to_save, every=2, unit="epoch")

    def request(engine: Engine) -> None:
        if engine.state.iteration in (2, 5):
            ask = control(run_id, "CHECKPOINT_REQUEST", {"reason": "look"}, "operator")
            last = client.append(TOPICS.control(run_id), ask)[-1]
            wait_until(lambda: run.control.last_id == last, "the request to be read")

    setup.trainer.add_event_handler(Events.ITERATION_COMPLETED, request)
    with run:
        setup.trainer.run(setup.data, max_epochs=2)

    summary = [(e.iteration, e.data["reason"], e.data["epoch_end"]) for e in ready(client, run_id)]
    # At iteration 5 the epoch ends: the snapshot waits for EPOCH_COMPLETED (after validation).
    assert summary == [(2, "requested", False), (5, "requested", True), (10, "scheduled", True)]
    for env in ready(client, run_id):
        assert_same_state(
            torch.load(env.data["path"], weights_only=True), setup.seen[env.iteration]
        )


def test_a_run_stopped_mid_epoch_takes_a_final_checkpoint_there(
    bus_url: str, client: BusClient, run_id: str, tmp_path: Path
) -> None:
    setup = Setup()
    run = BusRun(bus_url, run_id, checkpoint_dir=tmp_path)
    run.attach(setup.trainer)
    run.checkpoint(setup.to_save, every=1)
    setup.trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=7), lambda engine: engine.terminate()
    )
    with run:
        setup.trainer.run(setup.data, max_epochs=3)
        final = setup.state()
    announced = ready(client, run_id)
    summary = [(e.iteration, e.data["reason"], e.data["epoch_end"]) for e in announced]
    assert summary == [(5, "scheduled", True), (7, "final", False)]
    assert_same_state(torch.load(announced[-1].data["path"], weights_only=True), final)


def test_a_request_without_checkpointing_is_ignored(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    trainer = Engine(lambda engine, batch: 0.0)
    run = BusRun(bus_url, run_id)
    run.attach(trainer)

    def request(engine: Engine) -> None:
        ask = control(run_id, "CHECKPOINT_REQUEST", {"reason": "look"}, "operator")
        last = client.append(TOPICS.control(run_id), ask)[-1]
        wait_until(lambda: run.control.last_id == last, "the request to be read")

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), request)
    with run:
        trainer.run(range(3))
    assert run.finish().status == "completed"
    assert run.control.ignored[0].why == "this run takes no checkpoints (no checkpoint())"


def test_a_failed_run_takes_no_final_checkpoint(
    bus_url: str, client: BusClient, run_id: str, tmp_path: Path
) -> None:
    setup = Setup()
    run = BusRun(bus_url, run_id, checkpoint_dir=tmp_path)
    run.attach(setup.trainer)
    run.checkpoint(setup.to_save, every=1)
    setup.trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=7), lambda _: (_ for _ in ()).throw(RuntimeError("nan"))
    )
    with pytest.raises(RuntimeError, match="nan"), run:
        setup.trainer.run(setup.data, max_epochs=3)
    assert [e.iteration for e in ready(client, run_id)] == [5]


def test_checkpoint_arguments_are_checked(tmp_path: Path) -> None:
    run = BusRun("memory://checkpoint-arguments", "r1")
    try:
        model = nn.Linear(2, 2)
        with pytest.raises(ValueError, match="checkpoint\\(\\) needs a directory"):
            run.checkpoint({"model": model})
        with pytest.raises(ValueError, match="checkpoint unit must be one of"):
            run.checkpoint({"model": model}, unit="step", directory=tmp_path)
        with pytest.raises(ValueError, match="checkpoint every must be a positive int, got 0"):
            run.checkpoint({"model": model}, every=0, directory=tmp_path)
        with pytest.raises(TypeError, match="object 'x' \\(int\\) has no state_dict"):
            run.checkpoint({"x": 3}, directory=tmp_path)
        run.checkpoint({"model": model}, directory=tmp_path)
        with pytest.raises(RuntimeError, match="call checkpoint\\(\\) once"):
            run.checkpoint({"model": model}, directory=tmp_path)
    finally:
        run.close()


# ---- the snapshot --------------------------------------------------------------------------


def test_a_snapshot_does_not_change_when_training_goes_on() -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    frozen = snapshot({"model": model, "optimizer": optimizer})
    before = copy.deepcopy(frozen)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    assert all(torch.equal(frozen["model"][k], before["model"][k]) for k in before["model"])
    state = frozen["optimizer"]["state"]
    assert all(
        torch.equal(state[i]["exp_avg"], before["optimizer"]["state"][i]["exp_avg"]) for i in state
    )
    assert not torch.equal(frozen["model"]["weight"], model.weight.detach())


def test_a_snapshot_copies_containers_and_keeps_module_metadata() -> None:
    weight = torch.ones(2, requires_grad=True)
    state = OrderedDict(w=weight, nested={"l": [torch.zeros(1), 3], "t": (1, "a")})
    state._metadata = {"": {"version": 1}}
    copied = frozen_copy(state)
    assert isinstance(copied, OrderedDict) and copied._metadata == {"": {"version": 1}}
    assert not copied["w"].requires_grad
    assert copied["w"].untyped_storage().data_ptr() != weight.untyped_storage().data_ptr()
    copied["nested"]["l"].append(4)
    assert state["nested"]["l"] == [state["nested"]["l"][0], 3]
    assert copied["nested"]["t"] == (1, "a")


def test_snapshots_reuse_the_buffers_of_written_ones_and_copy_the_new_values() -> None:
    model = nn.Linear(3, 2)
    snapshots = Snapshots()
    first = snapshots.take({"model": model})
    snapshots.recycle(first)
    buffer = first["model"]["weight"]
    with torch.no_grad():
        model.weight.add_(1.0)
    second = snapshots.take({"model": model})
    assert second["model"]["weight"] is buffer  # no fresh memory for the same shape
    assert torch.equal(second["model"]["weight"], model.weight.detach())
    third = snapshots.take({"model": model})  # nothing recycled since: fresh buffers
    assert third["model"]["weight"] is not buffer


# ---- overlapped copies (trainer.bridge.staging) -------------------------------------------


def trained_once(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    """One forward, backward and optimizer step: the optimizer's state exists afterwards."""
    optimizer.zero_grad()
    model(x).square().mean().backward()
    optimizer.step()


def test_an_overlapped_snapshot_leaves_parameters_and_optimizer_state_for_later() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    optimizer = torch.optim.Adam(model.parameters())
    trained_once(model, optimizer, torch.randn(8, 3))
    reference = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict()})

    frozen, pending = Snapshots().take_overlapped({"model": model, "optimizer": optimizer})
    params = {p.data_ptr() for p in model.parameters()}
    moments = [t for s in optimizer.state.values() for t in s.values() if t.dim() > 0]
    assert {p.source.data_ptr() for p in pending if p.owner == "model"} == params
    assert {p.source.data_ptr() for p in pending if p.owner == "optimizer"} >= {
        t.data_ptr() for t in moments
    }
    # Batch-norm statistics change in the next forward pass, before any optimizer step: they
    # are copied at once, and that forward pass leaves the snapshot as it was.
    model(torch.randn(8, 3))
    assert torch.equal(frozen["model"]["1.running_mean"], reference["model"]["1.running_mean"])
    assert not torch.equal(model[1].running_mean, reference["model"]["1.running_mean"])

    assert copy_pending(pending) is None
    assert all(
        torch.equal(frozen["model"][k], v)
        for k, v in reference["model"].items()
        if k != "1.running_mean" and k != "1.running_var" and k != "1.num_batches_tracked"
    )
    for i, state in reference["optimizer"]["state"].items():
        assert all(torch.equal(frozen["optimizer"]["state"][i][k], v) for k, v in state.items())
    assert frozen["optimizer"]["param_groups"] == reference["optimizer"]["param_groups"]


def test_the_next_optimizer_step_waits_for_the_overlapped_copy() -> None:
    torch.manual_seed(0)
    model = nn.Linear(2000, 2000)  # 16 MB of weights and 32 MB of Adam moments to copy
    optimizer = torch.optim.Adam(model.parameters())
    x = torch.randn(4, 2000)
    trained_once(model, optimizer, x)
    model(x).square().mean().backward()  # the next step's gradients, ready to apply
    reference = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict()})

    stager = Stager()
    frozen, pending = Snapshots().take_overlapped({"model": model, "optimizer": optimizer})
    staging = stager.stage(pending, on_wait=lambda seconds: None)
    optimizer.step()  # at once: without the hook it would change what is being copied
    try:
        assert staging.copied.is_set() and staging.torn is None and staging.error is None
        assert not torch.equal(model.weight.detach(), reference["model"]["weight"])
        assert all(torch.equal(frozen["model"][k], v) for k, v in reference["model"].items())
        for i, state in reference["optimizer"]["state"].items():
            got = frozen["optimizer"]["state"][i]
            assert all(torch.equal(got[k], v) for k, v in state.items())
    finally:
        stager.close()


class _EditsTheModel:
    """A stateful object whose state_dict() edits the model in place at one iteration, after
    the model's own state was taken: the kind of change an overlapped copy cannot see coming."""

    def __init__(self, trainer: Engine, model: nn.Module, at: int) -> None:
        self.trainer, self.model, self.at = trainer, model, at

    def state_dict(self) -> dict:
        if self.trainer.state.iteration == self.at:
            with torch.no_grad():
                self.model.weight.mul_(2.0)
        return {}


def test_a_state_changed_in_place_while_being_copied_is_not_written_and_not_risked_again(
    bus_url: str, client: BusClient, run_id: str, tmp_path: Path
) -> None:
    setup = Setup()
    setup.record_at(Events.ITERATION_COMPLETED)
    to_save = {**setup.to_save, "editor": _EditsTheModel(setup.trainer, setup.model, at=2)}
    run = BusRun(bus_url, run_id)
    run.attach(setup.trainer)
    run.checkpoint(to_save, every=1, unit="iteration", directory=tmp_path)
    with run:
        setup.trainer.run(setup.data[:4], max_epochs=1)

    stats = run.checkpoint_stats
    assert [s.iteration for s in stats] == [1, 2, 3, 4]
    assert stats[1].error is not None
    assert "'model' was changed in place" in stats[1].error and "iteration 2" in stats[1].error
    assert [s.error for s in stats[2:]] == [None, None]
    announced = ready(client, run_id)
    assert [e.iteration for e in announced] == [1, 3, 4]  # nothing torn was announced
    # The checkpoints after the torn one were copied on the training thread, and are exact.
    for env in announced:
        loaded = torch.load(env.data["path"], weights_only=True)
        assert all(
            torch.equal(loaded["model"][k], v)
            for k, v in setup.seen[env.iteration]["model"].items()
        )
        assert loaded["editor"] == {}
