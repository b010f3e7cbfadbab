"""Hyperband: several ASHA brackets, each with its own first rung; a trial is judged in one.

The decision, exactly. With minimum resource r, reduction factor eta and maximum resource R
(`--max-resource`, else the planned epochs of the first trial reported, in bus order):

- brackets b = 0 .. s where s is the largest with r * eta**s <= R. Bracket b is ASHA (see
  `asha`) whose rungs start at epoch r * eta**b, below R, among the trials of that bracket only:
  bracket 0 prunes hardest, bracket s (first rung at R or beyond) never prunes.
- bracket b gets a share w_b = ceil((s + 1) * eta**(s - b) / (s - b + 1)) of the trials (the
  number of configurations of the Hyperband paper's bracket s - b), and trial number i of sweep
  S goes to bracket b where crc32("S_i") mod (w_0 + ... + w_s) falls in b's share, the shares
  laid out in bracket order: the same assignment as Optuna's HyperbandPruner for a study named
  S, so it is fixed by the sweep and the trial number alone.
"""

from __future__ import annotations

import math
import zlib
from typing import ClassVar

from workers.pruning.asha import DEFAULT_MIN_RESOURCE, DEFAULT_REDUCTION_FACTOR, Asha
from workers.pruning.reports import Decision, Report
from workers.pruning.rule import Rule
from workers.pruning.rungs import Ladder, check_int


def bracket_count(min_resource: int, reduction_factor: int, max_resource: int) -> int:
    """s + 1: the brackets, s the largest with r * eta**s <= R (at least one bracket)."""
    s = 0
    while min_resource * reduction_factor ** (s + 1) <= max_resource:
        s += 1
    return s + 1


def bracket_shares(brackets: int, reduction_factor: int) -> list[int]:
    """w_b = ceil(n * eta**(n - 1 - b) / (n - b)) for b in 0 .. n - 1 (n brackets)."""
    return [
        math.ceil(brackets * reduction_factor ** (brackets - 1 - b) / (brackets - b))
        for b in range(brackets)
    ]


def bracket_of(sweep: str, number: int | str, shares: list[int]) -> int:
    """The bracket of trial `number` of sweep `sweep`: crc32("sweep_number") mod sum(shares)."""
    left = zlib.crc32(f"{sweep}_{number}".encode()) % sum(shares)
    for b, share in enumerate(shares):
        left -= share
        if left < 0:
            return b
    raise AssertionError("unreachable: the position is below the sum of the shares")


class Hyperband(Rule):
    """ASHA in brackets of different aggressiveness; trials dealt to brackets by weight."""

    name: ClassVar[str] = "hyperband"

    def __init__(
        self,
        *,
        sweep: str,
        min_resource: int = DEFAULT_MIN_RESOURCE,
        reduction_factor: int = DEFAULT_REDUCTION_FACTOR,
        max_resource: int | None = None,
        metric: str = "value",
        mode: str = "max",
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        Ladder(min_resource, reduction_factor)  # checks both
        if max_resource is not None:
            check_int("max_resource", max_resource, 1)
        self.sweep = sweep
        self.min_resource = min_resource
        self.reduction_factor = reduction_factor
        self.max_resource = max_resource
        self._brackets: list[Asha] = []
        self._shares: list[int] = []
        self._of: dict[str, int] = {}  # trial -> its bracket

    def bracket(self, report: Report) -> int:
        """The bracket of `report`'s trial (by its sweep number; its run id if it has none)."""
        found = self._of.get(report.trial)
        if found is None:
            number = report.number if report.number is not None else report.trial
            found = self._of[report.trial] = bracket_of(self.sweep, number, self._shares)
        return found

    def _setup(self, report: Report) -> bool:
        """Make the brackets once R is known; False while it is not (no decision possible)."""
        if self._brackets:
            return True
        if self.max_resource is None:
            if report.planned is None:
                return False
            self.max_resource = report.planned
        n = bracket_count(self.min_resource, self.reduction_factor, self.max_resource)
        self._shares = bracket_shares(n, self.reduction_factor)
        self._brackets = [
            Asha(
                min_resource=self.min_resource,
                reduction_factor=self.reduction_factor,
                max_resource=self.max_resource,
                offset=b,
                label=f", bracket {b + 1} of {n}",
                metric=self.metric,
                mode=self.mode,
            )
            for b in range(n)
        ]
        return True

    def _judge(self, report: Report) -> Decision:
        if not self._setup(report):
            reason = (
                f"epoch {report.epoch}: no maximum resource yet (give --max-resource, or "
                "train.epochs in the trials' config)"
            )
            return Decision(False, reason)
        return self._brackets[self.bracket(report)].judge(report)

    def describe(self) -> str:
        """The settings (and the brackets, once known) in one line."""
        brackets = (
            "; ".join(
                f"bracket {b + 1}: rungs at {a.ladder.describe(self.max_resource)}, share "
                f"{self._shares[b]}"
                for b, a in enumerate(self._brackets)
            )
            or "brackets made at the first report"
        )
        return (
            f"{self.name}: min resource {self.min_resource}, reduction factor "
            f"{self.reduction_factor}, max resource {self.max_resource or 'of the first trial'}"
            f"; {brackets}; {self.mode} is better"
        )
