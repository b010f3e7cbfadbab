"""A Lightning program on the bus, as a user writes one: the digits MLP with a BusCallback.

Run by tests/adapters/test_lightning.py as a process of its own (with `--devices 2`, Lightning
launches the second rank itself: DDP over gloo on CPU). Prints one line per rank at the end,
`rank R stopped at step S epoch E status STATUS by BY`, for the tests to read.

`--step-delay` paces each training step (so that a stop has something to land in); `--stop-rank`
and `--stop-step` make one rank's program set `trainer.should_stop` alone, as a remote stop in a
callback of that rank would.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import timedelta
from typing import Any

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, TensorDataset

from trainer.adapters.lightning import BusCallback
from trainer.tasks.digits import digits_tensors


class DigitsMLP(L.LightningModule):
    """64-32-10, Adam; val loss and a torchmetrics micro accuracy logged per epoch."""

    def __init__(
        self, lr: float = 0.01, hidden: int = 32, step_delay: float = 0.0, fail_step: int = -1
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
        )
        self.val_accuracy = torchmetrics.classification.MulticlassAccuracy(10, average="micro")

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.hparams.step_delay:
            time.sleep(self.hparams.step_delay)
        if self.global_step == self.hparams.fail_step:
            raise RuntimeError(f"the program failed at step {self.global_step}")
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return {"loss": loss}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.net(x)
        self.val_accuracy(logits, y)
        self.log("val_loss", torch.nn.functional.cross_entropy(logits, y))
        self.log("val_accuracy", self.val_accuracy)

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class StopOnOneRank(L.Callback):
    """Sets should_stop on one rank only, at one step: what deadlocks DDP without agreement."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            trainer.should_stop = True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bus", default=None)
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--barrier", action="store_true")
    parser.add_argument("--stop-sync-every", type=int, default=10)
    parser.add_argument("--stop-rank", type=int, default=None)
    parser.add_argument("--stop-step", type=int, default=None)
    parser.add_argument("--fail-step", type=int, default=-1)
    parser.add_argument("--pl-patience", type=int, default=None, help="Lightning's EarlyStopping")
    parser.add_argument("--root", default=".")
    parser.add_argument("--checkpoint-dir", default=None)
    args = parser.parse_args()

    torch.manual_seed(0)
    x_train, y_train, x_val, y_val = digits_tensors(0.2, 0)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=args.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=256)
    bus_callback = BusCallback(
        args.bus,
        args.run_id,
        barrier=args.barrier,
        stop_sync_every=args.stop_sync_every,
        checkpoint_dir=args.checkpoint_dir,
        # The workers read their settings from the run's config, as for `trainer run`.
        config={"early_stopping": {"metric": "accuracy", "split": "val", "mode": "max"}},
    )
    callbacks: list[Any] = [bus_callback]
    if args.pl_patience is not None:
        callbacks.append(
            EarlyStopping("val_accuracy", min_delta=0.01, patience=args.pl_patience, mode="max")
        )
    if args.stop_rank is not None:
        callbacks.insert(0, StopOnOneRank(args.stop_rank, args.stop_step))
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=args.devices,
        # A collective that waits longer than this fails instead of hanging the test.
        strategy=DDPStrategy(timeout=timedelta(seconds=60)) if args.devices > 1 else "auto",
        callbacks=callbacks,
        default_root_dir=args.root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(
        DigitsMLP(lr=args.lr, step_delay=args.step_delay, fail_step=args.fail_step), train, val
    )
    end = bus_callback.end
    assert end is not None
    print(
        f"rank {trainer.global_rank} stopped at step {trainer.global_step} epoch "
        f"{trainer.current_epoch} status {end.status} by {end.by} pid {os.getpid()}",
        flush=True,
    )


if __name__ == "__main__":
    main()
