"""examples/diabetes: regression from the config, its metrics, and the plateau schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from trainer import config
from trainer.tasks.diabetes import diabetes_tensors
from trainer.tasks.mlp import mlp

from ._run import EXAMPLES, epoch_values, manifest, printed, read_json, run_cli

CONFIG = EXAMPLES / "diabetes" / "config.yaml"
QUIET = ["train.progress_bar=false"]


def test_diabetes_split_is_seeded_and_standardised_on_the_training_split():
    x, _ = load_diabetes(return_X_y=True)
    x_train, y_train, x_val, y_val = diabetes_tensors(0.2, seed=0)
    assert len(x_train) + len(x_val) == len(x) and len(x_val) == int(np.ceil(0.2 * len(x)))
    assert x_train.shape[1] == 10 and y_train.shape == (len(x_train), 1)
    for train_part in (x_train, y_train):  # centred and scaled by the training split only
        assert torch.allclose(train_part.mean(dim=0), torch.zeros(train_part.shape[1]), atol=1e-5)
        assert torch.allclose(train_part.std(dim=0, unbiased=False), torch.ones(1), atol=1e-5)
    assert not torch.allclose(x_val.mean(dim=0), torch.zeros(10), atol=1e-3)
    again = diabetes_tensors(0.2, seed=0)
    assert torch.equal(again[3], y_val) and not torch.equal(diabetes_tensors(0.2, seed=1)[3], y_val)


def predictions(checkpoint: Path) -> tuple[np.ndarray, np.ndarray]:
    """(targets, predictions) on the validation split of the model saved in `checkpoint`."""
    model = mlp(10, [16], 1)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    _, _, x_val, y_val = diabetes_tensors(0.2, seed=0)
    with torch.no_grad():
        return y_val.numpy(), model(x_val).numpy()


def trained(capsys, tmp_path: Path, *overrides: str) -> tuple[Path, str]:
    status, out, err = run_cli(
        capsys, "run", CONFIG, f"run.dir={tmp_path}/runs", *QUIET, *overrides
    )
    assert status == 0, err
    return Path(printed(r"^outputs: (.+)$", out)), out


def test_diabetes_example_reports_regression_metrics_of_its_model(capsys, tmp_path):
    run_dir, out = trained(capsys, tmp_path, "train.epochs=3")
    final = printed(r"^final validation (r2: .+) after 3 epochs", out)

    metrics = read_json(run_dir / "metrics.json")
    assert (metrics["status"], metrics["task"]) == ("completed", "regression")
    val = metrics["val"]
    assert set(val) == {"r2", "loss", "mse", "mae"}
    assert final == (
        f"r2: {val['r2']:.4f} (loss {val['loss']:.4f}, mse {val['mse']:.4f}, mae {val['mae']:.4f})"
    )
    assert config.load(run_dir / "config.yaml").sched.name == "plateau"

    # The reported metrics are the saved model's, scored with scikit-learn on the same split.
    listed = manifest(run_dir)
    checkpoints = run_dir / "checkpoints"
    y, predicted = predictions(checkpoints / listed["latest"])
    assert r2_score(y, predicted) == pytest.approx(val["r2"], rel=1e-5)
    assert mean_squared_error(y, predicted) == pytest.approx(val["mse"], rel=1e-5)
    assert mean_absolute_error(y, predicted) == pytest.approx(val["mae"], rel=1e-5)
    assert val["loss"] == pytest.approx(val["mse"], rel=1e-6)  # the MSE loss, batch-weighted
    # The best checkpoint is the epoch of the highest R2 (checkpoint.score r2, mode max).
    y, predicted = predictions(checkpoints / listed["best"])
    assert r2_score(y, predicted) == pytest.approx(max(epoch_values("val_r2", out)), abs=5e-5)
    # Patience 3 cannot run out in 3 epochs: the learning rate is still the configured one.
    latest = torch.load(checkpoints / listed["latest"], weights_only=True)
    assert latest["optimizer"]["param_groups"][0]["lr"] == 0.003


def final_lr(run_dir: Path) -> float:
    latest = manifest(run_dir)["latest"]
    state = torch.load(run_dir / "checkpoints" / latest, weights_only=True)
    return state["optimizer"]["param_groups"][0]["lr"]


def test_plateau_schedule_cuts_the_lr_when_the_val_loss_stalls_and_resumes(capsys, tmp_path):
    # A tiny lr barely moves the val loss; with threshold 0.5 only halving it would count as
    # progress, and with patience 0 every epoch after the first cuts the lr tenfold.
    stalled = [
        "optim.lr=1e-5",
        "sched.patience=0",
        "sched.threshold=0.5",
        "sched.factor=0.1",
        "early_stopping.patience=null",
    ]
    run_dir, out = trained(capsys, tmp_path, "train.epochs=3", *stalled)
    losses = epoch_values("val_loss", out)
    assert len(losses) == 3 and min(losses[1:]) > 0.5 * losses[0]  # it did stall
    assert epoch_values("lr", out) == pytest.approx([1e-5, 1e-6, 1e-7])
    assert final_lr(run_dir) == pytest.approx(1e-7, rel=1e-9)

    # Resumed, the schedule goes on from its saved state (best loss of epoch 1, no progress
    # since): epoch 4 cuts again. A fresh schedule would take epoch 4 as its first best.
    status, out, err = run_cli(
        capsys, "run", "--resume", "latest", "--run-dir", run_dir, "train.epochs=4", *QUIET
    )
    assert status == 0, err
    assert final_lr(run_dir) == pytest.approx(1e-8, rel=1e-9)


@pytest.mark.parametrize(
    ("override", "key", "hint"),
    [
        ("checkpoint.score=accuracy", "checkpoint.score", "loss, mse, mae, r2"),
        ("checkpoint.mode=min", "checkpoint.mode", "checkpoint.mode=max"),
        ("early_stopping.mode=max", "early_stopping.mode", "early_stopping.mode=min"),
        ("early_stopping.metric=f1", "early_stopping.metric", "loss, mse, mae, r2"),
        ("early_stopping.split=test", "early_stopping.split", "train or val"),
        ("sched.metric=accuracy", "sched.metric", "loss, mse, mae, r2"),
        ("sched.name=cosine", "sched.name", "plateau"),
    ],
)
def test_keys_naming_metrics_the_task_lacks_are_refused_before_anything_runs(
    capsys, tmp_path, override, key, hint
):
    status, _, err = run_cli(capsys, "run", CONFIG, f"run.dir={tmp_path}/runs", override)
    assert status == 2
    assert err.startswith("trainer: error:") and repr(key) in err and hint in err
    assert not (tmp_path / "runs").exists()


def test_a_classification_metric_with_the_wrong_mode_is_refused_too(capsys, tmp_path):
    example = EXAMPLES / "digits" / "config.yaml"
    args = ["run", example, f"run.dir={tmp_path}/runs", "early_stopping.metric=loss"]
    status, _, err = run_cli(capsys, *args)
    assert status == 2 and "'early_stopping.mode'" in err and "early_stopping.mode=min" in err
    assert not (tmp_path / "runs").exists()
