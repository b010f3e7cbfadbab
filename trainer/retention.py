"""Which checkpoints to keep: the last n and/or the best k by score.

This is the one retention rule of the project: the in-process ``Checkpoint`` handler and the
checkpoint worker both decide with it. It only decides; deleting files is the caller's job.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointRecord:
    """One saved checkpoint as the retention rule sees it."""

    name: str
    step: int
    score: float | None = None

    @property
    def has_score(self) -> bool:
        """True when the record can compete for best-k (a score that is not NaN)."""
        return self.score is not None and not math.isnan(self.score)


@dataclass(frozen=True)
class RetentionDecision:
    """The outcome of admitting one new checkpoint: what stays and what goes."""

    keep: list[CheckpointRecord]
    prune: list[CheckpointRecord]
    new: CheckpointRecord

    @property
    def new_kept(self) -> bool:
        """Whether the new checkpoint survives (if not, it need not be written at all)."""
        return self.new in self.keep


def _check_count(value: int | None, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int or None (keep all), got {value!r}")


def _by_recency(records: Iterable[tuple[int, CheckpointRecord]]) -> list[CheckpointRecord]:
    # Ties in step are broken by position: later in the input is newer.
    return [rec for _, rec in sorted(records, key=lambda pr: (pr[1].step, pr[0]))]


class RetentionPolicy:
    """Keep the ``keep_last`` newest checkpoints and the ``keep_best`` highest-scored ones.

    A checkpoint survives if either rule keeps it. ``None`` means "this rule keeps everything";
    0 means the rule keeps nothing. Recency is the step (then the order given); among equal
    scores the more recent one wins. Records without a score (or with a NaN score) never count
    as best. Higher scores are better, as in Ignite: negate a loss to rank by it.
    """

    def __init__(self, keep_last: int | None = 1, keep_best: int | None = 0) -> None:
        _check_count(keep_last, "keep_last")
        _check_count(keep_best, "keep_best")
        self.keep_last = keep_last
        self.keep_best = keep_best

    def __repr__(self) -> str:
        return f"RetentionPolicy(keep_last={self.keep_last!r}, keep_best={self.keep_best!r})"

    def select(
        self, records: Sequence[CheckpointRecord]
    ) -> tuple[list[CheckpointRecord], list[CheckpointRecord]]:
        """Split ``records`` into (keep, prune), each ordered oldest first."""
        names = [rec.name for rec in records]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"checkpoint names must be unique, repeated: {dupes}")
        indexed = list(enumerate(records))
        ordered = _by_recency(indexed)
        kept = set()
        if self.keep_last is None:
            kept.update(rec.name for rec in ordered)
        elif self.keep_last > 0:
            kept.update(rec.name for rec in ordered[-self.keep_last :])
        scored = [(i, rec) for i, rec in indexed if rec.has_score]
        ranked = sorted(scored, key=lambda pr: (pr[1].score, pr[1].step, pr[0]), reverse=True)
        if self.keep_best is None:
            kept.update(rec.name for _, rec in ranked)
        else:
            kept.update(rec.name for _, rec in ranked[: self.keep_best])
        keep = [rec for rec in ordered if rec.name in kept]
        prune = [rec for rec in ordered if rec.name not in kept]
        return keep, prune

    def admit(self, kept: Sequence[CheckpointRecord], new: CheckpointRecord) -> RetentionDecision:
        """Decide what survives once ``new`` joins the currently ``kept`` checkpoints.

        A kept record with the same name as ``new`` is superseded (the file is overwritten), so
        it appears in neither list. ``new`` is in ``prune`` when it does not make the cut.
        """
        others = [rec for rec in kept if rec.name != new.name]
        keep, prune = self.select([*others, new])
        return RetentionDecision(keep=keep, prune=prune, new=new)


def latest(records: Iterable[CheckpointRecord]) -> CheckpointRecord | None:
    """The most recent record (highest step, then last given), or None if there are none."""
    ordered = _by_recency(enumerate(records))
    return ordered[-1] if ordered else None


def best(records: Iterable[CheckpointRecord]) -> CheckpointRecord | None:
    """The highest-scored record (ties: the most recent), or None if none has a score."""
    scored = [(i, rec) for i, rec in enumerate(records) if rec.has_score]
    if not scored:
        return None
    return max(scored, key=lambda pr: (pr[1].score, pr[1].step, pr[0]))[1]
