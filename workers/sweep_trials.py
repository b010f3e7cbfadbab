"""SweepTrials: the trials of one sweep as a pruner reads them off the bus, in bus order.

Trials are found on the registry (RUN_STARTED whose `data.sweep.id` is the sweep's). Each
trial's events topic is read with plain reads (no consumer group, nothing acked), and every
epoch's figures of the watched split (`workers.figures`: METRICS, or a one-rank run's own
EPOCH_COMPLETED) become a `EpochReport`, placed on the bus by its entry id.

Deciding on a trial's report at entry K: every trial's topic is read to its end first, which
holds every entry written before K (Redis gives entry ids from one clock, so an entry of an
earlier millisecond than K was written before K, and K was read already). The history then
feeds the rule every report up to K in bus order. So the live pruner decides exactly as one
that replays the same topics after a restart.

A finished trial is read until its topic can hold nothing more that counts: figures written
more than QUIET_MS after the trial's RUN_FINISHED are not counted (by the replay either), so
once the bus's clock is past that, the trial is not read again (until it starts again).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from bus import BEGINNING, Bus, DecodeError, Envelope, Rejected, Topics, decode, tail
from bus.codec import peek_type
from bus.messages import EPOCH_COMPLETED, METRICS, RUN_FINISHED, RUN_STARTED, SWEEP_STARTED
from bus.stream_ids import parse_id
from workers.figures import epoch_figures
from workers.pruning import Decision, EpochReport, SweepHistory
from workers.pruning.reports import Key

# Figures a trial publishes this long (bus time) after its RUN_FINISHED are not counted.
QUIET_MS = 60_000
# Entries per read of a topic.
BATCH = 500
# The types a trial's topic is decoded for; the rest are skipped by their type alone.
READ_TYPES = frozenset({RUN_STARTED, RUN_FINISHED, EPOCH_COMPLETED, METRICS})


def sweep_of(env: Envelope) -> tuple[str, int | None] | None:
    """(sweep id, trial number) of a RUN_STARTED that carries `data.sweep`, else None."""
    sweep = env.data.get("sweep") if env.type == RUN_STARTED else None
    if not isinstance(sweep, Mapping) or not isinstance(sweep.get("id"), str):
        return None
    number = sweep.get("trial")
    return sweep["id"], number if type(number) is int else None


async def known_sweeps(bus: Bus, topics: Topics) -> list[str]:
    """The ids of every sweep the registry of sweeps has seen start, oldest first."""
    ids: dict[str, None] = {}
    async for env in tail(bus, topics.sweeps(), BEGINNING, follow=False):
        if env.type == SWEEP_STARTED:
            ids.setdefault(env.run_id, None)
    return list(ids)


async def sweeps_on_registry(bus: Bus, topics: Topics) -> dict[str, int]:
    """Every sweep with a trial on the registry: sweep id -> how many trials it started."""
    trials: dict[str, set[str]] = {}
    after = BEGINNING
    while True:
        entries = await bus.read(topics.registry(), after, count=BATCH, block=None)
        for entry in entries:
            after = entry.id
            if peek_type(entry.payload) != RUN_STARTED:
                continue
            try:
                env = decode(entry.payload)
            except DecodeError:
                continue
            found = sweep_of(env)
            if found is not None:
                trials.setdefault(found[0], set()).add(env.run_id)
        if len(entries) < BATCH:
            return {sweep: len(runs) for sweep, runs in trials.items()}


@dataclass
class TrialStream:
    """One trial as read so far: who it is, and where its topic was read up to."""

    run_id: str
    number: int | None = None
    planned: int | None = None  # its config's train.epochs
    world_size: int = 1
    after: str = BEGINNING  # the last entry id read
    finished_ms: int | None = None  # bus time of its last RUN_FINISHED (none since a restart)
    quiet: bool = False  # read to the end for good (until it starts again)
    keys: dict[str, Key] = field(default_factory=dict)  # figures envelope id -> its entry

    def learn(self, env: Envelope) -> None:
        """Take the trial's number, planned epochs and world size from its RUN_STARTED."""
        found = sweep_of(env)
        if found is not None and found[1] is not None:
            self.number = found[1]
        config = env.data.get("config")
        train = config.get("train") if isinstance(config, Mapping) else None
        epochs = train.get("epochs") if isinstance(train, Mapping) else None
        if type(epochs) is int and epochs >= 1:
            self.planned = epochs
        size = env.data.get("world_size")
        if type(size) is int and size >= 1:
            self.world_size = size


class SweepTrials:
    """Reads the trials of sweep `sweep_id` and decides on their reports with `history`'s rule.

    `start` "start" reads every trial's whole history (finished trials included), "now" only
    what is written after the first look (trials already there are read from their end).
    """

    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        sweep_id: str,
        *,
        split: str,
        metric: str,
        history: SweepHistory,
        start: str = "start",
        log: logging.LoggerAdapter | logging.Logger | None = None,
    ) -> None:
        self.bus = bus
        self.topics = topics
        self.sweep_id = sweep_id
        self.split = split
        self.metric = metric
        self.history = history
        self.start = start
        self.log = log or logging.getLogger(__name__)
        self.trials: dict[str, TrialStream] = {}
        self._registry_after = BEGINNING
        self._first_look = True
        self._clock_ms = (
            0  # the newest entry's millisecond read anywhere: the bus's clock passed it
        )
        self._lock = asyncio.Lock()
        self._caught_up_from = -math.inf  # monotonic time the last catch-up began

    async def decide(self, run_id: str, env: Envelope, epoch: int) -> Decision | None:
        """The decision on trial `run_id`'s figures `env` (of trainer epoch `epoch`, 0-based).

        None when `env` is not a report of this sweep's (not found on the trial's topic, or not
        the first figures of its epoch with the metric).
        """
        asked = time.monotonic()
        async with self._lock:
            if self._caught_up_from < asked:  # else a catch-up begun since covered it
                await self.catch_up()
            trial = self.trials.get(run_id)
            key = None if trial is None else trial.keys.get(env.id)
            if key is None:
                return None
            for report, decision in self.history.advance(key, run_id):
                self._note(report, decision)
            return self.history.decision(run_id, epoch + 1)

    async def catch_up(self) -> None:
        """Read the registry and every trial's topic to their ends."""
        self._caught_up_from = time.monotonic()
        await self._read_registry()
        self._first_look = False
        for trial in list(self.trials.values()):
            if trial.quiet:
                continue
            clock = self._clock_ms  # the bus's clock was past this before the read began
            await self._read_trial(trial)
            if trial.finished_ms is not None and clock > trial.finished_ms + QUIET_MS:
                trial.quiet = True

    async def _read_registry(self) -> None:
        topic = self.topics.registry()
        while True:
            entries = await self.bus.read(topic, self._registry_after, count=BATCH, block=None)
            for entry in entries:
                self._registry_after = entry.id
                if peek_type(entry.payload) == RUN_STARTED:
                    await self._announced(entry.payload)
            if len(entries) < BATCH:
                return

    async def _announced(self, payload: bytes) -> None:
        try:
            env = decode(payload)
        except DecodeError:
            return  # the registry's own readers dead-letter nothing: skip it as a tail does
        found = sweep_of(env)
        if found is None or found[0] != self.sweep_id:
            return
        trial = self.trials.get(env.run_id)
        if trial is None:
            trial = self.trials[env.run_id] = TrialStream(env.run_id)
            if self.start == "now" and self._first_look:
                trial.after = await self.bus.last_id(self.topics.events(env.run_id))
            self.log.info(
                "trial found", extra={"trial": env.run_id, "number": found[1], "sweep": found[0]}
            )
        trial.learn(env)
        trial.quiet = False  # started again: its topic may hold new figures

    async def _read_trial(self, trial: TrialStream) -> None:
        topic = self.topics.events(trial.run_id)
        while True:
            entries = await self.bus.read(topic, trial.after, count=BATCH, block=None)
            for entry in entries:
                trial.after = entry.id
                if peek_type(entry.payload) in READ_TYPES:
                    self._take(trial, entry.id, entry.payload)
            if len(entries) < BATCH:
                return

    def _take(self, trial: TrialStream, entry_id: str, payload: bytes) -> None:
        try:
            env = decode(payload)
        except DecodeError:
            return  # the trial's workers dead-letter it; it carries no figures for us
        key = parse_id(entry_id)
        self._clock_ms = max(self._clock_ms, key[0])
        if env.type == RUN_STARTED:
            trial.learn(env)
            trial.finished_ms = None
            return
        if env.type == RUN_FINISHED:
            trial.finished_ms = key[0]
            return
        if env.data.get("split") != self.split:
            return
        try:
            figures = epoch_figures(env, trial.world_size)
        except Rejected:
            return  # a malformed report: the trial's own workers say so
        if figures is None:
            return
        if trial.finished_ms is not None and key[0] > trial.finished_ms + QUIET_MS:
            return
        trial.keys[env.id] = key
        value = figures.values.get(self.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return  # the voter says in its vote that the metric is missing
        report = EpochReport(
            trial=trial.run_id,
            epoch=figures.epoch + 1,
            value=float(value),
            at=key,
            number=trial.number,
            planned=trial.planned,
        )
        self.history.add(report)

    def _note(self, report: EpochReport, decision: Decision) -> None:
        if not decision.judged:
            return
        self.log.info(
            "decision",
            extra={
                "trial": report.trial,
                "number": report.number,
                "epoch": report.epoch,
                "stop": decision.stop,
                "reason": decision.reason,
            },
        )
