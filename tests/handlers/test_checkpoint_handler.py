"""The Checkpoint handler on a real Engine: retention, names, atomicity and exact resume."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from trainer import Engine, Events
from trainer.checkpoint_store import CheckpointError, RNGState
from trainer.handlers import Checkpoint, DiskSaver, global_step_from_engine
from trainer.retention import RetentionPolicy

from .toy import make_toy, scripted


def pt_files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


def test_n_saved_keeps_the_latest_iterations(tmp_path: Path) -> None:
    toy = make_toy(n_batches=6)
    handler = Checkpoint({"model": toy.model}, tmp_path, n_saved=2)
    toy.trainer.add_event_handler(Events.ITERATION_COMPLETED(every=2), handler)
    toy.trainer.run(toy.data, max_epochs=2)
    # Saves at iterations 2, 4, ..., 12; the last two survive.
    assert pt_files(tmp_path) == ["model_10.pt", "model_12.pt"]
    assert handler.last_checkpoint == tmp_path / "model_12.pt"
    weights = torch.load(tmp_path / "model_12.pt", weights_only=True)
    assert torch.equal(weights["0.weight"], toy.model[0].weight)


def test_several_objects_go_into_one_file_named_checkpoint(tmp_path: Path) -> None:
    toy = make_toy(n_batches=3)
    to_save = {"model": toy.model, "optimizer": toy.optimizer, "trainer": toy.trainer}
    handler = Checkpoint(to_save, DiskSaver(tmp_path), filename_prefix="run", n_saved=None)
    toy.trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    toy.trainer.run(toy.data, max_epochs=2)
    assert pt_files(tmp_path) == ["run_checkpoint_3.pt", "run_checkpoint_6.pt"]
    loaded = torch.load(tmp_path / "run_checkpoint_3.pt", weights_only=True)
    assert sorted(loaded) == ["model", "optimizer", "trainer"]
    assert loaded["trainer"]["iteration"] == 3


def test_best_k_by_score_with_global_step_transform(tmp_path: Path) -> None:
    toy = make_toy(n_batches=2)
    snapshots: dict[int, torch.Tensor] = {}
    toy.trainer.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda e: snapshots.__setitem__(e.state.epoch + 1, toy.model[0].weight.detach().clone()),
    )
    handler = Checkpoint(
        {"model": toy.model},
        tmp_path,
        filename_prefix="best",
        score_function=scripted([0.3, 0.9, 0.5, 0.7, 0.1]),
        score_name="acc",
        n_saved=2,
        global_step_transform=lambda e: e.state.epoch + 1,
    )
    toy.trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    toy.trainer.run(toy.data, max_epochs=5)
    # The two highest scores are 0.9 (epoch 2) and 0.7 (epoch 4).
    assert pt_files(tmp_path) == ["best_model_2_acc=0.9000.pt", "best_model_4_acc=0.7000.pt"]
    for epoch, name in [(2, "best_model_2_acc=0.9000.pt"), (4, "best_model_4_acc=0.7000.pt")]:
        saved = torch.load(tmp_path / name, weights_only=True)
        assert torch.equal(saved["0.weight"], snapshots[epoch])


def test_a_nan_score_stays_out_of_a_name_the_step_makes_unique(tmp_path: Path) -> None:
    toy = make_toy(n_batches=2)
    handler = Checkpoint(
        {"model": toy.model},
        tmp_path,
        score_function=scripted([float("nan"), 0.5]),
        score_name="acc",
        retention=RetentionPolicy(keep_last=2, keep_best=1),
        global_step_transform=lambda e: e.state.epoch + 1,
    )
    toy.trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    toy.trainer.run(toy.data, max_epochs=2)
    assert pt_files(tmp_path) == ["model_1.pt", "model_2_acc=0.5000.pt"]


def test_equal_scores_keep_the_newer_checkpoint(tmp_path: Path) -> None:
    toy = make_toy(n_batches=2)
    handler = Checkpoint(
        {"model": toy.model},
        tmp_path,
        score_function=scripted([0.5, 0.5, 0.2]),
        n_saved=1,
        global_step_transform=lambda e: e.state.epoch + 1,
    )
    toy.trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    toy.trainer.run(toy.data, max_epochs=3)
    assert pt_files(tmp_path) == ["model_2_0.5000.pt"]


def test_score_name_alone_reads_that_metric(tmp_path: Path) -> None:
    toy = make_toy(n_batches=2)
    losses = iter([0.8, 0.4, 0.6])
    toy.trainer.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda e: e.state.metrics.__setitem__("neg_loss", -next(losses)),
        priority=10,
    )
    handler = Checkpoint({"model": toy.model}, tmp_path, score_name="neg_loss", n_saved=1)
    toy.trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    toy.trainer.run(toy.data, max_epochs=3)
    assert pt_files(tmp_path) == ["model_neg_loss=-0.4000.pt"]


def test_global_step_from_the_trainer_names_evaluator_checkpoints(tmp_path: Path) -> None:
    toy = make_toy(n_batches=4)
    evaluator = Engine(lambda engine, batch: None)
    handler = Checkpoint(
        {"model": toy.model},
        tmp_path,
        n_saved=None,
        global_step_transform=global_step_from_engine(toy.trainer),
    )
    evaluator.add_event_handler(Events.COMPLETED, handler)
    toy.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: evaluator.run(toy.data[:1]))
    toy.trainer.run(toy.data, max_epochs=3)
    assert pt_files(tmp_path) == ["model_1.pt", "model_2.pt", "model_3.pt"]


def test_a_failing_save_keeps_the_previous_checkpoint_and_leaves_no_temp(tmp_path: Path) -> None:
    class Flaky:
        """Saveable once, then returns something torch.save cannot pickle."""

        calls = 0

        def state_dict(self) -> dict:
            self.calls += 1
            return {"n": self.calls} if self.calls == 1 else {"n": lambda: None}

        def load_state_dict(self, state: dict) -> None:
            pass

    toy = make_toy(n_batches=2)
    handler = Checkpoint({"model": toy.model, "flaky": Flaky()}, tmp_path, n_saved=1)
    toy.trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    with pytest.raises(CheckpointError, match="checkpoint_4"):
        toy.trainer.run(toy.data, max_epochs=2)
    assert pt_files(tmp_path) == ["checkpoint_2.pt"]
    assert torch.load(tmp_path / "checkpoint_2.pt", weights_only=True)["flaky"] == {"n": 1}
    assert [r.name for r in handler.saved] == ["checkpoint_2.pt"]


def test_require_empty_refuses_a_directory_with_checkpoints(tmp_path: Path) -> None:
    (tmp_path / "old.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"old\.pt.*require_empty"):
        DiskSaver(tmp_path)
    with pytest.raises(ValueError, match=r"old\.pt.*require_empty"):
        Checkpoint({"model": torch.nn.Linear(1, 1)}, tmp_path)
    DiskSaver(tmp_path, require_empty=False)


def test_objects_without_state_dict_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="'data'"):
        Checkpoint({"data": [1, 2, 3]}, tmp_path)
    with pytest.raises(ValueError, match="keeps no checkpoint"):
        Checkpoint({"model": torch.nn.Linear(1, 1)}, tmp_path, retention=RetentionPolicy(0, 0))
    with pytest.raises(TypeError, match="global_step_transform"):
        Checkpoint({"model": torch.nn.Linear(1, 1)}, tmp_path, global_step_transform=lambda e, n: 0)


def test_resume_from_a_mid_epoch_checkpoint_is_bit_identical(tmp_path: Path) -> None:
    """Train 3 epochs of 5 batches straight; separately resume from iteration 7 and finish."""
    reference = make_toy(dropout=0.3)
    reference.trainer.run(reference.data, max_epochs=3)

    first = make_toy(dropout=0.3)
    to_save = {
        "model": first.model,
        "optimizer": first.optimizer,
        "trainer": first.trainer,
        "rng": RNGState(),
    }
    handler = Checkpoint(to_save, tmp_path, n_saved=None)
    first.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=7), handler)
    first.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=9), lambda e: e.terminate())
    first.trainer.run(first.data, max_epochs=3)
    assert pt_files(tmp_path) == ["checkpoint_7.pt"]

    torch.manual_seed(1234)  # a fresh process would start from other RNG states
    resumed = make_toy(dropout=0.3, seed=5)  # other initial weights: all must come from the file
    to_load = {
        "model": resumed.model,
        "optimizer": resumed.optimizer,
        "trainer": resumed.trainer,
        "rng": RNGState(),
    }
    Checkpoint.load_objects(to_load, tmp_path / "checkpoint_7.pt")
    assert resumed.trainer.state.iteration == 7
    state = resumed.trainer.run(reference.data)
    assert state.iteration == 15
    for got, want in zip(resumed.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(got, want)


def test_load_objects_accepts_a_loaded_dict_and_a_bare_single_object(tmp_path: Path) -> None:
    toy = make_toy()
    toy.trainer.add_event_handler(Events.COMPLETED, Checkpoint({"model": toy.model}, tmp_path))
    toy.trainer.run(toy.data)
    other = make_toy(seed=3)
    checkpoint = torch.load(tmp_path / "model_5.pt", weights_only=True)
    Checkpoint.load_objects({"model": other.model}, checkpoint)
    assert torch.equal(other.model[2].weight, toy.model[2].weight)


def test_loading_a_corrupt_checkpoint_names_the_file(tmp_path: Path) -> None:
    toy = make_toy()
    toy.trainer.add_event_handler(Events.COMPLETED, Checkpoint({"model": toy.model}, tmp_path))
    toy.trainer.run(toy.data)
    path = tmp_path / "model_5.pt"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        Checkpoint.load_objects({"model": toy.model}, path)


def test_retention_carries_on_after_the_checkpointer_state_is_restored(tmp_path: Path) -> None:
    toy = make_toy(n_batches=2)
    handler = Checkpoint({"model": toy.model}, tmp_path, n_saved=2)
    toy.trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    toy.trainer.run(toy.data, max_epochs=2)
    assert pt_files(tmp_path) == ["model_2.pt", "model_4.pt"]

    resumed = make_toy(n_batches=2)
    resumed.trainer.load_state_dict(toy.trainer.state_dict())
    saver = DiskSaver(tmp_path, require_empty=False)
    again = Checkpoint({"model": resumed.model}, saver, n_saved=2)
    again.load_state_dict(handler.state_dict())
    resumed.trainer.add_event_handler(Events.EPOCH_COMPLETED, again)
    resumed.trainer.run(resumed.data, max_epochs=3)
    # The restored handler knows model_2.pt and prunes it when model_6.pt arrives.
    assert pt_files(tmp_path) == ["model_4.pt", "model_6.pt"]
