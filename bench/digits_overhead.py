"""Cost of training under the Engine, against a plain PyTorch loop and against Ignite.

The digits MLP (64-128-10, batch 64, Adam, one thread) trained three ways on the same data:
a plain loop that tracks the epoch's mean loss and accuracy by hand, this Engine with `Loss`
and `Accuracy` attached, and Ignite's Engine with its equivalent metrics (`Average` of the
loss, `Accuracy`). The contenders take turns of a few epochs each, so machine noise hits them
alike. Prints seconds per epoch (median over turns), then this/plain (target <= 1.05) and
Ignite/plain as medians of the ratios of adjacent turns, and the same ratio for the two loops
without any metrics, which separates the Engine's own cost from the metrics' cost.

    .venv/bin/python bench/digits_overhead.py [--rounds R] [--epochs N]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainer.tasks.digits import digits_tensors
from trainer.tasks.mlp import mlp

BlockRunner = Callable[[DataLoader, int], float]


class Job:
    """A fresh model and optimizer with the same initial weights for every contender."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = mlp(64, [128], 10)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = nn.CrossEntropyLoss()

    def step(self, engine: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
        """One training step; the output carries what the metrics read."""
        x, y = batch
        self.optimizer.zero_grad()
        y_pred = self.model(x)
        loss = self.loss_fn(y_pred, y)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "y_pred": y_pred.detach(), "y": y}


def plain(loader: DataLoader, epochs: int) -> float:
    """A hand-written loop computing the same epoch loss and accuracy as the metrics."""
    job = Job(seed=0)
    start = time.perf_counter()
    for _ in range(epochs):
        total_loss, batches, correct, seen = 0.0, 0, 0, 0
        for batch in loader:
            out = job.step(None, batch)
            total_loss += out["loss"]
            batches += 1
            correct += int((out["y_pred"].argmax(dim=1) == out["y"]).sum())
            seen += len(out["y"])
        metrics = {"loss": total_loss / batches, "accuracy": correct / seen}
    assert "accuracy" in metrics
    return time.perf_counter() - start


def plain_untracked(loader: DataLoader, epochs: int) -> float:
    """A hand-written loop that only trains."""
    job = Job(seed=0)
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            job.step(None, batch)
    return time.perf_counter() - start


def ours(loader: DataLoader, epochs: int, with_metrics: bool = True) -> float:
    """This Engine with Loss and Accuracy attached."""
    from trainer import Engine
    from trainer.metrics import Accuracy, Loss

    job = Job(seed=0)
    engine = Engine(job.step)
    if with_metrics:
        engine.add_metric(Loss(), "loss")
        engine.add_metric(Accuracy(), "accuracy")
    start = time.perf_counter()
    engine.run(loader, max_epochs=epochs)
    seconds = time.perf_counter() - start
    assert with_metrics == ("accuracy" in engine.state.metrics)
    return seconds


def ours_untracked(loader: DataLoader, epochs: int) -> float:
    """This Engine with no metrics."""
    return ours(loader, epochs, with_metrics=False)


def ignite(loader: DataLoader, epochs: int) -> float:
    """Ignite's Engine with the equivalent metrics."""
    from ignite.engine import Engine
    from ignite.metrics import Accuracy, Average

    job = Job(seed=0)
    engine = Engine(job.step)
    Average(output_transform=lambda out: out["loss"]).attach(engine, "loss")
    Accuracy(output_transform=lambda out: (out["y_pred"], out["y"])).attach(engine, "accuracy")
    start = time.perf_counter()
    engine.run(loader, max_epochs=epochs)
    seconds = time.perf_counter() - start
    assert "accuracy" in engine.state.metrics
    return seconds


def digits_loader() -> DataLoader:
    """The digits training split, batches of 64, shuffled from a fixed seed."""
    x_train, y_train, _, _ = digits_tensors(0.2, seed=0)
    return DataLoader(
        TensorDataset(x_train, y_train),
        batch_size=64,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="turns per contender")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per turn")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    loader = digits_loader()
    contenders: dict[str, BlockRunner] = {
        "plain loop": plain,
        "this Engine": ours,
        "Ignite": ignite,
        "plain, no metrics": plain_untracked,
        "this, no metrics": ours_untracked,
    }
    for run in contenders.values():  # warm-up: imports, allocator, autograd caches
        run(loader, 1)
    per_epoch: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, run in contenders.items():
            per_epoch[name].append(run(loader, args.epochs) / args.epochs)

    import ignite as ignite_package

    median = {name: statistics.median(t) for name, t in per_epoch.items()}
    print(
        f"digits MLP 64-128-10, batch 64, Adam, 1 thread, {len(loader)} iterations/epoch; "
        f"{args.rounds} turns of {args.epochs} epochs each; Ignite {ignite_package.__version__}"
    )
    for name, seconds in median.items():
        print(f"  {name:18s} {seconds * 1e3:8.3f} ms/epoch (median)")

    def ratio(name: str, reference: str) -> float:
        # Turns that ran back to back share the machine's load: compare them pairwise.
        pairs = zip(per_epoch[name], per_epoch[reference], strict=True)
        return statistics.median(ours / ref for ours, ref in pairs)

    print("median of per-turn ratios:")
    print(f"  this/plain   = {ratio('this Engine', 'plain loop'):.3f}  (target <= 1.05)")
    print(f"  Ignite/plain = {ratio('Ignite', 'plain loop'):.3f}")
    print(f"  without metrics, this/plain = {ratio('this, no metrics', 'plain, no metrics'):.3f}")


if __name__ == "__main__":
    main()
