"""RunFollower: one worker kind on one run: join, consume the events topic, heartbeat, leave."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bus import (
    BEGINNING,
    NOW,
    Bus,
    BusUnavailable,
    Consumer,
    Envelope,
    Publisher,
    PublisherClosed,
    PublisherFailed,
    Topics,
)
from bus.messages import HEARTBEAT, RUN_STARTED, WORKER_JOINED, WORKER_LEFT
from workers.base import Worker
from workers.context import RunContext, config_value
from workers.drain import DrainWatch
from workers.logs import worker_log
from workers.registry import RegisteredRun, read_registry

# Seconds between attempts to create the consumer group while the bus is unreachable.
RETRY_DELAY = 0.5
# Entries per read for kinds that do not set `consumer_batch` (the Consumer's default).
CONSUMER_BATCH = 100
# Seconds a stopping worker lets the deliveries in hand finish before it cancels them (they
# stay pending, for a replica or its next start): SIGTERM ends any worker within 2 s.
STOP_GRACE = 1.0
# Seconds the consumer of a kind that sets no `read_linger` lets a run's events gather after
# a read that found fewer than a batch: it wakes a few times a second, not at every event the
# trainer publishes, for at most this much delay. A kind a barrier waits for reads without
# lingering when that matters (`Worker.serves_barrier`), so the delay only ever postpones
# what no one waits for (a vote outside barrier mode lands up to this much later). Each wake
# of a worker process costs about 0.1-0.5 ms of CPU here whatever it reads: 0.05 s cost a
# voter on Redis about twice the CPU per epoch of 0.2 s (bench/stack_overhead.py part 1).
READ_LINGER = 0.2


@dataclass(frozen=True)
class FollowerSetup:
    """What every run follower of one worker process shares."""

    kind: type[Worker]
    kind_options: Mapping[str, Any]
    bus: Bus
    publisher: Publisher
    topics: Topics
    name: str  # worker name = consumer name = source of what it sends
    group: str  # consumer group on each run's events topic
    secret: str | None
    heartbeat: float
    linger: float
    claim_idle: float
    block: float
    max_deliveries: int
    # Seconds the consumer lets entries gather after a read that found fewer than a batch;
    # None: the kind's own choice (`read_linger_for`).
    read_linger: float | None = None
    # Shared by the kind's instances on every run this process follows (RunContext.shared).
    shared: dict[str, Any] = field(default_factory=dict)


def _consumed_types(worker: Worker) -> frozenset[str] | None:
    """The types the follower reads off the run's events: the kind's, and RUN_STARTED (the
    follower learns the config from it)."""
    handled = worker.handled_types()
    return None if handled is None else handled | {RUN_STARTED}


def read_linger_for(worker: Worker, bus: Bus) -> float:
    """The seconds `worker` lets its run's events gather between reads (see READ_LINGER).

    None of them when a barrier would wait on it (`Worker.serves_barrier`): on a bus that
    filters types for the reader (only the types it handles wake it), and in a run in barrier
    mode (RUN_STARTED `barrier`, else the config's `bus.barrier`), where the trainer waits for
    its report at every epoch's end. Else the kind's `read_linger`, else READ_LINGER.
    """
    if worker.serves_barrier():
        filtered = getattr(bus, "filters_types", False) and worker.handled_types() is not None
        if filtered or in_barrier_mode(worker.ctx):
            return 0.0
    linger = type(worker).read_linger
    return READ_LINGER if linger is None else linger


def in_barrier_mode(ctx: RunContext) -> bool:
    """Whether the run's trainer waits for the voters at each epoch's end, as far as known."""
    said = ctx.started.data.get("barrier") if ctx.started is not None else None
    if isinstance(said, bool):
        return said
    return config_value(ctx.config, "bus.barrier") is True


async def first_of(*aws: Awaitable[Any], timeout: float | None = None) -> None:
    """Wait until the first of `aws` completes (or `timeout` s pass); cancel the futures it made."""
    futures = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, given in zip(futures, aws, strict=True):
            if future is not given:  # only what was made here: a caller's task stays theirs
                future.cancel()


class RunFollower:
    """Drives one Worker instance on one run, from WORKER_JOINED to WORKER_LEFT.

    The run's RUN_STARTED (from the registry, or the first one on the events topic) fills the
    context's config before anything else is handed to the kind. The run is over for this
    follower once every rank's RUN_FINISHED is on the registry, the consumer has then been
    idle for `linger` seconds (so the reports other workers publish after it are handled too)
    and no other consumer of its group holds a delivery (a replica that died with one leaves
    it to be reclaimed first; waited for one reclaim at most).
    """

    def __init__(self, setup: FollowerSetup, info: RegisteredRun, start: str) -> None:
        self.setup = setup
        self.info = info
        run_id = info.run_id
        kind = setup.kind
        self.log = worker_log(f"workers.{kind.kind}", worker=setup.name, kind=kind.kind, run=run_id)
        self.ctx = RunContext(
            run_id=run_id,
            kind=kind.kind,
            name=setup.name,
            topics=setup.topics,
            bus=setup.bus,
            publisher=setup.publisher,
            log=self.log,
            secret=setup.secret,
            shared=setup.shared,
        )
        if info.started is not None:
            self.ctx.learn_started(info.started)
        self.worker = kind(self.ctx, setup.kind_options)
        self._changed = asyncio.Event()
        self._reads = DrainWatch(setup.bus, on_read=self._note_activity)
        self.consumer = Consumer(
            self._reads,  # type: ignore[arg-type]  # a Bus by delegation
            setup.topics.events(run_id),
            setup.group,
            self._deliver,
            name=setup.name,
            start=start,
            max_deliveries=setup.max_deliveries,
            claim_idle=setup.claim_idle,
            # A kind whose handling is cheap per envelope reads more at a time: fewer round
            # trips per envelope. The batch must be handled well within claim_idle.
            batch=getattr(kind, "consumer_batch", CONSUMER_BATCH),
            block=setup.block,
            dead_letter_topic=setup.topics.dead_letter(),
            types=_consumed_types(self.worker),
            after_batch=self._flush,
        )
        self.started = asyncio.Event()  # set once joined and consuming
        self.joined = False
        self.error: BaseException | None = None
        self._consuming: asyncio.Task[None] | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        self._busy = False
        self._last_activity = time.monotonic()
        self._finished_at: float | None = None
        self._looked_up = False
        self._pending_since: float | None = None  # when the finished run still had some
        self._tune_linger()

    @property
    def run_id(self) -> str:
        """The followed run."""
        return self.info.run_id

    # -- delivery -------------------------------------------------------------------------

    def _tune_linger(self) -> None:
        """Set the consumer's linger for what is known of the run (its config, its end)."""
        consumer = self.consumer
        if self._finished_at is not None:
            consumer.linger = 0.0  # the run is over: read what is left at once
            consumer.wake()
        elif self.setup.read_linger is not None:
            consumer.linger = self.setup.read_linger
        else:
            consumer.linger = read_linger_for(self.worker, self.setup.bus)

    async def _flush(self) -> None:
        self._busy = True
        try:
            await self.worker.flush()
        finally:
            self._busy = False
            self._last_activity = time.monotonic()

    async def _deliver(self, env: Envelope) -> None:
        self._busy = True
        try:
            if env.type == RUN_STARTED:
                self._learn(env)
            elif self.ctx.started is None and not self._looked_up:
                # A replica may never get the run's RUN_STARTED (another one did): the
                # registry has a copy, written before anything else of the run.
                await self._look_up_started()
            await self.worker.handle(env)
        finally:
            self._busy = False
            self._last_activity = time.monotonic()
            self._note_activity()

    def _note_activity(self) -> None:
        # Deliveries and reads only matter to wait_end once the run has finished (it then
        # waits for the consumer to fall idle): waking it for each before would cost a round
        # of its waiting per batch, on the loop the trainer's publisher may share.
        if self._finished_at is not None:
            self._changed.set()

    def _learn(self, env: Envelope) -> None:
        if self.ctx.started is None:
            self.ctx.learn_started(env)
            self._tune_linger()
        if self.info.started is None:
            self.info.started = env  # its world size counts the RUN_FINISHED to wait for

    async def _look_up_started(self) -> None:
        self._looked_up = True
        runs, _ = await read_registry(self.setup.bus, self.setup.topics.registry(), self.run_id)
        found = runs.get(self.run_id)
        if found is not None and found.started is not None:
            self._learn(found.started)
            return
        self.log.warning(
            "config unknown",
            extra={
                "detail": f"no RUN_STARTED of run {self.run_id!r} on the events topic or the "
                f"registry {self.setup.topics.registry()!r}; the kind's options and defaults "
                "apply (is the trainer publishing to the same namespace?)"
            },
        )

    # -- the registry says --------------------------------------------------------------

    def on_registry(self, env: Envelope) -> None:
        """Account for a RUN_STARTED / RUN_FINISHED of this run read from the registry."""
        self.info.observe(env)
        if env.type == RUN_STARTED and self.ctx.started is None:
            self.ctx.learn_started(env)  # spares a replica the registry look-up
            self._tune_linger()
        self._note_finish()

    def _note_finish(self) -> None:
        if self.info.finished and self._finished_at is None:
            self._finished_at = time.monotonic()
            self.log.info("run finished", extra={"ranks": len(self.info.finished_by)})
            self._tune_linger()
        elif not self.info.finished and self._finished_at is not None:
            self._finished_at = None
            self._tune_linger()
        self._changed.set()

    # -- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Create the consumer group, announce WORKER_JOINED (written), then start consuming."""
        await self._ensure_group()
        setup = self.setup
        joined = {
            "kind": setup.kind.kind,
            "name": setup.name,
            "votes": setup.kind.votes,
            "heartbeat": float(setup.heartbeat),
        }
        await self.ctx.control(WORKER_JOINED, joined)
        self.joined = True
        # Written before any vote of this worker (the publisher keeps order across topics)
        # and before `ready`: the trainer counts the voter from here on.
        await setup.publisher.flush()
        self._note_finish()
        self._last_activity = time.monotonic()
        self._consuming = asyncio.create_task(
            self.consumer.run(), name=f"consumer:{setup.group}:{self.run_id}"
        )
        self._heartbeats = asyncio.create_task(self._beat(), name=f"heartbeat:{self.run_id}")
        start = {BEGINNING: "start", NOW: "now"}.get(self.consumer.start_from)
        self.log.info("joined", extra={"group": setup.group, "from": start})
        self.started.set()

    async def _ensure_group(self) -> None:
        while True:
            try:
                await self.consumer.ensure_group()
                return
            except BusUnavailable as exc:
                self.log.warning("bus unavailable", extra={"error": str(exc), "retry": True})
                await asyncio.sleep(RETRY_DELAY)

    async def _beat(self) -> None:
        data = {"kind": self.setup.kind.kind, "name": self.setup.name}
        while True:
            await asyncio.sleep(self.setup.heartbeat)
            try:
                await self.ctx.control(HEARTBEAT, data)
            except (PublisherClosed, PublisherFailed):
                return  # the worker is going away; close() says so

    async def wait_end(self, stop: asyncio.Event) -> str:
        """Wait until the run is over for this follower ("finished"), `stop` ("stopped") or the
        consumer failed ("failed")."""
        assert self._consuming is not None, "start() first"
        linger = self.setup.linger
        while True:
            if stop.is_set():
                return "stopped"
            if self._consuming.done():
                return "failed"
            timeout = None
            if self._finished_at is not None and not self._busy:
                since = max(self._last_activity, self._finished_at)
                # Idle means: everything there was after the finish has been read (a read came
                # back empty) and nothing came for `linger` seconds.
                if self._reads.drained_since(since):
                    idle = time.monotonic() - max(since, self._reads.last_entries)
                    if idle < linger:
                        timeout = linger - idle
                    elif await self._nothing_left_pending():
                        return "finished"
                    else:
                        timeout = self.consumer.claim_every  # its next reclaim may take them
            self._changed.clear()
            await first_of(stop.wait(), self._changed.wait(), self._consuming, timeout=timeout)

    async def _nothing_left_pending(self) -> bool:
        """Whether no other consumer of the group holds a delivery unacked, as far as worth
        waiting: one that a replica died with is this consumer's to reclaim once idle for
        claim_idle. Its own failed deliveries stay pending for a retry by a later start."""
        consumer = self.consumer
        try:
            held = await self.setup.bus.pending(consumer.topic, consumer.group)
        except BusUnavailable as exc:
            self.log.warning("bus unavailable", extra={"error": str(exc), "retry": True})
            return False
        left = sum(n for name, n in held.items() if name != consumer.name)
        if not left:
            return True
        now = time.monotonic()
        if self._pending_since is None:
            self._pending_since = now
            self.log.info(
                "waiting for deliveries others left",
                extra={
                    "pending": left,
                    "detail": f"reclaimed once idle for claim_idle ({consumer.claim_idle:g} s)",
                },
            )
        # By then a reclaim has taken whatever was idle for claim_idle: what others still hold
        # is work in hand (a live replica's), theirs to ack.
        if now - self._pending_since < consumer.claim_idle + 2 * consumer.claim_every:
            return False
        self.log.warning(
            "others hold deliveries",
            extra={"pending": left, "detail": "left to the replicas that hold them"},
        )
        return True

    async def close(self) -> None:
        """Finish the deliveries in hand and ack them, close the kind, announce WORKER_LEFT.

        Deliveries still in hand after STOP_GRACE seconds (a kind waiting for another kind's
        report) are cancelled and left pending.
        """
        self.ctx.stopping.set()
        if self._consuming is not None:
            await self.consumer.stop()
            await asyncio.wait({self._consuming}, timeout=STOP_GRACE)
            if not self._consuming.done():
                self.log.warning(
                    "stopped mid-delivery",
                    extra={
                        "detail": "deliveries in hand are left pending for a replica or the "
                        "next start"
                    },
                )
                self._consuming.cancel()
            (outcome,) = await asyncio.gather(self._consuming, return_exceptions=True)
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):
                self.error = outcome
                self.log.error("consumer failed", exc_info=outcome)
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
        try:
            await self.worker.close()
        except Exception:
            self.log.error("kind failed to close", exc_info=True)
        await self.ctx.cancel_side_tasks()
        if self.joined:
            self.joined = False
            data = {"kind": self.setup.kind.kind, "name": self.setup.name}
            try:
                await self.ctx.control(WORKER_LEFT, data)
            except (PublisherClosed, PublisherFailed) as exc:
                # The trainer drops this worker when its heartbeats stop instead.
                self.log.error("could not announce leaving", extra={"error": str(exc)})
                return
            self.log.info("left", extra={"handled": self.consumer.stats.handled})


async def drive(follower: RunFollower, stop: asyncio.Event) -> str:
    """Start `follower`, run it until its run is over or `stop`, then close it; the outcome."""
    try:
        starting = asyncio.ensure_future(follower.start())
        await first_of(starting, stop.wait())
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return "stopped"
        starting.result()  # a start that failed raises here
        return await follower.wait_end(stop)
    finally:
        await follower.close()
