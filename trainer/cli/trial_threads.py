"""Trials in this process: how `trainer sweep` without --bus runs them, on one in-memory bus.

Each trial is a run as `trainer run` makes it (`trainer.cli.run.train`), with the config's
workers beside it, on a thread of its own, publishing on the sweep's in-memory bus where the
sweep's pruner and coordinator read it. Its output goes to `trial.log` in its run directory.
Cancelled (the sweep stopped), a trial is sent TERMINATE and ends at its next iteration.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import traceback
from pathlib import Path

from bus import Bus, Envelope, Topics, encode, sign
from bus.messages import SECRET_ENV, TERMINATE
from trainer import config
from trainer.cli.run import FAILED, Target, _vote_policy, train
from trainer.config_schema import TrainerConfig
from trainer.run_dir import resolve_resume
from workers.sweeps.agent import TrialJob
from workers.sweeps.process_runner import LOG_FILE


class ThreadRunner:
    """Runs each trial on a thread of this process, on the bus at `bus_url` (in memory)."""

    def __init__(self, bus: Bus, topics: Topics, slots: int, source: str) -> None:
        self.bus = bus
        self.topics = topics
        self.source = source
        self.pool = concurrent.futures.ThreadPoolExecutor(slots, thread_name_prefix="trial")

    async def __call__(self, job: TrialJob) -> int:
        """Train the trial to its end on a thread; cancelled, TERMINATE it and wait for it."""
        loop = asyncio.get_running_loop()
        done = loop.run_in_executor(self.pool, self._train, job)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            await self._terminate(job.order.run_id)
            await done
            raise

    def close(self) -> None:
        """Let the threads go once their trials are over."""
        self.pool.shutdown(wait=True)

    def _train(self, job: TrialJob) -> int:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        with open(job.run_dir / LOG_FILE, "a", encoding="utf-8") as log:

            def echo(line: str) -> None:
                log.write(line + "\n")
                log.flush()

            try:
                cfg = config.from_dict(job.order.config, schema=TrainerConfig)
                policy = _vote_policy(cfg)
                resume = None
                if job.resume:
                    resume = resolve_resume("latest", job.run_dir, cfg.run.dir, cfg.run.name)
                cfg.freeze()
                target = Target(
                    bus_url=self.bus.url,
                    with_workers=True,
                    run_id=job.order.run_id,
                    sweep=job.order.sweep,
                    echo=echo,
                )
                return train(cfg, policy, resume, Path(job.run_dir), None, target)
            except Exception:
                echo(traceback.format_exc())
                return FAILED

    async def _terminate(self, run_id: str) -> None:
        env = Envelope(TERMINATE, run_id, self.source, {"reason": "the sweep was stopped"})
        secret = os.environ.get(SECRET_ENV)
        if secret:
            env = sign(env, secret)
        await self.bus.append(self.topics.control(run_id), [encode(env)])
