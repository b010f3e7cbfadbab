"""examples/digits: the complete config of the main job, run end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn.metrics import accuracy_score

from trainer import config
from trainer.tasks.digits import digits_tensors
from trainer.tasks.mlp import mlp

from ._run import EXAMPLES, epoch_values, manifest, printed, read_json, run_cli

CONFIG = EXAMPLES / "digits" / "config.yaml"


def test_the_complete_config_is_the_job_of_the_short_one():
    # examples/digits.yaml stays the short form the README runs; the two must not drift apart.
    assert config.load(CONFIG) == config.load(EXAMPLES / "digits.yaml")


def accuracy_of(checkpoint: Path) -> float:
    """Validation accuracy of a saved model, scored with scikit-learn on the same split."""
    model = mlp(64, [128], 10)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    _, _, x_val, y_val = digits_tensors(0.2, seed=0)
    with torch.no_grad():
        predicted = model(x_val).argmax(dim=1)
    return accuracy_score(y_val.numpy(), predicted.numpy())


def test_digits_example_trains_validates_and_keeps_checkpoints(capsys, tmp_path):
    overrides = ["train.epochs=3", f"run.dir={tmp_path}/runs"]
    status, out, err = run_cli(capsys, "run", CONFIG, *overrides)
    assert status == 0, err
    run_dir = Path(printed(r"^outputs: (.+)$", out))
    final = float(printed(r"^final validation accuracy: ([0-9.]+) \(loss [0-9.]+\)", out))

    assert config.load(run_dir / "config.yaml") == config.load(CONFIG, overrides)
    metrics = read_json(run_dir / "metrics.json")
    assert (metrics["status"], metrics["epochs"], metrics["task"]) == (
        "completed",
        3,
        "classification",
    )
    assert set(metrics["val"]) == {"accuracy", "loss"}
    assert round(metrics["val"]["accuracy"], 4) == final

    listed = manifest(run_dir)
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.pt")) == sorted(
        e["file"] for e in listed["checkpoints"]
    )
    # The last checkpoint holds the model the final accuracy was measured on ...
    assert accuracy_of(checkpoints / listed["latest"]) == pytest.approx(metrics["val"]["accuracy"])
    # ... and the best is the epoch of the highest validation accuracy (checkpoint.mode max).
    assert accuracy_of(checkpoints / listed["best"]) == pytest.approx(
        max(epoch_values("val_accuracy", out)), abs=5e-5
    )
