"""One-off reads of a sweep's history: its SWEEP_STARTED and ending, and how a trial's run ended."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bus import BEGINNING, Bus, Envelope, Topics, tail
from bus.messages import RUN_FINISHED, RUN_STARTED, SWEEP_FINISHED, SWEEP_STARTED
from workers.sweep_trials import known_sweeps

__all__ = ["SweepRecord", "find_sweep", "known_sweeps", "run_ending"]

# Rank 0 speaks for a run: its RUN_STARTED and RUN_FINISHED begin and end each session.
LEAD = "trainer:0"


@dataclass(frozen=True)
class SweepRecord:
    """A sweep as the registry of sweeps has it: its start, and its end once it has one."""

    sweep_id: str
    started: Envelope
    finished: Envelope | None


async def find_sweep(bus: Bus, topics: Topics, sweep_id: str) -> SweepRecord | None:
    """The sweep `sweep_id` on the registry of sweeps, None if it never started there."""
    started = finished = None
    async for env in tail(bus, topics.sweeps(), BEGINNING, follow=False):
        if env.run_id != sweep_id:
            continue
        if env.type == SWEEP_STARTED:
            started, finished = env, None
        elif env.type == SWEEP_FINISHED:
            finished = env
    return None if started is None else SweepRecord(sweep_id, started, finished)


async def run_ending(bus: Bus, topics: Topics, run_id: str) -> dict[str, Any] | None:
    """The `data` of rank 0's RUN_FINISHED of run `run_id`'s latest session, None if that
    session has not finished (or the run never started)."""
    ending: dict[str, Any] | None = None
    async for env in tail(bus, topics.registry(), BEGINNING, follow=False):
        if env.run_id != run_id or env.source != LEAD:
            continue
        if env.type == RUN_STARTED:
            ending = None  # a session begins (a resume too): its end is still to come
        elif env.type == RUN_FINISHED:
            ending = dict(env.data)
    return ending
