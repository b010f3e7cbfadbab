"""The barrier: at the primary's EPOCH_COMPLETED, wait for every live voter's vote on the epoch.

A voter that is registered and live must vote on this epoch (a vote with `epoch` >= this one)
before the tally; liveness is re-evaluated while waiting, so a voter that dies (its heartbeats
stop) no longer holds the run once `heartbeat_timeout` has passed since its last sign of life.
The wait ends early on a TERMINATE, and after `timeout` seconds at the latest; then the latest
votes of the live voters are tallied, so the stop lands at exactly the epoch where an
in-process EarlyStopping fed the same scores would stop.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from trainer.bridge.control import ControlState
from trainer.vote_tally import Tally

log = logging.getLogger(__name__)

# Shortest wait between two looks at the voters, so a clock at the edge never spins.
_MIN_WAIT = 0.01


@dataclass(frozen=True)
class BarrierResult:
    """How one barrier went: who was counted, who was waited for in vain, and the tally."""

    epoch: int
    waited: float  # seconds the training thread waited
    voters: tuple[str, ...]  # the live voters counted by the tally
    dropped: tuple[str, ...]  # voters waited for that left or went silent meanwhile
    missing: tuple[str, ...]  # live voters without a vote on the epoch when the wait ended
    timed_out: bool
    interrupted: bool  # a stop (TERMINATE) was decided while waiting
    tally: Tally


def epoch_text(epoch: int, max_epochs: int | None) -> str:
    """The wire's 0-based `epoch` as people count it: "3/10" for epoch 2 of 10 (or "3")."""
    return f"{epoch + 1}/{max_epochs}" if max_epochs else str(epoch + 1)


def wait_for_votes(
    state: ControlState, epoch: int, timeout: float, max_epochs: int | None = None
) -> BarrierResult:
    """Wait up to `timeout` s for every live voter's vote on `epoch`, then tally the votes.

    `epoch` is 0-based, as on the wire; `max_epochs` only completes what the log lines say.
    """
    started = time.monotonic()
    deadline = started + timeout
    waited_for: set[str] = set()
    timed_out = interrupted = False
    with state.lock:
        while True:
            now = time.time()
            if state.stop is not None:
                interrupted = True
                missing = state.book.missing_votes(epoch, now)
                break
            missing = state.book.missing_votes(epoch, now)
            waited_for.update(missing)
            if not missing:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            # Wake up when the first missing voter would expire, even if nothing arrives.
            expiry = min(state.book.expires_at(name) or now for name in missing) - now
            state.lock.wait(max(_MIN_WAIT, min(remaining, expiry + _MIN_WAIT)))
        live = state.book.live(now)
        result = state.book.tally(state.policy, now)
    barrier = BarrierResult(
        epoch=epoch,
        waited=time.monotonic() - started,
        voters=tuple(sorted(live)),
        dropped=tuple(sorted(waited_for - live)),
        missing=tuple(missing),
        timed_out=timed_out,
        interrupted=interrupted,
        tally=result,
    )
    said = epoch_text(epoch, max_epochs)
    if timed_out:
        log.warning(
            "barrier after epoch %s timed out after %.1f s without votes from %s; tallying the "
            "latest votes: %s",
            said,
            timeout,
            ", ".join(missing),
            result.describe(),
        )
    elif barrier.dropped:
        log.info(
            "barrier after epoch %s: %s no longer live, not waited for",
            said,
            ", ".join(barrier.dropped),
        )
    return barrier
