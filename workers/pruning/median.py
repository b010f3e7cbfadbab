"""Median: stop a trial whose best value so far is worse than the median of the others' values.

The decision, exactly, on a trial's report of value v after epoch t:

1. t < the minimum resource (the first epoch judged): the trial goes on, unjudged.
2. b = the best of the trial's own values up to t, NaN left out. When every value so far is
   NaN there is no b: the trial stops.
3. M = the values other trials reported for epoch t in an earlier millisecond, NaN left out:
   RUNNING trials count as well as finished and stopped ones, so a sweep with P trials in
   parallel prunes from its first epochs, not only once some trials have finished. With fewer
   than `min_trials` values in M the trial goes on, unjudged.
4. Otherwise the trial stops if b is worse than the median of M (strictly: equal goes on; the
   median of an even count is the mean of the middle two).

v is then recorded for epoch t (NaN is not), whatever the decision: a value reported before a
trial was stopped still counts for the trials that reach that epoch after it.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import ClassVar

from workers.pruning.reports import (
    Decision,
    Report,
    better,
    fmt,
    is_number,
    plural,
    worse_word,
)
from workers.pruning.rule import Rule
from workers.pruning.rungs import Rung, check_int

DEFAULT_MIN_RESOURCE = 1
DEFAULT_MIN_TRIALS = 5


class Median(Rule):
    """The median stopping rule over every trial that reached the epoch, running ones included."""

    name: ClassVar[str] = "median"

    def __init__(
        self,
        *,
        min_resource: int = DEFAULT_MIN_RESOURCE,
        min_trials: int = DEFAULT_MIN_TRIALS,
        metric: str = "value",
        mode: str = "max",
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.min_resource = check_int("min_resource", min_resource, 1)
        self.min_trials = check_int("min_trials", min_trials, 1)
        self._epochs: dict[int, Rung] = defaultdict(Rung)
        self._best: dict[str, float] = {}  # trial -> its best value so far (NaN left out)

    def _judge(self, report: Report) -> Decision:
        v, t, trial = report.value, report.epoch, report.trial
        if is_number(v) and (trial not in self._best or better(v, self._best[trial], self.mode)):
            self._best[trial] = v
        decision = self._decide(report)
        if is_number(v):
            self._epochs[t].record(trial, v, report.at[0])
        return decision

    def _decide(self, report: Report) -> Decision:
        t, trial = report.epoch, report.trial
        if t < self.min_resource:
            reason = f"epoch {t}: not judged before epoch {self.min_resource}"
            return Decision(False, reason)
        best = self._best.get(trial)
        if best is None:
            reason = f"epoch {t}: {self.metric} has been NaN at every epoch so far"
            return Decision(True, reason, judged=True)
        others = self._epochs[t].before(trial, report.at[0]) if t in self._epochs else []
        n = len(others)
        if n < self.min_trials:
            reason = (
                f"epoch {t}: {plural(n, 'other trial')} reported this epoch so far, the median "
                f"needs {self.min_trials}"
            )
            return Decision(False, reason)
        median = statistics.median(others)
        stop = better(median, best, self.mode)
        if stop:
            reason = (
                f"epoch {t}: best {self.metric} so far {fmt(best)} {worse_word(self.mode)} the "
                f"median {fmt(median)} of {plural(n, 'other trial')} at this epoch"
            )
        else:
            reason = (
                f"epoch {t}: best {self.metric} so far {fmt(best)} reaches the median "
                f"{fmt(median)} of {plural(n, 'other trial')} at this epoch"
            )
        return Decision(stop, reason, judged=True, cutoff=median, trials=n + 1)

    def describe(self) -> str:
        """The settings in one line."""
        return (
            f"{self.name}: from epoch {self.min_resource}, a trial whose best {self.metric} so "
            f"far is worse than the median of at least {self.min_trials} other trials' values at "
            f"the same epoch (running ones included) stops; {self.mode} is better"
        )
