"""budget: a voter that stops a run once it has used its time or iteration budget."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, ClassVar

from bus import Envelope
from bus.messages import EPOCH_COMPLETED, ITERATION_COMPLETED, PRIMARY_SPLIT
from workers.base import Worker
from workers.context import RunContext
from workers.epoch_votes import EpochVotes


class BudgetWorker(Worker):
    """Vote stop once the run is `--max-seconds` old or at iteration `--max-iterations`.

    Time is measured between the run's RUN_STARTED and each event's own timestamp (the
    trainer's clock when it happened), so a worker catching up judges each event as it was.
    Checks every ITERATION_COMPLETED and EPOCH_COMPLETED; votes continue on each epoch end of
    the primary split ("train") until the budget is used; from then on its stop stands.
    """

    kind: ClassVar[str] = "budget"
    votes: ClassVar[bool] = True
    handles: ClassVar[frozenset[str] | None] = frozenset({ITERATION_COMPLETED, EPOCH_COMPLETED})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add --max-seconds, --max-iterations and --split."""
        parser.add_argument(
            "--max-seconds", type=float, help="wall-clock seconds since the run started (none)"
        )
        parser.add_argument(
            "--max-iterations", type=int, help="iterations (the trainer's global count) (none)"
        )
        parser.add_argument("--split", help="split whose epoch ends are voted on (train)")

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise ValueError for a budget that is not positive."""
        seconds, iterations = options.get("max_seconds"), options.get("max_iterations")
        if seconds is not None and not (
            isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds > 0
        ):
            raise ValueError(f"budget --max-seconds {seconds!r} is not a number of seconds > 0")
        if iterations is not None and not (type(iterations) is int and iterations >= 1):
            raise ValueError(f"budget --max-iterations {iterations!r} is not an int >= 1")
        split = options.get("split")
        if split is not None and not (isinstance(split, str) and split):
            raise ValueError(f"budget --split {split!r} is not a non-empty string")

    def __init__(self, ctx: RunContext, options: Mapping[str, Any]) -> None:
        self.check_options(options)
        super().__init__(ctx, options)
        self.max_seconds: float | None = options.get("max_seconds")
        self.max_iterations: int | None = options.get("max_iterations")
        self.split: str = options.get("split") or PRIMARY_SPLIT
        self.votes_ = EpochVotes(ctx)
        self._warned = False

    def handled_types(self) -> frozenset[str] | None:
        """Without a budget, only the epoch ends it votes on: no iteration can use one up."""
        if self.max_seconds is None and self.max_iterations is None:
            return frozenset({EPOCH_COMPLETED})
        return self.handles

    async def handle(self, env: Envelope) -> None:
        """Check the budget at each iteration and epoch end; vote at each primary epoch end."""
        if env.type not in (ITERATION_COMPLETED, EPOCH_COMPLETED):
            return
        await self._check(env)
        if env.type == EPOCH_COMPLETED and env.data.get("split") == self.split:
            await self.votes_.epoch_end(env.epoch, self._within(env), env.iteration)

    def _elapsed(self, env: Envelope) -> float | None:
        started = self.ctx.started
        if started is None:
            if not self._warned:
                self._warned = True
                self.ctx.log.warning(
                    "start time unknown",
                    extra={
                        "detail": "the run's RUN_STARTED was not found, so --max-seconds "
                        "cannot be checked; is the trainer publishing to this namespace?"
                    },
                )
            return None
        return env.ts - started.ts

    async def _check(self, env: Envelope) -> None:
        if self.votes_.stopped is not None:
            return
        if self.max_iterations is not None and env.iteration >= self.max_iterations:
            reason = (
                f"iteration {env.iteration} reached the budget of {self.max_iterations} iterations"
            )
            await self.votes_.stop(reason, env.epoch, env.iteration)
            return
        elapsed = self._elapsed(env) if self.max_seconds is not None else None
        if elapsed is not None and self.max_seconds is not None and elapsed >= self.max_seconds:
            reason = (
                f"{elapsed:.1f} s since the run started (iteration {env.iteration}) reached "
                f"the budget of {self.max_seconds:g} s"
            )
            await self.votes_.stop(reason, env.epoch, env.iteration)

    def _within(self, env: Envelope) -> str:
        used = []
        if self.max_iterations is not None:
            used.append(f"iteration {env.iteration} of {self.max_iterations}")
        elapsed = self._elapsed(env) if self.max_seconds is not None else None
        if elapsed is not None:
            used.append(f"{elapsed:.1f} s of {self.max_seconds:g} s")
        return "within budget: " + ", ".join(used) if used else "no budget set"
