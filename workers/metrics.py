"""The metrics worker: merges every rank's metric states of an epoch into one METRICS report.

On EPOCH_COMPLETED it checks `metric_states` (name -> {"class", "settings", "state"}) as far as
is cheap (the class is registered, the settings build it, the state has the class's entries)
and keeps the states as received, until every rank of the run (`world_size`) has sent its
states for that (split, epoch), or `--rank-timeout` seconds (default: the run config's
`dist.rank_timeout`, else 30) have passed since the first of them came: then it reports with
the ranks it has and logs a warning naming the missing ones (a rank's states that come later
are left out, with a warning). It merges them with the metric classes' own `merge` and
`compute`, on a metric rebuilt by class name from `trainer.metrics.registry` once per (class,
settings) and reset for each epoch, and publishes METRICS {split, epoch, values, ranks,
running: False}. A metric whose states turn out not to merge is logged and left out. With
`--running-every N` it also publishes the mean of ITERATION_COMPLETED outputs over the epoch so
far (running: True) each time the trainer's iteration passes a multiple of N.

One replica per run: the ranks' EPOCH_COMPLETED of one epoch must reach the same worker.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from bus import Envelope, Rejected
from bus.messages import EPOCH_COMPLETED, ITERATION_COMPLETED, METRICS
from trainer.config_schema import DistSection
from trainer.metrics import NotComputableError
from trainer.metrics.registry import (
    MetricMessageError,
    MetricPart,
    MetricTemplates,
    scalar_values,
)
from workers.base import Worker
from workers.context import RunContext
from workers.figures import own_figures

Key = tuple[str, int]  # (split, trainer epoch)
# Seconds to wait for every rank's states of an epoch when neither --rank-timeout nor the run's
# config (dist.rank_timeout) says: the config schema's default.
DEFAULT_RANK_TIMEOUT = DistSection().rank_timeout


@dataclass
class _EpochStates:
    """What the ranks sent so far for one (split, epoch), kept as received until the last."""

    ranks: dict[int, dict[str, MetricPart]] = field(default_factory=dict)
    iteration: int = 0
    world_size: int = 1


@dataclass
class _RunningMeans:
    """Sums of the scalar outputs of one (split, epoch) so far, over every rank."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    ranks: set[int] = field(default_factory=set)

    def add(self, outputs: Mapping[str, float], count: int) -> None:
        """Fold in one envelope's outputs, each the mean over `count` iterations."""
        for name, value in outputs.items():
            self.sums[name] = self.sums.get(name, 0.0) + value * count
            self.counts[name] = self.counts.get(name, 0) + count

    def means(self) -> dict[str, float]:
        """The mean of every output over the iterations seen."""
        return {name: self.sums[name] / self.counts[name] for name in sorted(self.sums)}


def _is_int(value: Any) -> bool:
    return type(value) is int or (isinstance(value, int) and not isinstance(value, bool))


def _describe(env: Envelope, split: Any) -> str:
    return f"{env.type} {env.id} (split {split!r}, epoch {env.epoch + 1})"


def _metric_where(env: Envelope, split: Any, name: Any) -> str:
    return f"metric_states[{name!r}] of {_describe(env, split)}"


def envelope_rank(env: Envelope) -> int:
    """The trainer rank that sent `env`: data.rank, else the "trainer:<r>" source, else 0."""
    rank = env.data.get("rank")
    if _is_int(rank):
        return rank
    prefix, _, suffix = env.source.partition(":")
    if prefix == "trainer" and suffix.isdigit():
        return int(suffix)
    return 0


class MetricsWorker(Worker):
    """Aggregates every rank's metric states per (split, epoch) into METRICS."""

    kind: ClassVar[str] = "metrics"
    # Entries per read: handling one takes tens of microseconds, so a read of 500 is handled
    # far within claim_idle, and costs a fifth of the round trips per envelope of the default.
    consumer_batch: ClassVar[int] = 500
    handles: ClassVar[frozenset[str] | None] = frozenset({EPOCH_COMPLETED})

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """--running-every N, --rank-timeout SECONDS."""
        parser.add_argument(
            "--running-every",
            type=int,
            default=None,
            metavar="N",
            help="also publish running means of the iteration outputs every N iterations "
            "(METRICS with running: true); default: off",
        )
        parser.add_argument(
            "--rank-timeout",
            type=float,
            default=None,
            metavar="SECONDS",
            help="how long to wait for every rank's metric states of an epoch before reporting "
            "with the ranks that sent theirs (a warning names the missing ones); default: the "
            f"run config's dist.rank_timeout, else {DEFAULT_RANK_TIMEOUT:g}",
        )

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Refuse a --running-every below 1 or a --rank-timeout that is not > 0."""
        every = options.get("running_every")
        if every is not None and (not _is_int(every) or every < 1):
            raise ValueError(
                f"--running-every must be an integer >= 1 (or left out for off), got {every!r}"
            )
        timeout = options.get("rank_timeout")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
        ):
            raise ValueError(
                f"--rank-timeout must be a number of seconds > 0 (or left out for the run "
                f"config's dist.rank_timeout), got {timeout!r}"
            )

    def __init__(self, ctx: RunContext, options: Mapping[str, Any]) -> None:
        super().__init__(ctx, options)
        self.check_options(self.options)
        self.running_every: int | None = self.options.get("running_every")
        self._pending: dict[Key, _EpochStates] = {}
        self._published: set[Key] = set()
        # Per (split, epoch) still waiting for ranks: the task that reports without them.
        self._deadlines: dict[Key, asyncio.Task[None]] = {}
        # Per (split, epoch) reported without every rank: the ranks it went without.
        self._missing: dict[Key, list[int]] = {}
        self._running: dict[Key, _RunningMeans] = {}
        self._last_iteration: dict[str, int] = {}  # per split: the highest iteration seen
        self._unknown_classes: set[Any] = set()
        self._templates = MetricTemplates()

    def handled_types(self) -> frozenset[str] | None:
        """EPOCH_COMPLETED; ITERATION_COMPLETED too with --running-every."""
        if self.running_every is None:
            return self.handles
        return frozenset({EPOCH_COMPLETED, ITERATION_COMPLETED})

    def serves_barrier(self) -> bool:
        """With several ranks, voters score METRICS, so a barrier waits for them too (with
        one rank they score the trainer's own EPOCH_COMPLETED metrics, `workers.figures`)."""
        return not own_figures(self.ctx.world_size)

    async def handle(self, env: Envelope) -> None:
        """Collect EPOCH_COMPLETED states (and ITERATION_COMPLETED outputs when running)."""
        if env.type == EPOCH_COMPLETED:
            complete = self._collect(env)
            if complete is not None:
                deadline = self._deadlines.pop(complete, None)
                if deadline is not None:
                    deadline.cancel()
                await self._publish_epoch(complete)
        elif env.type == ITERATION_COMPLETED and self.running_every is not None:
            await self._iteration_completed(env)

    # --- per-epoch aggregation ---------------------------------------------------------------

    def _collect(self, env: Envelope) -> Key | None:
        """Keep one rank's metric states; the (split, epoch) they complete, if they do."""
        data = env.data
        split = data.get("split")
        if not isinstance(split, str):
            raise Rejected(f"{_describe(env, split)}: 'split' must be a str, got {split!r}")
        world_size = data.get("world_size", self.ctx.world_size)
        if not _is_int(world_size) or world_size < 1:
            raise Rejected(
                f"{_describe(env, split)}: 'world_size' must be an integer >= 1, got {world_size!r}"
            )
        rank = envelope_rank(env)
        if not 0 <= rank < world_size:
            raise Rejected(
                f"{_describe(env, split)}: rank {rank} is outside world_size {world_size}"
            )
        states = data.get("metric_states")
        if type(states) is not dict and not isinstance(states, Mapping):
            raise Rejected(
                f"{_describe(env, split)}: 'metric_states' must be a map of metric name to "
                f"{{class, settings, state}}, got {type(states).__name__}"
            )
        parts = self._parts(states, env, split)
        key: Key = (split, env.epoch)
        if key in self._published:
            context = {"split": split, "epoch": self.ctx.epoch_label(env.epoch), "rank": rank}
            if rank in self._missing.get(key, ()):
                self.ctx.log.warning(
                    "rank's metric states came after the rank timeout, left out", extra=context
                )
            else:
                # A redelivery, or a second evaluation within the same trainer epoch.
                self.ctx.log.info("metrics already published", extra=context)
            return None
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _EpochStates(world_size=world_size)
            if world_size > 1:
                self._deadlines[key] = self.ctx.spawn(self._report_without_missing(key))
        pending.ranks[rank] = parts
        if env.iteration > pending.iteration:
            pending.iteration = env.iteration
        if len(pending.ranks) < world_size or any(
            r not in pending.ranks for r in range(world_size)
        ):
            return None
        return key

    def _parts(self, states: Mapping[Any, Any], env: Envelope, split: str) -> dict[str, MetricPart]:
        """The metrics of one rank's `metric_states`, checked as far as is cheap; the merge
        comes once the last rank has reported."""
        try:
            parts, unknown = self._templates.parse(
                states, lambda name: _metric_where(env, split, name)
            )
        except MetricMessageError as exc:
            raise Rejected(str(exc)) from None
        for cls, exc in unknown.items():
            # Left out alone: the others (e.g. the score of the checkpoints) must not be lost
            # because one custom class is not registered here.
            if cls not in self._unknown_classes:
                self._unknown_classes.add(cls)
                self.ctx.log.warning("metric left out", extra={"reason": str(exc)})
        return parts

    def rank_timeout(self) -> float:
        """Seconds to wait for every rank: --rank-timeout, else the run's dist.rank_timeout."""
        value = self.ctx.setting(self.options.get("rank_timeout"), "dist.rank_timeout", None)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            return DEFAULT_RANK_TIMEOUT  # unset, null, or not a usable number in the config
        return float(value)

    async def _report_without_missing(self, key: Key) -> None:
        """After the rank timeout, report `key` with the ranks that sent their states."""
        timeout = self.rank_timeout()
        await asyncio.sleep(timeout)
        self._deadlines.pop(key, None)
        pending = self._pending.get(key)
        if pending is None or key in self._published:
            return
        missing = [r for r in range(pending.world_size) if r not in pending.ranks]
        self.ctx.log.warning(
            "metrics reported without every rank",
            extra={
                "split": key[0],
                "epoch": self.ctx.epoch_label(key[1]),
                "missing_ranks": missing,
                "ranks": sorted(pending.ranks),
                "waited": timeout,
            },
        )
        self._missing[key] = missing
        # Marked before the publish's await: the missing rank's states, should they come
        # meanwhile, must not make a second report.
        self._published.add(key)
        try:
            await self._publish_epoch(key)
        except Exception:  # no delivery to retry with: say so rather than fail the side task
            self.ctx.log.error(
                "METRICS without the missing ranks could not be published",
                extra={"split": key[0], "epoch": self.ctx.epoch_label(key[1])},
                exc_info=True,
            )

    async def _publish_epoch(self, key: Key) -> None:
        split, epoch = key
        pending = self._pending[key]
        ranks = sorted(pending.ranks)
        per_rank = [pending.ranks[r] for r in ranks]
        names = set(per_rank[0])
        for metrics in per_rank:
            if metrics.keys() != names:
                names.update(metrics)
        values: dict[str, float] = {}
        for name in sorted(names):
            value = self._merged(name, [metrics.get(name) for metrics in per_rank], key)
            if value is not None:
                values.update(scalar_values(name, value))
        data = {"split": split, "epoch": epoch, "values": values, "ranks": ranks, "running": False}
        await self.ctx.publish(METRICS, data, epoch=epoch, iteration=pending.iteration)
        # Marked only once published: a failed publish is retried with the delivery.
        self._published.add(key)
        del self._pending[key]

    def _merged(self, name: str, parts: list[MetricPart | None], key: Key) -> Any:
        """The value of metric `name` merged over every rank, or None (logged) if it has none."""
        context = {"metric": name, "split": key[0], "epoch": self.ctx.epoch_label(key[1])}
        if None in parts:
            self.ctx.log.warning("metric missing on some ranks, left out", extra=context)
            return None
        present = cast("list[MetricPart]", parts)
        template = present[0][0]
        identity = template.identity
        for other, _ in present:
            if other is not template and other.identity != identity:
                identities = sorted({t.identity for t, _ in present})
                self.ctx.log.warning(
                    "metric differs between ranks, left out",
                    extra={**context, "identities": identities},
                )
                return None
        try:
            # The class's own merge and compute, on the template of the first rank's.
            return template.merged([state for _, state in present])
        except NotComputableError:
            return None  # no data this epoch (e.g. an empty split): nothing to report
        except Exception as exc:  # a state found wrong only now, or a metric's own bug
            self.ctx.log.warning(
                "metric cannot be merged, left out", extra={**context, "error": exc}
            )
            return None

    # --- running means -----------------------------------------------------------------------

    async def _iteration_completed(self, env: Envelope) -> None:
        data = env.data
        split = data.get("split")
        what = _describe(env, split)
        if not isinstance(split, str):
            raise Rejected(f"{what}: 'split' must be a str, got {split!r}")
        outputs = data.get("outputs")
        if not isinstance(outputs, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in outputs.items()
        ):
            raise Rejected(f"{what}: 'outputs' must be a map of name to number, got {outputs!r}")
        count = data.get("count", 1)
        if not _is_int(count) or count < 1:
            raise Rejected(f"{what}: 'count' must be an integer >= 1, got {count!r}")
        key: Key = (split, env.epoch)
        running = self._running.get(key)
        if running is None:
            # A new epoch of this split: the previous epochs' sums are done with.
            for old in [k for k in self._running if k[0] == split and k[1] < env.epoch]:
                del self._running[old]
            running = self._running[key] = _RunningMeans()
        running.add(outputs, count)
        running.ranks.add(envelope_rank(env))
        before = self._last_iteration.get(split, 0)
        self._last_iteration[split] = max(before, env.iteration)
        every = self.running_every
        assert every is not None
        # The trainer's global iteration, as Events.ITERATION_COMPLETED(every=N) counts it;
        # coalesced envelopes may jump over a multiple of N, so what counts is passing one.
        if env.iteration // every > before // every:
            data = {
                "split": split,
                "epoch": env.epoch,
                "values": running.means(),
                "ranks": sorted(running.ranks),
                "running": True,
            }
            await self.ctx.publish(METRICS, data, epoch=env.epoch, iteration=env.iteration)
