"""The metrics worker waits for every rank of an epoch up to the rank timeout, then reports
with the ranks it has and names the missing ones."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
import torch
from fake_trainer import FakeTrainer, eventually, read_all

from bus import Bus, Envelope, Topics
from trainer.metrics import Accuracy, Loss, Metric
from trainer.metrics.registry import metric_state_message
from workers.metrics import MetricsWorker

# Seconds the worker waits for a missing rank in these tests: short, so they end soon; every
# other wait is a hang guard.
RANK_TIMEOUT = 0.3


def states(**metrics: Metric) -> dict[str, Any]:
    """The metric_states of an EPOCH_COMPLETED: name -> {class, settings, state}."""
    return {name: metric_state_message(metric) for name, metric in metrics.items()}


async def report_epoch(
    trainer: FakeTrainer, epoch: int, logits: torch.Tensor, y: torch.Tensor
) -> Envelope:
    """EPOCH_COMPLETED of split val from `trainer`'s rank, scoring `logits` against `y`."""
    accuracy, loss = Accuracy(), Loss(torch.nn.functional.cross_entropy)
    for metric in (accuracy, loss):
        metric.update((logits, y))
    data = {
        "split": "val",
        "metrics": {},
        "metric_states": states(accuracy=accuracy, loss=loss),
        "rank": trainer.rank,
        "world_size": trainer.world_size,
    }
    return await trainer.send(trainer.envelope("EPOCH_COMPLETED", data, epoch=epoch, iteration=8))


async def reports(bus: Bus, run_id: str) -> list[Envelope]:
    envs = await read_all(bus, Topics().events(run_id))
    return [e for e in envs if e.type == "METRICS" and not e.data["running"]]


def warnings_about(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The fields of the worker's warnings logged as `event`."""
    return [
        getattr(r, "fields", {})
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage() == event
    ]


def two_ranks(bus: Bus, run_id: str, config: dict[str, Any] | None = None) -> list[FakeTrainer]:
    """Ranks 0 and 1 of a run of two."""
    return [FakeTrainer(bus, run_id, rank=r, world_size=2, config=config) for r in (0, 1)]


def data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(40, 5, generator=g), torch.randint(0, 5, (40,), generator=g)


async def test_a_missing_rank_is_waited_for_then_named_and_left_out(
    bus, start_worker, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="workers.metrics")
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    rank0, rank1 = two_ranks(bus, run_id)
    await rank0.start()
    await rank1.start()
    await start_worker(MetricsWorker, {"rank_timeout": RANK_TIMEOUT}, run_id=run_id)

    logits, y = data(0)
    # Epoch 0: both ranks report, each on half the data: one report of the whole data.
    await report_epoch(rank0, 0, logits[:20], y[:20])
    await report_epoch(rank1, 0, logits[20:], y[20:])
    (whole,) = await eventually(lambda: reports(bus, run_id), "METRICS of epoch 0")
    assert whole.data["ranks"] == [0, 1]
    expected = (logits.argmax(1) == y).double().mean().item()
    assert whole.data["values"]["accuracy"] == pytest.approx(expected)

    # Epoch 1: rank 1 is gone. After the rank timeout, the report of rank 0's data alone.
    await report_epoch(rank0, 1, logits[:20], y[:20])
    partial = await eventually(
        lambda: _epoch(reports(bus, run_id), 1), "METRICS of epoch 1 without rank 1"
    )
    assert partial.data["ranks"] == [0]
    alone = (logits[:20].argmax(1) == y[:20]).double().mean().item()
    assert partial.data["values"]["accuracy"] == pytest.approx(alone)
    (warning,) = warnings_about(caplog, "metrics reported without every rank")
    # Logs count epochs from 1: the wire's epoch 1 is the second.
    assert warning["missing_ranks"] == [1] and warning["split"] == "val"
    assert warning["epoch"] == "2"

    # Rank 1's states coming late change nothing, and say so.
    await report_epoch(rank1, 1, logits[20:], y[20:])
    await eventually(
        lambda: warnings_about(
            caplog, "rank's metric states came after the rank timeout, left out"
        ),
        "the late rank's warning",
    )
    assert [e.data["epoch"] for e in await reports(bus, run_id)] == [0, 1]


async def _epoch(found, epoch: int) -> Envelope | None:
    for env in await found:
        if env.data["epoch"] == epoch:
            return env
    return None


async def test_the_run_config_sets_the_rank_timeout(bus, start_worker, caplog) -> None:
    caplog.set_level(logging.INFO, logger="workers.metrics")
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    rank0, _ = two_ranks(bus, run_id, config={"dist": {"rank_timeout": RANK_TIMEOUT}})
    await rank0.start()
    worker = await start_worker(MetricsWorker, run_id=run_id)  # no --rank-timeout

    logits, y = data(1)
    await report_epoch(rank0, 0, logits, y)
    (report,) = await eventually(lambda: reports(bus, run_id), "METRICS without rank 1")
    assert report.data["ranks"] == [0]
    (warning,) = warnings_about(caplog, "metrics reported without every rank")
    assert warning["missing_ranks"] == [1] and warning["waited"] == RANK_TIMEOUT
    assert await worker.stop() == 0


def test_a_rank_timeout_that_is_not_positive_is_refused() -> None:
    for bad in (0, -1.0, True, "soon"):
        with pytest.raises(ValueError, match="--rank-timeout"):
            MetricsWorker.check_options({"rank_timeout": bad})
    MetricsWorker.check_options({"rank_timeout": 0.5})
