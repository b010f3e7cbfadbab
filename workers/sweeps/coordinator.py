"""The coordinator: what `trainer sweep` does on the bus besides running trials itself.

It announces the sweep (SWEEP_STARTED on `<ns>:sweeps`), puts its trials on the sweep's queue,
follows them (a SweepReader), tells the sampler each trial's outcome, and announces the end
(SWEEP_FINISHED, with the best trial). Grid and random trials are all queued at once (their
values do not depend on results, and agents can finish the sweep without the coordinator);
TPE's are asked for one at a time, one kept waiting on the queue ahead of the agents, so that
each suggestion learns from every trial that had ended by then.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from bus import Bus, Envelope, Topics, encode
from bus.messages import SWEEP_FINISHED, SWEEP_STARTED
from trainer.sweep_spec import SweepPlan, wire_value
from workers.sweeps.orders import TrialOrder, default_source, trial_run_id
from workers.sweeps.queue import TrialQueue
from workers.sweeps.reader import SweepReader
from workers.sweeps.sampler import Suggester
from workers.sweeps.state import ENDINGS, QUEUED, SweepState

# Seconds between two looks at the sweep when nothing told the coordinator it changed.
TICK = 1.0

# The config a trial runs with, given its values (trainer.sweep_spec.trial_config, bound).
TrialConfig = Callable[[Mapping[str, Any]], dict[str, Any]]


class Coordinator:
    """Runs sweep `sweep_id` of `plan` on `bus`: queue, follow, tell, finish."""

    def __init__(
        self,
        bus: Bus,
        topics: Topics,
        sweep_id: str,
        plan: SweepPlan,
        trial_config: TrialConfig,
        base_config: Mapping[str, Any],
        *,
        suggester: Suggester | None = None,
        on_progress: Callable[[SweepState], None] | None = None,
    ) -> None:
        self.bus = bus
        self.topics = topics
        self.sweep_id = sweep_id
        self.plan = plan
        self.trial_config = trial_config
        self.base_config = dict(base_config)
        self.suggester = suggester or Suggester(plan)
        self.on_progress = on_progress or (lambda state: None)
        self.source = default_source("sweep")
        self.state = SweepState(sweep_id, plan.objective)
        self.queue = TrialQueue(bus, topics, sweep_id, self.source)
        self.asked = 0
        self._told: set[int] = set()
        self._changed = asyncio.Event()

    async def announce(self) -> None:
        """SWEEP_STARTED on the registry of sweeps, and the queue with its group."""
        await self.queue.ensure()
        data = {
            "params": self.plan.params_text(),
            "trials": self.plan.trials,
            "sampler": self.plan.sampler,
            "seed": self.plan.seed,
            "objective": self.plan.objective.to_dict(),
            "config": self.base_config,
            "parallel": self.plan.parallel,
            "nproc": self.plan.nproc,
            "reclaim_after": self.plan.reclaim_after,
            "pruner": dict(self.plan.pruner) or None,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": time.time(),
        }
        await self._registry(SWEEP_STARTED, data)

    async def run(self, stop: asyncio.Event) -> SweepState:
        """Queue, follow and tell until every trial has ended (or `stop`); then SWEEP_FINISHED."""
        reader = SweepReader(self.bus, self.topics, self.state, on_change=self._changed.set)
        await reader.start()
        try:
            await self._fill()
            shown = ""
            while not stop.is_set() and not self.state.done:
                self._changed.clear()
                self._tell()
                await self._fill()
                line = self.state.progress()
                if line != shown:
                    shown = line
                    self.on_progress(self.state)
                waiters = [asyncio.ensure_future(e.wait()) for e in (self._changed, stop)]
                await asyncio.wait(waiters, timeout=TICK, return_when="FIRST_COMPLETED")
                for waiter in waiters:
                    waiter.cancel()
            self._tell()
            self.on_progress(self.state)
            await self._finish("stopped" if not self.state.done else "completed")
        finally:
            await reader.close()
        return self.state

    async def _fill(self) -> None:
        """Queue the trials that should be waiting now."""
        total = self.plan.trials
        if self.plan.sampler in ("grid", "random"):
            wanted = total
        else:
            waiting = sum(1 for t in self.state.trials.values() if t.status == QUEUED)
            # The state learns of a queued trial from the queue itself: count those not seen yet.
            unseen = self.asked - len(self.state.trials)
            wanted = min(total, self.asked + max(0, 1 - waiting - unseen))
        if self.asked >= wanted:
            return
        # On a thread: building each trial's config (validated against the schema) takes a
        # while, and this loop carries the agent's and the pruner's bus traffic meanwhile.
        orders = await asyncio.to_thread(self._orders, wanted - self.asked)
        self.asked += len(orders)
        await self.queue.put(orders, self.source)

    def _orders(self, count: int) -> list[TrialOrder]:
        """The next `count` trials, as the sampler suggests them."""
        orders = []
        for _ in range(count):
            number, values = self.suggester.ask()
            params = {key: wire_value(value) for key, value in values.items()}
            orders.append(
                TrialOrder(
                    sweep_id=self.sweep_id,
                    trial=number,
                    run_id=trial_run_id(self.sweep_id, number),
                    params=params,
                    config=self.trial_config(params),
                    nproc=self.plan.nproc,
                    objective=self.plan.objective.to_dict(),
                )
            )
        return orders

    def _tell(self) -> None:
        """Tell the sampler about each trial that ended since last time."""
        for trial in self.state.trials.values():
            if trial.ended and trial.status in ENDINGS and trial.trial not in self._told:
                self._told.add(trial.trial)
                best = trial.best(self.plan.objective)
                self.suggester.tell(trial.trial, trial.status, trial.curve, best)

    async def _finish(self, status: str) -> None:
        best = self.state.best()
        counts = self.state.counts()
        data: dict[str, Any] = {
            "status": status,
            "reason": "every trial ran" if status == "completed" else "stopped before the end",
            "trials": counts["done"],
            "pruned": counts["pruned"],
            "failed": counts["failed"],
            "best": None,
        }
        if best is not None:
            data["best"] = {
                "trial": best.trial,
                "run_id": best.run_id,
                "value": best.best(self.plan.objective),
                "params": best.params,
            }
        await self._registry(SWEEP_FINISHED, data)

    async def _registry(self, type_: str, data: dict[str, Any]) -> None:
        env = Envelope(type_, self.sweep_id, self.source, data)
        await self.bus.append(self.topics.sweeps(), [encode(env)])
