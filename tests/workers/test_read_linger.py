"""How long each kind lets a run's events gather between reads (follow.read_linger_for)."""

from __future__ import annotations

from typing import Any

from bus import Envelope, RedisStreamBus
from workers.checkpoint import CheckpointWorker
from workers.context import RunContext
from workers.early_stop import EarlyStopWorker
from workers.follow import READ_LINGER, read_linger_for
from workers.metrics import MetricsWorker
from workers.tracking import TrackingWorker

# Built, never connected: a bus that cannot pass over types for its readers.
REDIS = RedisStreamBus("redis://127.0.0.1:1")


def started(
    ctx: RunContext, *, barrier: bool | None, world_size: int = 1, said: bool | None = None
) -> RunContext:
    """`ctx` once its RUN_STARTED came: barrier mode as the config says it, and as RUN_STARTED
    itself says it (`said`, None: a trainer that does not say)."""
    config: dict[str, Any] = {} if barrier is None else {"bus": {"barrier": barrier}}
    data: dict[str, Any] = {"config": config, "world_size": world_size}
    if said is not None:
        data["barrier"] = said
    ctx.learn_started(Envelope("RUN_STARTED", ctx.run_id, "trainer:0", data))
    return ctx


async def test_on_redis_a_voter_lingers_unless_the_run_waits_for_its_votes(
    worker_ctx: RunContext,
) -> None:
    voter = EarlyStopWorker(started(worker_ctx, barrier=False), {})
    assert read_linger_for(voter, REDIS) == READ_LINGER > 0
    # In barrier mode the trainer waits for its vote at every epoch's end: read at once.
    voter = EarlyStopWorker(started(worker_ctx, barrier=True), {})
    assert read_linger_for(voter, REDIS) == 0.0
    # What RUN_STARTED says wins over the config (a BusRun(barrier=True) whose config is not
    # the trainer's says nothing of it).
    voter = EarlyStopWorker(started(worker_ctx, barrier=None, said=True), {})
    assert read_linger_for(voter, REDIS) == 0.0
    voter = EarlyStopWorker(started(worker_ctx, barrier=True, said=False), {})
    assert read_linger_for(voter, REDIS) == READ_LINGER


async def test_the_aggregator_reads_at_once_only_when_a_barrier_waits_for_its_metrics(
    worker_ctx: RunContext,
) -> None:
    # One rank: voters score the trainer's own EPOCH_COMPLETED metrics, not METRICS.
    one = MetricsWorker(started(worker_ctx, barrier=True), {})
    assert read_linger_for(one, REDIS) == READ_LINGER
    two = MetricsWorker(started(worker_ctx, barrier=True, world_size=2), {})
    assert read_linger_for(two, REDIS) == 0.0


async def test_on_a_bus_that_passes_over_types_a_voter_never_lingers(
    worker_ctx: RunContext,
) -> None:
    # Only an entry of its types wakes it there: lingering would only delay its votes.
    voter = EarlyStopWorker(started(worker_ctx, barrier=None), {})
    assert read_linger_for(voter, worker_ctx.bus) == 0.0


async def test_the_tracker_lingers_longer_whatever_the_bus(worker_ctx: RunContext) -> None:
    ctx = started(worker_ctx, barrier=True)
    tracker = TrackingWorker(ctx, {})
    for bus in (REDIS, ctx.bus):
        assert read_linger_for(tracker, bus) == TrackingWorker.read_linger
    assert TrackingWorker.read_linger > READ_LINGER
    # Checkpoint replicas share READYs read by read: a short linger keeps those reads small.
    checkpoints = CheckpointWorker(ctx, {})
    assert read_linger_for(checkpoints, REDIS) == CheckpointWorker.read_linger
    assert CheckpointWorker.read_linger < READ_LINGER
