"""Rung bookkeeping: where the rungs are (the Ladder) and what was recorded at one (Rung).

Rung k (0-based in code, "rung k+1" in reasons) is at epoch r * eta**(k + offset): r is the
minimum resource, eta the reduction factor, offset the first rung skipped (a Hyperband
bracket's early-stopping rate). Rungs exist only below a cap (the maximum resource, else the
trial's planned epochs): at its last epoch a trial ends anyway, so a rung there would decide
nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from workers.pruning.reports import best_first


def check_int(name: str, value: int, least: int) -> int:
    """`value` if it is an int >= `least`, else ValueError naming `name` and the bound."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} {value!r}: use an int >= {least}")
    return value


class Ladder:
    """The rung epochs r * eta**(k + offset) for k = 0, 1, ... below a cap."""

    def __init__(self, min_resource: int, reduction_factor: int, offset: int = 0) -> None:
        self.min_resource = check_int("min_resource", min_resource, 1)
        self.reduction_factor = check_int("reduction_factor", reduction_factor, 2)
        self.offset = check_int("offset", offset, 0)

    def epoch(self, k: int) -> int:
        """The epoch of rung k (0-based)."""
        return self.min_resource * self.reduction_factor ** (k + self.offset)

    def rungs(self, cap: int | None, upto: int) -> Iterator[int]:
        """The rungs k at an epoch <= `upto` and below `cap` (None: no cap), lowest first."""
        k = 0
        while self.epoch(k) <= upto and (cap is None or self.epoch(k) < cap):
            yield k
            k += 1

    def following(self, k: int, cap: int | None) -> int | None:
        """Rung k if it exists below `cap`, else None."""
        return k if cap is None or self.epoch(k) < cap else None

    def describe(self, cap: int | None) -> str:
        """The rung epochs below `cap`, for people: "1, 3, 9" ("none" when the cap is too low)."""
        if cap is None:
            shown = [str(self.epoch(k)) for k in range(3)]
            return ", ".join(shown) + ", ..."
        epochs = [str(self.epoch(k)) for k in self.rungs(cap, cap)]
        return ", ".join(epochs) or "none"


@dataclass
class Rung:
    """The values trials reported at one rung (or epoch), each with its trial and millisecond."""

    _entries: list[tuple[str, float, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, trial: str, value: float, ms: int) -> None:
        """Record `trial`'s `value`, reported at millisecond `ms`."""
        self._entries.append((trial, value, ms))

    def before(self, trial: str, ms: int) -> list[float]:
        """The values of the other trials, reported in a millisecond before `ms`."""
        return [value for who, value, at in self._entries if who != trial and at < ms]


def kept(n: int, reduction_factor: int) -> int:
    """How many of `n` trials at a rung go on: the top ceil(n / eta), so never none."""
    return math.ceil(n / reduction_factor)


def cutoff(values: list[float], keep: int, mode: str) -> float:
    """The `keep`-th best of `values` (ties counted one by one): the worst value that goes on."""
    return best_first(values, mode)[keep - 1]
