"""The voter kinds (early-stop, nan-guard, budget) driven through the runtime on a bus."""

from __future__ import annotations

import logging
import math
import re
import uuid
from typing import Any

import pytest
from fake_trainer import FakeTrainer, control, eventually, read_all, votes_of

from bus import Bus, Topics, encode
from trainer.patience import Patience
from workers.budget import BudgetWorker
from workers.early_stop import EarlyStopWorker
from workers.nan_guard import NanGuardWorker


def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:10]}"


def in_process_stop_epoch(scores: list[float], **settings: Any) -> int | None:
    """The epoch at which the in-process EarlyStopping handler terminates a trainer fed `scores`."""
    from trainer import Engine, Events
    from trainer.handlers import EarlyStopping

    trainer = Engine(lambda engine, batch: None)
    stopper = EarlyStopping(
        score_function=lambda _: scores[trainer.state.epoch], trainer=trainer, **settings
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, stopper)
    state = trainer.run([0], max_epochs=len(scores))
    return state.epoch if trainer.should_terminate else None


async def run_epochs(trainer: FakeTrainer, scores: list[float], *, split: str = "val") -> None:
    """Each epoch as the trainer and the metrics worker would leave it on the events topic."""
    for epoch, score in enumerate(scores):
        iteration = 10 * (epoch + 1)
        await trainer.iteration(epoch, iteration, {"loss": 1.0})
        await trainer.epoch_completed(epoch, iteration)
        await trainer.epoch_completed(epoch, iteration, split=split)
        await trainer.metrics(epoch, "train", {"loss": 1.0, "accuracy": 0.0})
        await trainer.metrics(epoch, split, {"accuracy": score, "loss": -score})


CASES = [
    pytest.param([0.5, 0.6, 0.6, 0.6, 0.7], {"patience": 2}, id="plateau"),
    pytest.param([0.5, 0.52, 0.54, 0.56, 0.9], {"patience": 3, "min_delta": 0.05}, id="min-delta"),
    pytest.param(
        [0.5, 0.52, 0.54, 0.56, 0.58, 0.6],
        {"patience": 3, "min_delta": 0.03, "cumulative_delta": True},
        id="cumulative",
    ),
    pytest.param(
        [0.5, 0.6, 0.61, 0.62, 0.63, 0.64],
        {"patience": 2, "min_delta": 0.025, "cumulative_delta": True},
        id="cumulative-stops",
    ),
    pytest.param([1.0, 0.8, 0.9, 0.85, 0.95, 0.7], {"patience": 2, "mode": "min"}, id="min-mode"),
    pytest.param([0.5, math.nan, 0.4, 0.6, 0.6], {"patience": 2}, id="nan-score"),
    pytest.param([0.5, 0.6, 0.7, 0.8], {"patience": 1}, id="never"),
]


@pytest.mark.parametrize(("scores", "settings"), CASES)
async def test_early_stop_votes_stop_at_the_epoch_in_process_early_stopping_terminates(
    bus: Bus, start_worker: Any, scores: list[float], settings: dict[str, Any]
) -> None:
    expected = in_process_stop_epoch(scores, **settings)
    rid = run_id()
    # The settings come from the run's config, as `trainer run` would publish them.
    config = {"early_stopping": {"metric": "accuracy", "split": "val", **settings}}
    trainer = FakeTrainer(bus, rid, config=config)
    voter = await start_worker(EarlyStopWorker, run_id=rid)
    await trainer.start()
    await run_epochs(trainer, scores)
    await trainer.finish(epochs=len(scores))
    assert await voter.ended() == 0

    votes = await votes_of(bus, rid, voter.name)
    assert [v.data["epoch"] for v in votes] == list(range(len(scores)))
    assert all(v.epoch == v.data["epoch"] for v in votes)
    stops = [v.data["epoch"] for v in votes if v.data["stop"]]
    assert (stops[0] if stops else None) == expected
    assert all("val accuracy" in v.data["reason"] for v in votes)


async def own_epochs(trainer: FakeTrainer, scores: dict[int, float]) -> None:
    """Epochs of a one-rank run with no metrics worker: EPOCH_COMPLETED metrics, no METRICS."""
    for epoch, score in scores.items():
        iteration = 10 * (epoch + 1)
        await trainer.epoch_completed(epoch, iteration, metrics={"loss": 1.0})
        metrics = {"accuracy": score, "loss": -score}
        await trainer.epoch_completed(epoch, iteration, split="val", metrics=metrics)


def counted(reason: str) -> int:
    """The counter a vote's reason shows: "..., K of P evaluations without improvement"."""
    match = re.search(r"(\d+) of (\d+) evaluations without improvement", reason)
    assert match is not None, reason
    return int(match.group(1))


async def test_a_late_voter_on_a_long_plateau_counts_up_to_the_patience_only(
    bus: Bus, start_worker: Any
) -> None:
    scores = [0.5, 0.6] + [0.6] * 10
    rid = run_id()
    config = {"train": {"epochs": 12}, "early_stopping": {"patience": 3}}
    trainer = FakeTrainer(bus, rid, config=config)
    await trainer.start()
    await own_epochs(trainer, dict(enumerate(scores)))  # the whole run, before the voter
    await trainer.finish(epochs=len(scores))
    voter = await start_worker(EarlyStopWorker, run_id=rid, start="start")
    assert await voter.ended() == 0

    votes = await votes_of(bus, rid, voter.name)
    assert [v.data["epoch"] for v in votes] == list(range(12))  # once each, from EPOCH_COMPLETED
    assert [counted(v.data["reason"]) for v in votes] == [0, 0, 1, 2] + [3] * 8
    stops = [v.data["epoch"] for v in votes if v.data["stop"]]
    assert stops[0] == in_process_stop_epoch(scores, patience=3) == 4
    # Text counts epochs from 1, out of the run's epochs; the wire keeps 0-based epochs.
    assert votes[4].data["reason"].startswith("epoch 5/12, val accuracy 0.6: best 0.6, 3 of 3")


async def test_a_voter_back_filling_a_resumed_run_votes_as_the_resumed_rule_does(
    bus: Bus, start_worker: Any
) -> None:
    first = {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.7, 4: 0.7, 5: 0.7}  # killed after epoch 5 ...
    again = {3: 0.8, 4: 0.8, 5: 0.85, 6: 0.85, 7: 0.85}  # ... resumed from the end of epoch 2
    rid = run_id()
    config = {"train": {"epochs": 8}, "early_stopping": {"patience": 2}}
    trainer = FakeTrainer(bus, rid, config=config)
    await trainer.start()
    await own_epochs(trainer, first)
    await trainer.start()  # the same rank starts again: a resume under the same run id
    await own_epochs(trainer, again)
    await trainer.finish(epochs=8)
    voter = await start_worker(EarlyStopWorker, run_id=rid, start="start")
    assert await voter.ended() == 0

    # The in-process rule, restored from the checkpoint of epoch 2, sees epochs 0-2 of the
    # first attempt, then the resumed ones.
    rule = Patience(2)
    expected = []
    for epoch, score in [*list(first.items())[:3], *again.items()]:
        stop = rule.step(score)
        expected.append((epoch, stop, rule.counter))
    votes = await votes_of(bus, rid, voter.name)
    resumed = [(v.data["epoch"], v.data["stop"], counted(v.data["reason"])) for v in votes[6:]]
    assert resumed == expected[3:]
    assert [v.data["epoch"] for v in votes[:6]] == list(first)


async def test_with_several_ranks_early_stop_says_it_waits_for_the_metrics_worker(
    bus: Bus, start_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    rid = run_id()
    config = {"train": {"epochs": 4}, "early_stopping": {"patience": 2}}
    ranks = [FakeTrainer(bus, rid, config=config, rank=r, world_size=2) for r in range(2)]
    voter = await start_worker(EarlyStopWorker, run_id=rid)
    for rank in ranks:
        await rank.start()
    for rank in ranks:  # each rank's own metrics are only its shard's: not the figures
        await rank.epoch_completed(1, 20, split="val", metrics={"accuracy": 0.5})

    def waiting() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "waiting"]

    (notice,) = await eventually(waiting, "the voter to say it waits")
    fields = notice.fields  # type: ignore[attr-defined]
    assert (fields["kind"], fields["waits_for"], fields["epoch"]) == (
        "early-stop",
        "metrics",
        "2/4",
    )
    assert await votes_of(bus, rid, voter.name) == []
    await ranks[0].metrics(1, "val", {"accuracy": 0.5})
    (vote,) = await eventually(lambda: votes_of(bus, rid, voter.name), "the vote on epoch 1")
    assert vote.data["epoch"] == 1
    for rank in ranks:
        await rank.finish()
    assert await voter.ended() == 0
    assert len(waiting()) == 1


async def test_early_stop_options_override_the_run_config(bus: Bus, start_worker: Any) -> None:
    scores = [0.1, 0.2, 0.3, 0.25, 0.2, 0.1]  # "loss" below is -score: improving in min mode
    rid = run_id()
    config = {"early_stopping": {"patience": 1, "metric": "accuracy", "mode": "max"}}
    trainer = FakeTrainer(bus, rid, config=config)
    options = {"metric": "loss", "mode": "min", "patience": 2, "split": "test"}
    voter = await start_worker(EarlyStopWorker, options, run_id=rid)
    await trainer.start()
    await run_epochs(trainer, scores, split="test")
    await trainer.finish()
    assert await voter.ended() == 0

    votes = await votes_of(bus, rid, voter.name)
    expected = in_process_stop_epoch([-s for s in scores], patience=2, mode="min")
    assert next(v.data["epoch"] for v in votes if v.data["stop"]) == expected
    assert "test loss" in votes[0].data["reason"]


async def test_early_stop_that_is_off_votes_continue_on_every_epoch(
    bus: Bus, start_worker: Any
) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid, config={"early_stopping": {"patience": None}})
    voter = await start_worker(EarlyStopWorker, run_id=rid)
    ctl = await control(bus, rid, "WORKER_JOINED")
    assert ctl[0].data["votes"] is True
    await trainer.start()
    for epoch in range(3):  # no METRICS at all: an off voter must not depend on them
        await trainer.epoch_completed(epoch, 10 * (epoch + 1))
        await trainer.epoch_completed(epoch, 10 * (epoch + 1), split="val")
    await trainer.finish()
    assert await voter.ended() == 0

    votes = await votes_of(bus, rid, voter.name)
    assert [(v.data["epoch"], v.data["stop"], v.data["reason"]) for v in votes] == [
        (epoch, False, "early stopping is off") for epoch in range(3)
    ]


async def test_two_voters_of_one_kind_each_vote_on_every_epoch(bus: Bus, start_worker: Any) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid, config={"early_stopping": {"patience": 1}})
    voters = [await start_worker(EarlyStopWorker, run_id=rid) for _ in range(2)]
    await trainer.start()
    await run_epochs(trainer, [0.5, 0.4, 0.6])
    await trainer.finish()
    for voter in voters:
        assert await voter.ended() == 0
        votes = await votes_of(bus, rid, voter.name)
        assert [(v.data["epoch"], v.data["stop"]) for v in votes] == [
            (0, False),
            (1, True),
            (2, False),
        ]


async def test_early_stop_ignores_running_metrics_and_other_splits(
    bus: Bus, start_worker: Any
) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid, config={"early_stopping": {"patience": 1}})
    voter = await start_worker(EarlyStopWorker, run_id=rid)
    await trainer.start()
    await trainer.metrics(0, "val", {"accuracy": 0.9}, running=True)
    await trainer.metrics(0, "train", {"accuracy": 0.1})
    await trainer.metrics(0, "val", {"accuracy": 0.5})
    await trainer.metrics(0, "val", {"accuracy": 0.1})  # the same epoch again: voted already
    await trainer.metrics(1, "val", {"accuracy": 0.4})
    await trainer.finish()
    assert await voter.ended() == 0

    votes = await votes_of(bus, rid, voter.name)
    assert [(v.data["epoch"], v.data["stop"]) for v in votes] == [(0, False), (1, True)]
    assert "best 0.5" in votes[1].data["reason"]


async def test_early_stop_refuses_a_bad_option_before_connecting() -> None:
    with pytest.raises(ValueError, match=r"--patience 0 is not a positive int"):
        EarlyStopWorker.check_options({"patience": 0})
    with pytest.raises(ValueError, match=r"--min-delta -1"):
        EarlyStopWorker.check_options({"min_delta": -1.0})


async def test_nan_guard_votes_stop_on_a_nan_loss_and_continue_before(
    bus: Bus, start_worker: Any
) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid)
    guard = await start_worker(NanGuardWorker, run_id=rid)
    await trainer.start()
    await trainer.iteration(0, 1, {"loss": 2.0})
    await trainer.iteration(0, 2, {"loss": 1.0})
    await trainer.epoch_completed(0, 2)
    await trainer.iteration(1, 3, {"loss": 0.5}, split="val")  # not the watched split
    await trainer.iteration(1, 3, {"loss": math.nan})
    await trainer.iteration(1, 4, {"loss": math.inf})
    await trainer.epoch_completed(1, 4)
    await trainer.epoch_completed(2, 6)
    await trainer.finish()
    assert await guard.ended() == 0

    votes = await votes_of(bus, rid, guard.name)
    assert [(v.data["epoch"], v.data["stop"]) for v in votes] == [
        (0, False),
        (1, True),
        (2, True),  # a tripped guard's stop stands on later epochs
    ]
    assert votes[1].iteration == 3
    assert votes[1].data["reason"] == "loss is nan at iteration 3 (epoch 2)"


async def test_nan_guard_watches_a_plain_output_and_divergence(bus: Bus, start_worker: Any) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid)
    guard = await start_worker(NanGuardWorker, {"factor": 10.0}, run_id=rid)
    await trainer.start()
    for i, value in enumerate([3.0, 1.0, 9.0, 0.5], start=1):
        await trainer.iteration(0, i, {"output": value})
    await trainer.epoch_completed(0, 4)
    await trainer.iteration(1, 5, {"output": 5.1})
    await trainer.epoch_completed(1, 5)
    await trainer.finish()
    assert await guard.ended() == 0

    votes = await votes_of(bus, rid, guard.name)
    assert [(v.data["epoch"], v.data["stop"]) for v in votes] == [(0, False), (1, True)]
    assert "5.1" in votes[1].data["reason"] and "10 x its lowest 0.5" in votes[1].data["reason"]


async def test_nan_guard_dead_letters_outputs_that_are_not_a_map(
    bus: Bus, start_worker: Any
) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid)
    guard = await start_worker(NanGuardWorker, run_id=rid)
    await trainer.start()
    bad = await trainer.send(
        trainer.envelope("ITERATION_COMPLETED", {"split": "train", "outputs": [1.0]}, iteration=1)
    )
    payload = encode(bad)
    await trainer.epoch_completed(0, 1)
    await trainer.finish()
    assert await guard.ended() == 0

    dead = await read_all(bus, Topics().dead_letter())
    assert [(d.data["reason"], d.data["payload"]) for d in dead] == [
        ("rejected by the handler: ITERATION_COMPLETED data.outputs is list, not a map", payload)
    ]
    # A voter reads through a group of its own: it must see every epoch of the run.
    assert dead[0].data["group"] == f"nan-guard:{guard.name}"
    votes = await votes_of(bus, rid, guard.name)
    assert [(v.data["epoch"], v.data["stop"]) for v in votes] == [(0, False)]


async def test_budget_votes_stop_at_the_iteration_budget(bus: Bus, start_worker: Any) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid)
    budget = await start_worker(BudgetWorker, {"max_iterations": 5}, run_id=rid)
    await trainer.start()
    for epoch in range(3):
        for i in range(3 * epoch + 1, 3 * epoch + 4):
            await trainer.iteration(epoch, i, {"loss": 1.0})
        await trainer.epoch_completed(epoch, 3 * epoch + 3)
    await trainer.finish()
    assert await budget.ended() == 0

    votes = await votes_of(bus, rid, budget.name)
    assert [(v.data["epoch"], v.data["stop"], v.iteration) for v in votes] == [
        (0, False, 3),
        (1, True, 5),
        (2, True, 9),
    ]
    assert votes[1].data["reason"] == "iteration 5 reached the budget of 5 iterations"


async def test_budget_measures_time_from_the_run_start_by_event_timestamps(
    bus: Bus, start_worker: Any
) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid)
    t0 = 1_700_000_000.0
    await trainer.start(ts=t0)
    # Joined from now: the start time comes from the registry's RUN_STARTED.
    budget = await start_worker(BudgetWorker, {"max_seconds": 60.0}, run_id=rid, start="now")
    await trainer.iteration(0, 1, {"loss": 1.0}, ts=t0 + 10)
    await trainer.epoch_completed(0, 1, ts=t0 + 30)
    await trainer.iteration(1, 2, {"loss": 1.0}, ts=t0 + 59)
    await trainer.iteration(1, 3, {"loss": 1.0}, ts=t0 + 61)
    await trainer.epoch_completed(1, 3, ts=t0 + 62)
    await trainer.finish()
    assert await budget.ended() == 0

    votes = await votes_of(bus, rid, budget.name)
    assert [(v.data["epoch"], v.data["stop"], v.iteration) for v in votes] == [
        (0, False, 1),
        (1, True, 3),
    ]
    assert votes[0].data["reason"] == "within budget: 30.0 s of 60 s"
    assert votes[1].data["reason"].startswith("61.0 s since the run started")


async def test_budget_without_limits_votes_continue(bus: Bus, start_worker: Any) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid)
    budget = await start_worker(BudgetWorker, run_id=rid)
    await trainer.start()
    await trainer.epoch_completed(0, 1)
    await trainer.finish()
    assert await budget.ended() == 0
    votes = await votes_of(bus, rid, budget.name)
    assert [(v.data["stop"], v.data["reason"]) for v in votes] == [(False, "no budget set")]


async def test_several_voter_kinds_on_one_run_each_vote(bus: Bus, start_worker: Any) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid, config={"early_stopping": {"patience": 3}})
    voters = [
        await start_worker(EarlyStopWorker, run_id=rid),
        await start_worker(NanGuardWorker, run_id=rid),
        await start_worker(BudgetWorker, {"max_iterations": 100}, run_id=rid),
    ]
    await trainer.start()
    await run_epochs(trainer, [0.1, 0.2])
    await trainer.finish()
    for voter in voters:
        assert await voter.ended() == 0
        votes = await eventually(lambda v=voter: votes_of(bus, rid, v.name), "votes")
        assert [(v.data["epoch"], v.data["stop"]) for v in votes] == [(0, False), (1, False)]
    joined = await control(bus, rid, "WORKER_JOINED")
    assert sorted(env.data["kind"] for env in joined) == ["budget", "early-stop", "nan-guard"]
    assert all(env.data["votes"] is True for env in joined)
