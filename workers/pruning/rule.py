"""Rule: the base of the pruning rules, and what every rule does the same way.

A rule is fed every report of a sweep in bus order (`SweepHistory` does that) and answers each
with a Decision. Three things hold for every rule:

- Another trial's value counts for a decision only if it was reported in an earlier
  millisecond than the report decided on (`Report.at`). Reports of the same millisecond are
  simultaneous: neither counts for the other. That makes a decision a function of what was on
  the bus before it, which a pruner reading the streams live and one replaying them after a
  restart see alike (trials' topics are read one after the other, so the order in which two
  reports of the same millisecond are read is not fixed).
- Once a rule stopped a trial, that stop stands: the trial's later reports get the same
  Decision and are not recorded (how many epochs a stopped trial still trains depends on how
  fast the stop lands, which must not change any other decision).
- Reports come once per (trial, epoch): a resumed trial's epochs trained again are not fed.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from workers.pruning.reports import Decision, Report, check_mode


class Rule(abc.ABC):
    """A pruning rule: `judge` each report of a sweep, in bus order, stop or go on."""

    name: ClassVar[str]

    def __init__(self, *, metric: str = "value", mode: str = "max") -> None:
        self.metric = metric  # only for the reasons: "accuracy 0.81 below ..."
        self.mode = check_mode(mode)
        self._stopped: dict[str, Decision] = {}

    def judge(self, report: Report) -> Decision:
        """The decision on `report`: the trial's standing stop, or the rule's own word."""
        standing = self._stopped.get(report.trial)
        if standing is not None:
            return standing
        decision = self._judge(report)
        if decision.stop:
            self._stopped[report.trial] = decision
        return decision

    def stopped(self, trial: str) -> Decision | None:
        """The stop this rule decided for `trial`, or None."""
        return self._stopped.get(trial)

    @abc.abstractmethod
    def _judge(self, report: Report) -> Decision:
        """Decide on a report of a trial that was not stopped, and record what the rule keeps."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The rule and its settings in one line, for logs ("asha: rungs at epochs 1, 3, 9 ...")."""
