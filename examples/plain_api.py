"""The digits classifier written against the API directly: no `trainer run`, no bus, no workers.

    python examples/plain_api.py
    python examples/plain_api.py train.epochs=3 optim.lr=0.01 --tracking.dir /tmp/runs

What it shows: an `Engine` for training and one for evaluation, `Loss` and `Accuracy` attached
to the evaluator, `EarlyStopping` and `Checkpoint` (the best 2 by validation accuracy) on the
evaluator's COMPLETED, a `ProgressBar` (on a terminal); the config built from a dict, with
command-line overrides merged on top (`trainer.config`); each epoch's metrics logged to a
tracking run (`trainer.tracking`: `<tracking.dir>/<run id>/` with metrics.jsonl, summary.json
and TensorBoard scalars; the checkpoints go in its `checkpoints/`). `trainer runs ls` lists it.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer import Engine, Events, config, tracking
from trainer.handlers import Checkpoint, DiskSaver, EarlyStopping, ProgressBar
from trainer.metrics import Accuracy, Loss

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {"batch_size": 64, "val_fraction": 0.2},
    "model": {"hidden": 64},
    "optim": {"lr": 0.003},
    "train": {"epochs": 10, "patience": 3},  # early stopping after 3 epochs without progress
    # dir null: $TRAINER_RUNS_DIR, else ./runs
    "tracking": {"project": "plain-api", "name": None, "dir": None},
}


def digits_split(val_fraction: float, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's digits, pixels scaled to [0, 1], split stratified and seeded."""
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x / 16.0, y, test_size=val_fraction, random_state=seed, stratify=y
    )

    def dataset(x: Any, y: Any) -> TensorDataset:
        return TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))

    return dataset(x_train, y_train), dataset(x_val, y_val)


def build_model(hidden: int) -> nn.Module:
    """An MLP 64 -> hidden -> 10 (class logits)."""
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def _keys(tree: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from _keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def load_config(argv: Sequence[str]) -> config.Config:
    """DEFAULTS with the command line's `key=value` (or `--key value`) overrides on top."""
    overrides = config.from_cli_dotlist(argv)
    # A config without a schema takes any key: refuse a misspelt one rather than ignore it.
    unknown = sorted(set(_keys(overrides.to_dict())) - set(_keys(DEFAULTS)))
    if unknown:
        known = ", ".join(_keys(DEFAULTS))
        raise SystemExit(f"plain_api.py: unknown config key(s) {unknown}; known keys: {known}")
    return config.merge(config.from_dict(DEFAULTS), overrides)


def main(argv: Sequence[str]) -> int:
    """Train as the config says, log to a tracking run; print its directory and the result."""
    cfg = load_config(argv)
    torch.manual_seed(cfg.seed)
    train_set, val_set = digits_split(cfg.data.val_fraction, cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_set, batch_size=cfg.data.batch_size, shuffle=True, generator=generator
    )
    val_loader = DataLoader(val_set, batch_size=512)

    model = build_model(cfg.model.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    loss_fn = nn.CrossEntropyLoss()

    def train_step(engine: Engine, batch: Any) -> dict[str, float]:
        x, y = batch
        model.train()
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}

    def eval_step(engine: Engine, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        model.eval()
        with torch.no_grad():
            return model(x), y

    trainer, evaluator = Engine(train_step), Engine(eval_step)
    trainer.add_metric(Loss(), "loss")  # the mean of the steps' output["loss"]
    evaluator.add_metrics({"loss": Loss(loss_fn), "accuracy": Accuracy()})
    ProgressBar(disable=None).attach(trainer, output_transform=lambda out: out)

    t = cfg.tracking
    with tracking.run(project=t.project, name=t.name, config=cfg.to_dict(), dir=t.dir) as run:
        # With tracking disabled the run has no directory: the checkpoints go to a temporary one.
        root = run.dir if run.dir is not None else Path(tempfile.mkdtemp(prefix="plain-api-"))
        checkpoint = Checkpoint(
            {"model": model, "optimizer": optimizer, "trainer": trainer},
            DiskSaver(root / "checkpoints"),
            score_name="accuracy",  # reads evaluator.state.metrics["accuracy"]; higher is better
            n_saved=2,
            global_step_transform=lambda _: trainer.state.iteration,
        )
        stopper = EarlyStopping(
            cfg.train.patience, lambda e: e.state.metrics["accuracy"], trainer, mode="max"
        )

        @trainer.on(Events.EPOCH_COMPLETED)
        def validate(engine: Engine) -> None:
            evaluator.run(val_loader)  # its COMPLETED runs the checkpoint and early stopping
            val = evaluator.state.metrics
            row = {"epoch": engine.state.epoch + 1, "train/loss": engine.state.metrics["loss"]}
            row |= {f"val/{name}": float(value) for name, value in val.items()}
            run.log(row, step=engine.state.iteration)
            print(
                f"epoch {engine.state.epoch + 1}/{engine.state.max_epochs}  "
                f"train_loss {row['train/loss']:.4f}  val_loss {val['loss']:.4f}  "
                f"val_accuracy {val['accuracy']:.4f}",
                flush=True,
            )

        evaluator.add_event_handler(Events.COMPLETED, checkpoint)
        evaluator.add_event_handler(Events.COMPLETED, stopper)
        trainer.run(train_loader, max_epochs=cfg.train.epochs)

        best = max(checkpoint.saved, key=lambda record: record.score)
        print(f"best validation accuracy: {best.score:.4f} in {root / 'checkpoints' / best.name}")
        print(f"tracking run: {run.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
