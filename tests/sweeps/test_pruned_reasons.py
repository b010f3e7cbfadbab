"""How the sweep's readers and the pruner agree: a trial counts as pruned by the words of its
stop reason (the rule `runs ls/compare` and the sweep's state apply to what each pruning rule
writes, and to nothing else), and a pruner accepts a sweep the registry of sweeps announced."""

from __future__ import annotations

import math

import pytest

from bus import Envelope, Topics, encode, open_bus
from bus.messages import SWEEP_STARTED
from trainer.sweep_rules import pruned_at
from workers.pruner import PrunerWorker
from workers.pruning import Asha, EpochReport, Median


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (
            "rung 2 (epoch 3): accuracy 0.81 below the cutoff 0.86 of 7 trials (the top 3 go on)",
            (2, 3),
        ),
        (
            "rung 1 (epoch 3), bracket 2 of 4: accuracy 0.61 below the cutoff 0.7 of 4 trials",
            (1, 3),
        ),
        (
            "epoch 4: best loss so far 0.52 above the median 0.47 of 6 other trials at this epoch",
            (4, 4),
        ),
        ("epoch 2: accuracy has been NaN at every epoch so far", (2, 2)),
        # The early-stop worker's and an operator's reasons are no pruning.
        (
            "epoch 7, val accuracy 0.891688: best 0.904282, 2 of 2 evaluations without improvement",
            None,
        ),
        ("operator says so", None),
        (None, None),
    ],
)
def test_the_stop_reasons_of_each_rule_and_only_those_count_as_pruned(
    reason: str | None, expected: tuple[int, int] | None
) -> None:
    assert pruned_at(reason) == expected


def test_what_the_rules_themselves_write_when_they_stop_a_trial_counts_as_pruned() -> None:
    median = Median(min_resource=1, min_trials=1, metric="accuracy", mode="max")
    median.judge(EpochReport("a", 1, 0.9, at=(0, 0)))
    median.judge(EpochReport("b", 1, 0.5, at=(1, 0)))  # below a's 0.9: stopped at epoch 1
    median.judge(EpochReport("c", 1, math.nan, at=(2, 0)))  # NaN: stopped at epoch 1
    asha = Asha(min_resource=1, reduction_factor=3, metric="accuracy", mode="max")
    for ms, (trial, value) in enumerate([("a", 0.9), ("b", 0.8), ("c", 0.1)]):
        asha.judge(EpochReport(trial, 1, value, at=(ms, 0), planned=9))
    assert pruned_at(median.stopped("b").reason) == (1, 1)
    assert pruned_at(median.stopped("c").reason) == (1, 1)
    assert pruned_at(asha.stopped("c").reason) == (1, 1)


async def test_a_pruner_may_start_before_the_sweep_s_first_trial() -> None:
    bus, topics = open_bus("memory://pruner-early"), Topics()
    started = {"params": {}, "trials": 8, "sampler": "grid", "objective": {}, "config": {}}
    await bus.append(topics.sweeps(), [encode(Envelope(SWEEP_STARTED, "early", "sweep", started))])
    # Announced on the registry of sweeps, no trial yet: the pruner waits for them.
    await PrunerWorker.preflight(bus, topics, {"sweep": "early"})
    with pytest.raises(ValueError, match="pruner --sweep 'late': no sweep of that id"):
        await PrunerWorker.preflight(bus, topics, {"sweep": "late"})
    await bus.close()
