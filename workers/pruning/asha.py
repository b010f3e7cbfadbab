"""ASHA: asynchronous successive halving, as a stopping rule.

The decision, exactly. Rungs are at epochs r * eta**k below the cap (`rungs.Ladder`). When a
trial reports its value v after an epoch t, it is judged at every rung at or below t that it
was not judged at yet, lowest first (normally just the rung at t itself; more when reports were
missing), each time with v:

1. v is NaN: the trial stops at that rung, and v is not recorded.
2. Otherwise let V be the values recorded at that rung by other trials in an earlier
   millisecond, plus v: n = |V| trials. The top ceil(n / eta) of them go on; the cutoff c is
   the ceil(n / eta)-th best value of V (ties counted one by one). The trial stops if v is worse
   than c (strictly: a tie with the cutoff goes on), and goes on otherwise.
3. v is recorded at the rung either way: a stopped trial's value still counts for the trials
   that reach the rung after it.

So the first trial at a rung always goes on (n = 1), a trial that reaches a rung late competes
with every value recorded there, running and finished trials alike, and a stopped trial is
never recorded at a higher rung. A trial whose planned epochs (or the maximum resource) do not
exceed the first rung is never judged and never recorded.
"""

from __future__ import annotations

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
from workers.pruning.rungs import Ladder, Rung, check_int, cutoff, kept

DEFAULT_MIN_RESOURCE = 1
DEFAULT_REDUCTION_FACTOR = 3


class Asha(Rule):
    """Stop a trial whose value at a rung is below the top ceil(n / eta) of the n trials there.

    `max_resource` caps the rungs for every trial (rungs only below it); None caps each trial's
    rungs by its own planned epochs (`Report.planned`), or not at all when that is unknown.
    `offset` skips the first rungs (a Hyperband bracket); `label` follows the place in every
    reason ("rung 1 (epoch 3), bracket 2 of 4: ..."), which always comes first.
    """

    name: ClassVar[str] = "asha"

    def __init__(
        self,
        *,
        min_resource: int = DEFAULT_MIN_RESOURCE,
        reduction_factor: int = DEFAULT_REDUCTION_FACTOR,
        max_resource: int | None = None,
        offset: int = 0,
        label: str = "",
        metric: str = "value",
        mode: str = "max",
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.ladder = Ladder(min_resource, reduction_factor, offset)
        if max_resource is not None:
            check_int("max_resource", max_resource, 1)
        self.max_resource = max_resource
        self.label = label
        self._rungs: dict[int, Rung] = defaultdict(Rung)
        self._judged: dict[str, int] = {}  # trial -> how many rungs it has been judged at

    @property
    def reduction_factor(self) -> int:
        """eta: the top 1/eta of a rung go on."""
        return self.ladder.reduction_factor

    def cap(self, report: Report) -> int | None:
        """The epoch the trial's rungs stay below: the maximum resource, else its planned epochs."""
        return self.max_resource if self.max_resource is not None else report.planned

    def recorded(self, k: int) -> int:
        """How many values rung k holds (every trial judged there, stopped ones included)."""
        return len(self._rungs[k]) if k in self._rungs else 0

    def _judge(self, report: Report) -> Decision:
        cap = self.cap(report)
        decision = None
        for k in self.ladder.rungs(cap, report.epoch):
            if k < self._judged.get(report.trial, 0):
                continue
            decision = self._at_rung(k, report)
            self._judged[report.trial] = k + 1
            if decision.stop:
                return decision
        return decision or self._between(report, cap)

    def _at_rung(self, k: int, report: Report) -> Decision:
        v, epoch = report.value, self.ladder.epoch(k)
        where = f"rung {k + 1} (epoch {epoch}){self.label}"
        if not is_number(v):
            reason = f"{where}: {self.metric} is NaN, not a value that can go on"
            return Decision(True, reason, judged=True, rung=k + 1)
        rung = self._rungs[k]
        values = [*rung.before(report.trial, report.at[0]), v]
        n = len(values)
        keep = kept(n, self.reduction_factor)
        cut = cutoff(values, keep, self.mode)
        rung.record(report.trial, v, report.at[0])
        stop = better(cut, v, self.mode)
        top = f"the top {keep} go on"
        if stop:
            reason = (
                f"{where}: {self.metric} {fmt(v)} {worse_word(self.mode)} the cutoff {fmt(cut)} "
                f"of {plural(n, 'trial')} ({top})"
            )
        elif n == 1:
            reason = f"{where}: {self.metric} {fmt(v)}, the first value at this rung: goes on"
        else:
            reason = (
                f"{where}: {self.metric} {fmt(v)} reaches the cutoff {fmt(cut)} of "
                f"{plural(n, 'trial')} ({top})"
            )
        return Decision(stop, reason, judged=True, rung=k + 1, cutoff=cut, trials=n)

    def _between(self, report: Report, cap: int | None) -> Decision:
        following = self.ladder.following(self._judged.get(report.trial, 0), cap)
        if following is not None:
            epoch = self.ladder.epoch(following)
            reason = (
                f"epoch {report.epoch}{self.label}: no rung here "
                f"(next: rung {following + 1} at epoch {epoch})"
            )
        elif self._judged.get(report.trial, 0) == 0:
            first = self.ladder.epoch(0)
            reason = (
                f"epoch {report.epoch}{self.label}: no rung below the trial's {cap} epochs "
                f"(the first rung is at epoch {first})"
            )
        else:
            reason = f"epoch {report.epoch}{self.label}: past the last rung, trains to its end"
        return Decision(False, reason)

    def describe(self) -> str:
        """The rungs, the reduction factor and the cap, in one line."""
        cap = "each trial's planned epochs" if self.max_resource is None else self.max_resource
        return (
            f"{self.name}: rungs at epochs {self.ladder.describe(self.max_resource)} "
            f"(min resource {self.ladder.min_resource}, reduction factor "
            f"{self.reduction_factor}, below {cap}); the top ceil(n/{self.reduction_factor}) "
            f"of the n trials at a rung go on; {self.mode} is better"
        )
