"""What each rank runs in the distributed tests, and the fixed data sets they share.

Imported both by the spawned ranks and by the tests, which compute the single-process
references from the same data.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from trainer import Engine, Events
from trainer.metrics import (
    Accuracy,
    Average,
    ConfusionMatrix,
    Distributed,
    Loss,
    MeanAbsoluteError,
    MeanSquaredError,
    Metric,
    NotComputableError,
    Precision,
    R2Score,
    TopKCategoricalAccuracy,
)

N = 400
BATCH = 50


def classification_data() -> dict[str, torch.Tensor]:
    """Labels 0-9, predicted labels (a quarter wrong) and logits; the second half has labels
    and predictions 0-6 only, so a rank fed it grows smaller per-class states."""
    g = torch.Generator().manual_seed(0)
    half = N // 2
    high = torch.cat([torch.full((half,), 10), torch.full((N - half,), 7)])
    y = (torch.rand(N, generator=g) * high).long()
    guess = (torch.rand(N, generator=g) * high).long()
    wrong = torch.rand(N, generator=g) < 0.25
    y_pred = torch.where(wrong, guess, y)
    logits = torch.randn(N, 10, generator=g, dtype=torch.float64) + 2.0 * F.one_hot(y, 10)
    return {"y": y, "y_pred": y_pred, "logits": logits}


def regression_data() -> dict[str, torch.Tensor]:
    """Two-output targets and noisy predictions of them, float64."""
    g = torch.Generator().manual_seed(1)
    y = torch.randn(N, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0]) + 5.0
    y_pred = y + 0.5 * torch.randn(N, 2, generator=g, dtype=torch.float64)
    return {"y": y, "y_pred": y_pred}


class ValueRange(Metric):
    """The smallest target overall (a number, reduced by min) and the largest of each column
    (a tensor, reduced by max): the built-in metrics only declare sums."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("low", float("inf"), "min")
        self.add_state("high", torch.full((2,), float("-inf")), "max")

    def update(self, output: Any) -> None:
        """Fold in the targets of one `(y_pred, y)` batch."""
        _, y = output
        self._state["low"] = min(self._state["low"], float(y.min()))
        self._state["high"] = torch.maximum(self._state["high"], y.amax(dim=0))

    def compute(self) -> tuple[float, torch.Tensor]:
        """(smallest target, largest target of each column)."""
        if self._state["low"] == float("inf"):
            raise NotComputableError("ValueRange needs at least one sample")
        return self._state["low"], self._state["high"].clone()


def metric_factories() -> dict[str, tuple[Any, str]]:
    """Metric name -> (factory, data key: "labels", "logits", "regression", "column")."""
    return {
        "accuracy": (Accuracy, "labels"),
        "precision_per_class": (lambda: Precision(average=None), "labels"),
        "confusion": (ConfusionMatrix, "labels"),
        "loss": (lambda: Loss(F.cross_entropy), "logits"),
        "top3": (lambda: TopKCategoricalAccuracy(k=3), "logits"),
        "mse": (MeanSquaredError, "regression"),
        "mae": (MeanAbsoluteError, "regression"),
        "r2": (R2Score, "column"),
        "r2_two_outputs": (R2Score, "regression"),
        "range": (ValueRange, "regression"),
    }


def pairs(kind: str, part: slice) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The `(y_pred, y)` batches of `kind` for the samples in `part`."""
    c, r = classification_data(), regression_data()
    y_pred, y = {
        "labels": (c["y_pred"], c["y"]),
        "logits": (c["logits"], c["y"]),
        "regression": (r["y_pred"], r["y"]),
        "column": (r["y_pred"][:, 0], r["y"][:, 0]),
    }[kind]
    y_pred, y = y_pred[part], y[part]
    return [(y_pred[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(y), BATCH)]


def half(rank: int, world_size: int) -> slice:
    """The contiguous share of the N samples fed to `rank`."""
    return slice(rank * N // world_size, (rank + 1) * N // world_size)


def metrics_program(rank: int, world_size: int) -> dict[str, Any]:
    """Feed wrapped metrics this rank's share of the data; report their values and checks."""
    values: dict[str, Any] = {}
    for name, (make, kind) in metric_factories().items():
        metric = Distributed(make())
        for batch in pairs(kind, half(rank, world_size)):
            metric.update(batch)
        before = metric.state_dict()
        values[name] = metric.compute()
        values[f"{name}:again"] = metric.compute()
        after = metric.state_dict()
        values[f"{name}:state kept"] = all(
            torch.equal(torch.as_tensor(before[k]), torch.as_tensor(after[k])) for k in before
        )

    # Only rank 0 sees values (tensors); rank 1's state keeps the number it was reset to.
    average = Distributed(Average())
    if rank == 0:
        for value in regression_data()["y"][:5]:
            average.update(value)
    values["average"] = average.compute()

    # Ranks averaging tensors of different shapes: Average's merge refuses, so does compute.
    mismatched = Distributed(Average())
    mismatched.update(torch.zeros(3 + rank))
    try:
        mismatched.compute()
        values["mismatch"] = None
    except ValueError as exc:
        values["mismatch"] = str(exc)
    return values


def digits_program(
    rank: int, world_size: int, scores: torch.Tensor, y: torch.Tensor, epochs: int
) -> list[dict[str, Any]]:
    """An evaluator Engine over this rank's DistributedSampler share of (scores, y), with
    distributed metrics; per epoch, what `state.metrics` held and which samples it saw."""
    dataset = TensorDataset(torch.arange(len(y)), scores, y)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=3)
    loader = DataLoader(dataset, batch_size=64, sampler=sampler)
    seen: list[int] = []

    def step(engine: Engine, batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        index, batch_scores, batch_y = batch
        seen.extend(index.tolist())
        return batch_scores, batch_y

    evaluator = Engine(step)
    evaluator.add_metric(Distributed(Accuracy()), "accuracy")
    evaluator.add_metric(Distributed(ConfusionMatrix(num_classes=10)), "confusion")
    evaluator.add_metric(Accuracy(), "this rank's accuracy")
    epochs_seen: list[dict[str, Any]] = []

    @evaluator.on(Events.EPOCH_COMPLETED)
    def record(engine: Engine) -> None:
        epochs_seen.append({"metrics": dict(engine.state.metrics), "seen": list(seen)})
        seen.clear()

    evaluator.run(loader, max_epochs=epochs)
    return epochs_seen


# StopAgreement rounds: per rank, (stop cause or None, checkpoint wish); each round is agreed.
AGREEMENT_ROUNDS: list[dict[int, tuple[dict[str, Any] | None, bool]]] = [
    {0: (None, False), 1: (None, False)},
    {0: (None, False), 1: ({"signal": "PROGRAM", "reason": "nan on rank 1", "by": "b"}, False)},
    {0: (None, True), 1: (None, False)},
    {
        0: ({"signal": "TERMINATE", "reason": "asked", "by": "op", "voter": None}, True),
        1: ({"signal": "PROGRAM", "reason": "nan", "by": "b"}, True),
    },
    # After a round that agreed on both flags, the next that asks nothing agrees on nothing.
    {0: (None, False), 1: (None, False)},
]


def agreement_program(rank: int, world_size: int) -> dict[str, Any]:
    """Agree the AGREEMENT_ROUNDS one after the other, then one launched and never finished (a
    run that broke off) followed by another; report what was agreed each time."""
    from trainer.distributed import StopAgreement

    agreement = StopAgreement()
    agreed = [agreement.agree(*wishes[rank]) for wishes in AGREEMENT_ROUNDS]
    # Launched by every rank and never finished: its flags must not be the next one's.
    abandoned = agreement.launch({"signal": "PROGRAM", "reason": "r", "by": "b"} if rank else None)
    after = agreement.agree(None)
    abandoned.work.wait()
    return {
        "agreed": agreed,
        "after abandoned": after,
        "abandoned flags": abandoned.flags.tolist(),
        "agreements": agreement.agreements,
        "stops": agreement.stops,
    }


def all_programs(
    rank: int, world_size: int, scores: torch.Tensor, y: torch.Tensor, epochs: int
) -> dict[str, Any]:
    """The programs in one process group: the ranks start (import torch) once for all tests."""
    return {
        "metrics": metrics_program(rank, world_size),
        "digits": digits_program(rank, world_size, scores, y, epochs),
        "agreement": agreement_program(rank, world_size),
    }
