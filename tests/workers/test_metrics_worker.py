"""The metrics worker on the real runtime: every rank's states merged into one METRICS per epoch."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from fake_trainer import FakeTrainer, eventually, read_all

from bus import Bus, Envelope, Topics
from bus.messages import EVENTS, check_data
from trainer.metrics import Accuracy, ConfusionMatrix, Loss, Metric, Precision
from trainer.metrics.registry import metric_state_message, register_metric
from workers.metrics import MetricsWorker


def states(**metrics: Metric) -> dict[str, Any]:
    """The metric_states of an EPOCH_COMPLETED: name -> {class, settings, state}."""
    return {name: metric_state_message(metric) for name, metric in metrics.items()}


async def epoch_completed(
    trainer: FakeTrainer,
    epoch: int,
    split: str,
    metric_states: Any,
    *,
    iteration: int = 0,
    **data: Any,
) -> Envelope:
    """EPOCH_COMPLETED of `split` from `trainer`'s rank with these metric states."""
    payload = {
        "split": split,
        "metrics": {},
        "metric_states": metric_states,
        "rank": trainer.rank,
        "world_size": trainer.world_size,
        **data,
    }
    env = trainer.envelope("EPOCH_COMPLETED", payload, epoch=epoch, iteration=iteration)
    return await trainer.send(env)


async def metrics_reports(bus: Bus, run_id: str, running: bool = False) -> list[Envelope]:
    envs = await read_all(bus, Topics().events(run_id))
    return [e for e in envs if e.type == "METRICS" and e.data["running"] is running]


async def dead_letters(bus: Bus) -> list[Envelope]:
    return await read_all(bus, Topics().dead_letter())


def ranks(world_size: int, bus: Bus, run_id: str) -> list[FakeTrainer]:
    return [FakeTrainer(bus, run_id, rank=r, world_size=world_size) for r in range(world_size)]


async def test_the_ranks_states_merge_into_one_report_of_the_whole_data(bus, start_worker) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    rank0, rank1 = ranks(2, bus, run_id)
    await rank0.start()
    worker = await start_worker(MetricsWorker, run_id=run_id)

    g = np.random.default_rng(0)
    logits, y = torch.from_numpy(g.normal(size=(60, 4))), torch.from_numpy(g.integers(0, 4, 60))
    parts = [slice(0, 25), slice(25, 60)]
    for trainer, part in zip((rank0, rank1), parts, strict=True):
        acc, prec, cm = Accuracy(), Precision(average="macro"), ConfusionMatrix()
        for metric in (acc, prec, cm):
            metric.update((logits[part], y[part]))
        await epoch_completed(trainer, 3, "val", states(acc=acc, prec=prec, cm=cm), iteration=80)
        if trainer is rank0:
            # Half the ranks reported: nothing to say yet.
            assert await metrics_reports(bus, run_id) == []

    (report,) = await eventually(lambda: metrics_reports(bus, run_id), "METRICS of epoch 3")
    pred = logits.argmax(1).numpy()
    assert report.data["split"] == "val" and report.data["epoch"] == 3
    assert (report.epoch, report.iteration) == (3, 80)
    assert report.data["ranks"] == [0, 1]
    check_data(report.type, report.data, topic=EVENTS)  # as bus.messages requires
    assert report.data["values"] == pytest.approx(
        {
            "acc": skm.accuracy_score(y.numpy(), pred),
            "prec": skm.precision_score(y.numpy(), pred, average="macro", zero_division=0),
        }
    )  # the confusion matrix is no scalar: left out
    assert report.source == worker.name

    # A repeated report of an epoch already published changes nothing.
    await epoch_completed(rank1, 3, "val", states(acc=Accuracy()), iteration=80)
    await rank0.finish()
    await rank1.finish()
    assert await worker.ended() == 0
    assert len(await metrics_reports(bus, run_id)) == 1


class _PrecisionRecall(Metric):
    """A user metric computing a dict: its scalar entries become values of their own."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("tp", 0, "sum", torch.int64)
        self.add_state("n", 0, "sum", torch.int64)

    def update(self, output: Any) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:
        frac = self._state["tp"] / self._state["n"]
        return {"pr_p": frac, "pr_r": torch.tensor(frac / 2), "pr_curve": torch.ones(3)}


async def test_dict_values_expand_and_each_split_and_epoch_reports_once(bus, start_worker) -> None:
    register_metric(_PrecisionRecall, name="tests.PrecisionRecall", replace=True)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    (trainer,) = ranks(1, bus, run_id)
    await trainer.start()
    worker = await start_worker(MetricsWorker, run_id=run_id)
    for epoch in range(2):
        loss = Loss()
        loss.load_state_dict({"total": 3.0 * (epoch + 1), "count": 2})
        await epoch_completed(trainer, epoch, "train", states(loss=loss))
        pr = _PrecisionRecall()
        pr.load_state_dict({"tp": 3, "n": 4})
        await epoch_completed(trainer, epoch, "val", states(pr=pr))
    await trainer.finish()
    assert await worker.ended() == 0
    reports = await metrics_reports(bus, run_id)
    got = {(r.data["split"], r.data["epoch"]): r.data["values"] for r in reports}
    assert got == {
        ("train", 0): {"loss": 1.5},
        ("val", 0): {"pr_p": 0.75, "pr_r": 0.375},
        ("train", 1): {"loss": 3.0},
        ("val", 1): {"pr_p": 0.75, "pr_r": 0.375},
    }
    assert len(reports) == 4


async def test_bad_metric_states_are_dead_lettered_and_the_worker_goes_on(
    bus, start_worker
) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    (trainer,) = ranks(1, bus, run_id)
    await trainer.start()
    worker = await start_worker(MetricsWorker, run_id=run_id)
    acc = Accuracy()
    acc.update((torch.tensor([1, 0, 1]), torch.tensor([1, 1, 1])))
    no_state = {"acc": {"class": "Accuracy", "settings": {}}}
    bad_state = {"acc": {"class": "Accuracy", "settings": {}, "state": {"correct": 1}}}
    await epoch_completed(trainer, 0, "val", no_state)
    await epoch_completed(trainer, 0, "val", bad_state)
    await epoch_completed(trainer, 0, "val", None)
    await epoch_completed(trainer, 0, "val", states(acc=acc))
    # A class this process never registered: left out, the others still reported.
    unknown = {"ppl": {"class": "Perplexity", "settings": {}, "state": {}}, **states(acc=acc)}
    await epoch_completed(trainer, 1, "val", unknown)
    await trainer.finish()
    assert await worker.ended() == 0

    reasons = [d.data["reason"] for d in await dead_letters(bus)]
    assert len(reasons) == 3
    assert "metric_states['acc']" in reasons[0] and "lacks the keys ['state']" in reasons[0]
    assert "metric_states['acc']" in reasons[1] and "missing ['total']" in reasons[1]
    assert "'metric_states' must be a map" in reasons[2]
    assert all("split 'val', epoch 1" in reason for reason in reasons)
    reports = await metrics_reports(bus, run_id)
    assert [(r.data["epoch"], r.data["values"]) for r in reports] == [
        (0, {"acc": pytest.approx(2 / 3)}),
        (1, {"acc": pytest.approx(2 / 3)}),
    ]


async def test_running_means_every_n_iterations_restart_each_epoch(bus, start_worker) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    (trainer,) = ranks(1, bus, run_id)
    await trainer.start()
    worker = await start_worker(MetricsWorker, {"running_every": 2}, run_id=run_id)
    losses = [4.0, 2.0, 3.0, 1.0, 10.0, 20.0]  # two epochs of three iterations
    for i, loss in enumerate(losses, start=1):
        await trainer.iteration((i - 1) // 3, i, {"loss": loss})
    # A coalesced envelope (the mean of 2 iterations) that passes a multiple of 2.
    env = trainer.envelope(
        "ITERATION_COMPLETED",
        {"split": "train", "outputs": {"loss": 6.0}, "count": 2},
        epoch=2,
        iteration=8,
    )
    await trainer.send(env)
    await trainer.finish()
    assert await worker.ended() == 0
    reports = await metrics_reports(bus, run_id, running=True)
    assert [(r.iteration, r.data["epoch"], r.data["values"]) for r in reports] == [
        (2, 0, {"loss": 3.0}),  # mean of 4, 2
        (4, 1, {"loss": 1.0}),  # epoch 1 starts afresh at iteration 4
        (6, 1, {"loss": pytest.approx(31 / 3)}),
        (8, 2, {"loss": 6.0}),
    ]
    assert all(r.data["ranks"] == [0] for r in reports)
    assert await metrics_reports(bus, run_id) == []  # no epoch ended with states


@pytest.mark.parametrize("every", [0, -3, 1.5])
def test_a_running_period_below_one_is_refused(every: Any) -> None:
    with pytest.raises(ValueError, match="--running-every"):
        MetricsWorker.check_options({"running_every": every})


async def test_per_class_states_of_different_sizes_merge_padded_epoch_after_epoch(
    bus, start_worker
) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    rank0, rank1 = ranks(2, bus, run_id)
    await rank0.start()
    worker = await start_worker(MetricsWorker, run_id=run_id)
    g = np.random.default_rng(1)
    wholes = []
    for epoch in range(3):
        # Rank 0 only ever sees classes 0 and 1, rank 1 all four: their states differ in size.
        y0, p0 = g.integers(0, 2, 20), g.integers(0, 2, 20)
        y1, p1 = g.permutation(np.arange(24) % 4), g.integers(0, 4, 24)
        for trainer, (y, pred) in zip((rank0, rank1), ((y0, p0), (y1, p1)), strict=True):
            prec = Precision(average="macro")
            prec.update((torch.from_numpy(pred), torch.from_numpy(y)))
            await epoch_completed(trainer, epoch, "val", states(prec=prec))
        wholes.append((np.concatenate([y0, y1]), np.concatenate([p0, p1])))
    await rank0.finish()
    await rank1.finish()
    assert await worker.ended() == 0

    reports = await metrics_reports(bus, run_id)
    assert [r.data["epoch"] for r in reports] == [0, 1, 2]
    for report, (y, pred) in zip(reports, wholes, strict=True):
        expected = skm.precision_score(y, pred, average="macro", zero_division=0)
        assert report.data["values"] == {"prec": pytest.approx(expected)}


async def test_a_state_found_wrong_only_when_merged_leaves_that_metric_out(
    bus, start_worker
) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    rank0, rank1 = ranks(2, bus, run_id)
    await rank0.start()
    worker = await start_worker(MetricsWorker, run_id=run_id)
    for trainer in (rank0, rank1):
        loss, prec = Loss(), Precision()
        loss.update(float(trainer.rank + 1))
        prec.update((torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0])))
        metric_states = states(loss=loss, prec=prec)
        if trainer is rank1:
            # Lists are checked when merged: a bad one surfaces only then.
            metric_states["prec"]["state"]["tp"] = [1, "x"]
        await epoch_completed(trainer, 0, "val", metric_states)
    await rank0.finish()
    await rank1.finish()
    assert await worker.ended() == 0

    (report,) = await metrics_reports(bus, run_id)
    assert report.data["values"] == {"loss": 1.5}
    assert report.data["ranks"] == [0, 1]
    assert await dead_letters(bus) == []


async def test_a_metric_set_up_differently_on_some_rank_is_left_out(bus, start_worker) -> None:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    rank0, rank1 = ranks(2, bus, run_id)
    await rank0.start()
    worker = await start_worker(MetricsWorker, run_id=run_id)
    for trainer, threshold in ((rank0, 0.5), (rank1, 0.7)):
        loss, acc = Loss(), Accuracy(threshold=threshold)
        loss.update(2.0)
        acc.update((torch.tensor([0.6, 0.2]), torch.tensor([1, 0])))
        await epoch_completed(trainer, 0, "val", states(loss=loss, acc=acc))
    await rank0.finish()
    await rank1.finish()
    assert await worker.ended() == 0

    (report,) = await metrics_reports(bus, run_id)
    assert report.data["values"] == {"loss": 2.0}
