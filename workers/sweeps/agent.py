"""The agent: takes trials from a sweep's queue and runs each as a normal run, P at a time.

`trainer agent --bus URL --sweep ID` runs one on any machine that reaches Redis, and
`trainer sweep` runs one itself (unless --parallel 0). For each trial it takes, an agent says
TRIAL_STARTED on the sweep's events, runs the trial (a `TrialRunner`: a `trainer run` process,
or in the embedded default a run in this process), says TRIAL_ENDED with how the run ended,
and acks the trial. While a trial runs the agent renews it on the queue; a trial whose agent
died is claimed by another agent after `reclaim_after` seconds, which resumes it from its last
checkpoint (its RUN_STARTED then carries `resumed_from`), or finishes the bookkeeping of a run
that had ended. The agent ends once the sweep has finished (SWEEP_FINISHED) and its own trials
are over; stopped (SIGTERM, SIGINT), it stops its trials and leaves them to be taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus import BEGINNING, Bus, BusUnavailable, Topics, encode, tail
from bus.messages import SWEEP_FINISHED, TRIAL_ENDED, TRIAL_STARTED
from trainer.manifest import read_manifest
from trainer.run_dir import CHECKPOINT_DIR
from workers.sweeps.bus_reads import run_ending
from workers.sweeps.orders import TrialOrder, sweep_event
from workers.sweeps.queue import Taken, TrialQueue

log = logging.getLogger("workers.sweeps.agent")

# An ended run whose trial is not to be run again: it ran (a failed one is resumed).
RAN = ("completed", "terminated")


@dataclass(frozen=True)
class TrialJob:
    """What a runner is asked to run: the order, its run directory, and whether to resume it."""

    order: TrialOrder
    run_dir: Path
    resume: bool  # continue from the run directory's latest checkpoint


# Runs one trial to its end; returns the exit status (0: the run completed or was stopped).
TrialRunner = Callable[[TrialJob], Awaitable[int]]


def trial_dir(order: TrialOrder) -> Path:
    """Where a trial's run directory is: `<run.dir of its config>/<its run id>`, the same for
    every agent (a shared filesystem across machines lets one resume another's trial)."""
    runs = (order.config.get("run") or {}).get("dir") or "runs"
    return Path(str(runs)) / order.run_id


def latest_checkpoint(run_dir: Path) -> str | None:
    """The run directory's latest checkpoint file (its manifest's), None without one."""
    try:
        manifest = read_manifest(run_dir / CHECKPOINT_DIR, missing_ok=True)
    except Exception:  # a torn or foreign manifest: nothing to resume from
        return None
    latest = manifest.get("latest")
    return str(run_dir / CHECKPOINT_DIR / latest) if isinstance(latest, str) else None


class Agent:
    """Runs a sweep's trials from its queue, `slots` at a time, with `runner`."""

    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        sweep_id: str,
        runner: TrialRunner,
        *,
        name: str,
        slots: int,
        reclaim_after: float,
        poll: float = 0.25,
    ) -> None:
        if slots < 1:
            raise ValueError(f"an agent runs 1 trial at a time or more, not {slots}")
        self.bus = bus
        self.topics = topics
        self.sweep_id = sweep_id
        self.runner = runner
        self.name = name
        self.slots = slots
        self.reclaim_after = reclaim_after
        self.poll = min(poll, reclaim_after / 8)
        self.queue = TrialQueue(bus, topics, sweep_id, name)
        self.running: dict[str, asyncio.Task[None]] = {}
        self.finished = asyncio.Event()  # the sweep has finished: take nothing more
        self.ran: list[int] = []  # trials this agent ran (or took over), in order

    async def run(self, stop: asyncio.Event) -> int:
        """Take and run trials until the sweep has finished and ours are over, or `stop`.

        An unreachable bus is waited out (the trials running go on meanwhile); a trial whose
        renewals lapse that long may be taken over by another agent, which this one then sees.
        """
        watch = asyncio.create_task(self._watch_sweep())
        self._next_claim = 0.0
        self._next_renew = time.monotonic() + self.reclaim_after / 4
        ready = False
        try:
            while not stop.is_set():
                try:
                    if not ready:
                        await self.queue.ensure()
                        ready = True
                    if await self._round(stop):
                        return 0
                except BusUnavailable as exc:
                    log.warning("the bus is unreachable (%s); retrying", exc)
                    await _first(list(self.running.values()), stop, self.finished, self.poll)
            return 0
        finally:
            watch.cancel()
            await self._stop_trials()

    async def _round(self, stop: asyncio.Event) -> bool:
        """Take what there is room for, wait, renew; True once there is nothing more to do."""
        self._report_bad()
        free = self.slots - len(self.running)
        if self.finished.is_set() and not self.running:
            return True
        if free > 0 and not self.finished.is_set():
            taken: list[Taken] = []
            if time.monotonic() >= self._next_claim:
                taken = await self.queue.reclaim(free, self.reclaim_after)
                self._next_claim = time.monotonic() + self.reclaim_after / 2
            if len(taken) < free:
                taken += await self.queue.take(free - len(taken), block=self.poll)
            for one in taken:
                self._start(one)
        else:
            await _first(list(self.running.values()), stop, self.finished, self.poll)
        if time.monotonic() >= self._next_renew and self.running:
            await self._renew()
            self._next_renew = time.monotonic() + self.reclaim_after / 4
        return False

    def _start(self, taken: Taken) -> None:
        task = asyncio.create_task(self._trial(taken), name=f"trial:{taken.order.run_id}")
        self.running[taken.entry_id] = task
        task.add_done_callback(lambda t, key=taken.entry_id: self._ended(key, t))

    def _ended(self, entry_id: str, task: asyncio.Task[None]) -> None:
        self.running.pop(entry_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("trial %s failed in the agent", entry_id, exc_info=task.exception())

    async def _trial(self, taken: Taken) -> None:
        """Run one trial (or finish a taken-over one's bookkeeping), then ack it."""
        order = taken.order
        run_dir = trial_dir(order)
        if taken.reclaimed:
            ending = await run_ending(self.bus, self.topics, order.run_id)
            if ending is not None and ending.get("status") in RAN:
                # Its agent died after the run ended: say so, and do not run it again.
                log.info("trial %d (%s) had ended already", order.trial, order.run_id)
                await self._say_ended(order, ending, None)
                await self.queue.done(taken.entry_id)
                return
        resume_from = latest_checkpoint(run_dir) if taken.reclaimed else None
        self.ran.append(order.trial)
        log.info(
            "trial %d: run %s%s",
            order.trial,
            order.run_id,
            f" resumed from {resume_from}" if resume_from else "",
        )
        await self._publish(
            TRIAL_STARTED,
            {
                "trial": order.trial,
                "run_id": order.run_id,
                "agent": self.name,
                "resumed_from": resume_from,
            },
        )
        status = await self.runner(TrialJob(order, run_dir, resume_from is not None))
        ending = await run_ending(self.bus, self.topics, order.run_id)
        await self._say_ended(order, ending, status)
        await self.queue.done(taken.entry_id)

    async def _say_ended(
        self, order: TrialOrder, ending: dict[str, Any] | None, exit_status: int | None
    ) -> None:
        if ending is None:
            ending = {
                "status": "failed",
                "reason": f"the trial's process exited with status {exit_status} before its run "
                "finished (see trial.log in its run directory)",
                "by": None,
            }
        data = {
            "trial": order.trial,
            "run_id": order.run_id,
            "agent": self.name,
            "status": str(ending.get("status") or "failed"),
            "reason": str(ending.get("reason") or ""),
            "by": ending.get("by"),
            "voter": ending.get("voter"),
            "epochs": ending.get("epochs"),
            "exit": exit_status,
        }
        await self._publish(TRIAL_ENDED, data)

    async def _publish(self, type_: str, data: dict[str, Any]) -> None:
        env = sweep_event(type_, self.sweep_id, self.name, data)
        await self.bus.append(self.topics.sweep_events(self.sweep_id), [encode(env)])

    async def _renew(self) -> None:
        """Keep our running trials ours; stop one another agent has taken over meanwhile."""
        ids = list(self.running)
        held = set(await self.queue.renew(ids))
        for entry_id in ids:
            if entry_id not in held and entry_id in self.running:
                log.warning(
                    "trial entry %s was taken over by another agent (this one did not renew it "
                    "within %.0f s): stopping our run of it",
                    entry_id,
                    self.reclaim_after,
                )
                self.running[entry_id].cancel()

    async def _stop_trials(self) -> None:
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_sweep(self) -> None:
        # A tail rides out an unreachable bus by itself.
        async for env in tail(self.bus, self.topics.sweeps(), BEGINNING, block=self.poll):
            if env.type == SWEEP_FINISHED and env.run_id == self.sweep_id:
                self.finished.set()
                return

    def _report_bad(self) -> None:
        for entry_id, why in self.queue.bad:
            log.error("entry %s of the queue is no trial, skipped: %s", entry_id, why)
        self.queue.bad.clear()


async def _first(
    tasks: list[asyncio.Task[None]], stop: asyncio.Event, finished: asyncio.Event, timeout: float
) -> None:
    """Wait until a task ends, `stop` or `finished` is set, or `timeout` seconds pass."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(finished.wait())]
    try:
        await asyncio.wait([*tasks, *waiters], timeout=timeout, return_when="FIRST_COMPLETED")
    finally:
        for waiter in waiters:
            waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*waiters, return_exceptions=True)
