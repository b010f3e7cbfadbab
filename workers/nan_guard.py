"""nan-guard: a voter that stops a run whose training output turns NaN, infinite or diverges."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from bus import Envelope, Rejected
from bus.messages import EPOCH_COMPLETED, ITERATION_COMPLETED, PRIMARY_SPLIT
from workers.base import Worker
from workers.context import RunContext
from workers.epoch_votes import EpochVotes

DEFAULT_KEY = "loss"
# The trainer names a step's plain number output "output": the fallback when there is no loss.
SCALAR_OUTPUT = "output"


class NanGuardWorker(Worker):
    """Vote stop on a NaN or infinite training output, or one past `factor` x the lowest seen.

    Watches ITERATION_COMPLETED outputs of the primary split ("train"): `--key` (default
    "loss", or "output" when a step returns a plain number). Votes continue on each epoch end
    until it trips; from then on its stop stands.
    """

    kind: ClassVar[str] = "nan-guard"
    votes: ClassVar[bool] = True
    handles: ClassVar[frozenset[str] | None] = frozenset({ITERATION_COMPLETED, EPOCH_COMPLETED})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add --key, --factor and --split."""
        parser.add_argument("--key", help="output to watch (loss, else output)")
        parser.add_argument(
            "--factor",
            type=float,
            help="also stop when the output exceeds FACTOR x its lowest value (off)",
        )
        parser.add_argument("--split", help="split whose outputs are watched (train)")

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise ValueError for a factor that is not a number > 1 or an empty key or split."""
        factor = options.get("factor")
        if factor is not None and not (
            isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 1
        ):
            raise ValueError(
                f"nan-guard --factor {factor!r} is not a number > 1 (e.g. 10: stop when the "
                "output exceeds 10 x its lowest value); leave it out to watch NaN/inf only"
            )
        for key in ("key", "split"):
            value = options.get(key)
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"nan-guard --{key} {value!r} is not a non-empty string")

    def __init__(self, ctx: RunContext, options: Mapping[str, Any]) -> None:
        self.check_options(options)
        super().__init__(ctx, options)
        self.key: str | None = options.get("key")
        self.factor: float | None = options.get("factor")
        self.split: str = options.get("split") or PRIMARY_SPLIT
        self.lowest: float | None = None
        self.votes_ = EpochVotes(ctx)
        self._warned = False

    async def handle(self, env: Envelope) -> None:
        """Check each ITERATION_COMPLETED of the split; vote at each of its EPOCH_COMPLETED."""
        if env.data.get("split") != self.split:
            return
        if env.type == ITERATION_COMPLETED:
            await self._check(env)
        elif env.type == EPOCH_COMPLETED:
            lowest = "" if self.lowest is None else f" (lowest {self.lowest:.6g})"
            reason = f"{self.key or DEFAULT_KEY} finite and not diverging{lowest}"
            await self.votes_.epoch_end(env.epoch, reason, env.iteration)

    def _value(self, env: Envelope) -> tuple[str, float] | None:
        outputs = env.data.get("outputs")
        if not isinstance(outputs, Mapping):
            kind = type(outputs).__name__
            raise Rejected(f"ITERATION_COMPLETED data.outputs is {kind}, not a map")
        key = self.key
        if key is None:
            key = DEFAULT_KEY if DEFAULT_KEY in outputs else SCALAR_OUTPUT
        if key not in outputs:
            if not self._warned:
                self._warned = True
                self.ctx.log.warning(
                    "output missing",
                    extra={
                        "detail": f"no output {key!r} in ITERATION_COMPLETED outputs (has "
                        f"{', '.join(map(str, outputs)) or 'none'}); pass --key to watch one"
                    },
                )
            return None
        value = outputs[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Rejected(f"ITERATION_COMPLETED outputs[{key!r}] is {value!r}, not a number")
        return key, float(value)

    async def _check(self, env: Envelope) -> None:
        found = self._value(env)
        if found is None or self.votes_.stopped is not None:
            return
        key, value = found
        where = f"at iteration {env.iteration} (epoch {self.ctx.epoch_label(env.epoch)})"
        if not math.isfinite(value):
            await self.votes_.stop(f"{key} is {value} {where}", env.epoch, env.iteration)
            return
        lowest = self.lowest
        # Only a positive lowest makes "factor x lowest" a ceiling above it (losses are >= 0).
        factor = self.factor
        if factor is not None and lowest is not None and lowest > 0 and value > factor * lowest:
            reason = f"{key} {value:.6g} {where} exceeds {factor:g} x its lowest {lowest:.6g}"
            await self.votes_.stop(reason + ": diverging", env.epoch, env.iteration)
            return
        self.lowest = value if lowest is None else min(lowest, value)
