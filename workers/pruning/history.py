"""SweepHistory: every report of a sweep, fed to a rule in bus order up to a watermark.

A reader adds reports as it finds them, in any order across trials (each trial's own reports in
its stream's order); `advance(key, trial)` feeds the rule every pending report at or before that
place on the bus, in bus order, and keeps each decision. A decision is final once fed: what
comes later never changes it. With the first report per (trial, epoch) only (a resumed trial's
epochs trained again are dropped), the same reports give the same decisions however they were
read: live, or replayed from the streams after a restart.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from workers.pruning.reports import Decision, Key, Report
from workers.pruning.rule import Rule

# A report's total order: its place on the bus, then its trial (two topics may hold entries
# with the same id).
Order = tuple[int, int, str]


def order(at: Key, trial: str) -> Order:
    """The total order of a report at `at` of `trial`."""
    return (at[0], at[1], trial)


@dataclass
class SweepHistory:
    """Reports pending, and the decisions on those fed to `rule`, by (trial, epoch)."""

    rule: Rule
    _pending: list[tuple[Order, int, Report]] = field(default_factory=list)
    _seen: set[tuple[str, int]] = field(default_factory=set)
    _count: int = 0
    decisions: dict[tuple[str, int], Decision] = field(default_factory=dict)

    def add(self, report: Report) -> bool:
        """Keep `report` until it is fed; False (and dropped) if its (trial, epoch) came before."""
        key = (report.trial, report.epoch)
        if key in self._seen:
            return False
        self._seen.add(key)
        self._count += 1  # ties in order cannot happen (one report per trial and entry)
        heapq.heappush(self._pending, (order(report.at, report.trial), self._count, report))
        return True

    def advance(self, at: Key, trial: str) -> list[tuple[Report, Decision]]:
        """Feed the rule every pending report up to (`at`, `trial`) in bus order; what it said."""
        upto = order(at, trial)
        fed = []
        while self._pending and self._pending[0][0] <= upto:
            _, _, report = heapq.heappop(self._pending)
            decision = self.rule.judge(report)
            self.decisions[(report.trial, report.epoch)] = decision
            fed.append((report, decision))
        return fed

    def feed_all(self) -> list[tuple[Report, Decision]]:
        """Feed every pending report (a replay of a finished sweep); what the rule said."""
        if not self._pending:
            return []
        last = max(self._pending)[0]
        return self.advance((last[0], last[1]), last[2])

    def decision(self, trial: str, epoch: int) -> Decision | None:
        """The decision on `trial`'s report after `epoch` epochs, once it was fed."""
        return self.decisions.get((trial, epoch))

    @property
    def pending(self) -> int:
        """Reports added but not fed yet."""
        return len(self._pending)
