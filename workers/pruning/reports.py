"""What a pruning rule reads and says: a trial's Report at one epoch, and its Decision.

Values are compared under a `mode`: "max" (higher is better, e.g. accuracy) or "min" (lower is
better, e.g. loss). NaN is never a value a rule ranks: each rule says what it does with one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

# Where a report sits on the bus: the (millisecond, sequence) pair of its stream entry id.
Key = tuple[int, int]
MODES = ("max", "min")


@dataclass(frozen=True)
class Report:
    """One trial's value of the watched metric after `epoch` epochs (1 = its first epoch).

    `at` is the report's place on the bus (its entry id as (ms, seq)): a rule counts another
    trial's value only if it was reported in an earlier millisecond (see `Rule`). `number` is
    the trial's number in the sweep (Hyperband's bracket) and `planned` the epochs it is to train
    (its config's `train.epochs`, the default cap of the rungs), when known.
    """

    trial: str
    epoch: int
    value: float
    at: Key = (0, 0)
    number: int | None = None
    planned: int | None = None


@dataclass(frozen=True)
class Decision:
    """A rule's word on one report: stop the trial or let it go on, and why, in words.

    `judged` is True when the value was compared (with a rung's cutoff, the median) or refused
    (NaN); False when the rule had nothing to compare at that epoch (between rungs, too few
    trials yet). `rung` is the 1-based rung of an ASHA or Hyperband decision; `cutoff` the value
    the trial was held against, over `trials` trials' values (its own included).
    """

    stop: bool
    reason: str
    judged: bool = False
    rung: int | None = None
    cutoff: float | None = None
    trials: int = 0


def check_mode(mode: str) -> str:
    """`mode` if it is "max" or "min", else ValueError naming it."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use 'max' (higher is better) or 'min' (lower is better)")
    return mode


def is_number(value: float) -> bool:
    """True for a value a rule can rank: any float but NaN (infinities rank as they are)."""
    return not math.isnan(value)


def better(a: float, b: float, mode: str) -> bool:
    """True when `a` is strictly better than `b` under `mode`."""
    return a > b if mode == "max" else a < b


def best_first(values: Iterable[float], mode: str) -> list[float]:
    """`values` sorted from the best to the worst under `mode`."""
    return sorted(values, reverse=mode == "max")


def worse_word(mode: str) -> str:
    """How a value that is worse than another one compares, in words: "below" or "above"."""
    return "below" if mode == "max" else "above"


def fmt(value: float | None) -> str:
    """A value as a reason shows it: four significant digits."""
    return "none" if value is None else f"{value:.4g}"


def plural(n: int, word: str) -> str:
    """ "1 trial", "7 trials"."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
