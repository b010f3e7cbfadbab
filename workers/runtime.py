"""The worker runtime: run one worker kind on one run (`--run ID`) or on every run (`--follow`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bus import BEGINNING, NOW, Envelope, Publisher, PublisherFailed, Topics, open_bus
from bus.messages import RUN_STARTED, SECRET_ENV
from workers.base import Worker
from workers.follow import FollowerSetup, RunFollower, drive, first_of
from workers.kinds import load_kind
from workers.logs import configure_logging, worker_log
from workers.registry import RegisteredRun, RegistryHook, read_registry, watch_registry

# Seconds the publisher may take, on the way out, to write what is left (WORKER_LEFT...).
CLOSE_TIMEOUT = 5.0
_STARTS = {"start": BEGINNING, "now": NOW}


@dataclass
class RuntimeOptions:
    """How a worker process connects, which runs it follows and how it paces itself."""

    bus_url: str
    run_id: str | None = None  # follow this run ...
    follow: bool = False  # ... or every run announced on the registry "<ns>:runs"
    start: str = "start"  # "start": back-fill each run's history; "now": only what comes next
    name: str | None = None  # default f"{kind}-{hostname}-{pid}"
    namespace: str = "trainer"
    heartbeat: float = 2.0  # seconds between HEARTBEATs on each followed run's control topic
    linger: float = 1.0  # after RUN_FINISHED of every rank, keep handling until idle this long
    secret: str | None = None  # default os.environ.get("TRAINER_BUS_SECRET")
    claim_idle: float = 30.0
    block: float = 1.0
    max_deliveries: int = 5
    # Seconds the consumer lets a run's events gather after a read that found fewer than a
    # batch: a worker wakes a few times a second, not at every event the trainer publishes,
    # for at most this much delay. None: the kind's choice (workers.follow.read_linger_for).
    read_linger: float | None = None
    # The consumer group; None: the kind's, shared by replicas (a voter's own). Another group
    # makes an independent copy of the kind, e.g. a second tracker writing elsewhere.
    group: str | None = None

    def check(self) -> None:
        """Raise ValueError naming the first option that cannot work, and how to fix it."""
        if (self.run_id is None) == (not self.follow):
            raise ValueError(
                f"RuntimeOptions(run_id={self.run_id!r}, follow={self.follow!r}): give a run "
                "id (--run ID) or follow=True (--follow), exactly one of them"
            )
        if self.start not in _STARTS:
            raise ValueError(f"RuntimeOptions start={self.start!r}: use 'start' or 'now'")
        Topics(self.namespace)  # raises InvalidTopic naming a bad namespace
        if self.run_id is not None:
            Topics(self.namespace).events(self.run_id)  # ... or a bad run id
        for field, value, low in (
            ("heartbeat", self.heartbeat, 0.0),
            ("block", self.block, 0.0),
        ):
            if not value > low:
                raise ValueError(f"RuntimeOptions {field}={value!r}: use a number of seconds > 0")
        for field, value in (
            ("linger", self.linger),
            ("claim_idle", self.claim_idle),
            ("read_linger", 0.0 if self.read_linger is None else self.read_linger),
        ):
            if not value >= 0:
                raise ValueError(f"RuntimeOptions {field}={value!r}: use a number of seconds >= 0")
        if not isinstance(self.max_deliveries, int) or self.max_deliveries < 1:
            raise ValueError(
                f"RuntimeOptions max_deliveries={self.max_deliveries!r}: use an int >= 1"
            )
        if self.name is not None and not self.name:
            raise ValueError("RuntimeOptions name='': give a non-empty name or None")
        if self.group is not None and not self.group:
            raise ValueError("RuntimeOptions group='': give a non-empty group or None")


def default_name(kind: str) -> str:
    """The default worker name: kind, host and pid (unique per process on a machine)."""
    return f"{kind}-{socket.gethostname()}-{os.getpid()}"


def consumer_group(kind: type[Worker], name: str) -> str:
    """The consumer group a worker reads a run's events through.

    Replicas of a kind share the kind's group, so each envelope is handled by one of them. A
    voter gets a group of its own: it must see every epoch of the run to vote on each (and its
    patience counts every evaluation), so voters never split a run's envelopes between them.
    """
    return f"{kind.kind}:{name}" if kind.votes else kind.kind


async def run_worker(
    kind: type[Worker],
    options: RuntimeOptions,
    kind_options: Mapping[str, Any],
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
) -> int:
    """Run `kind` as `options` say until its run is over or `stop` is set; the exit status.

    `ready` is set once the worker has joined (WORKER_JOINED written, consumer group created):
    on its run with `run_id`, on the runs live at start with `follow`.
    """
    options = kind.runtime_options(options, kind_options)
    options.check()
    kind.check_options(kind_options)
    stop = stop if stop is not None else asyncio.Event()
    name = options.name or default_name(kind.kind)
    secret = options.secret if options.secret is not None else os.environ.get(SECRET_ENV)
    bus = open_bus(options.bus_url)
    publisher = Publisher(bus)
    setup = FollowerSetup(
        kind=kind,
        kind_options=dict(kind_options),
        bus=bus,
        publisher=publisher,
        topics=Topics(options.namespace),
        name=name,
        group=options.group or consumer_group(kind, name),
        secret=secret or None,
        heartbeat=options.heartbeat,
        linger=options.linger,
        claim_idle=options.claim_idle,
        block=options.block,
        max_deliveries=options.max_deliveries,
        read_linger=options.read_linger,
    )
    log = worker_log("workers.runtime", worker=name, kind=kind.kind)
    where = {"run": options.run_id} if options.run_id is not None else {"follow": True}
    log.info("start", extra={**where, "from": options.start})
    try:
        if options.follow:
            return await _follow_runs(setup, _STARTS[options.start], stop, ready)
        assert options.run_id is not None
        return await _follow_run(setup, options.run_id, _STARTS[options.start], stop, ready)
    finally:
        await _close_publisher(publisher, log)
        await bus.close()
        log.info("exit")


async def _close_publisher(publisher: Publisher, log: logging.LoggerAdapter) -> None:
    try:
        await publisher.close(CLOSE_TIMEOUT)
    except (TimeoutError, PublisherFailed) as exc:
        log.error("envelopes left unwritten", extra={"error": str(exc)})


async def _until_stopped(coro: Any, stop: asyncio.Event) -> Any:
    """Await `coro` unless `stop` comes first (then cancel it and return None)."""
    task = asyncio.ensure_future(coro)
    await first_of(task, stop.wait())
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _watch(
    setup: FollowerSetup, after: str, on_run: RegistryHook, ending: asyncio.Event
) -> bool:
    """Follow the registry until cancelled; on an error it cannot ride out, log it, set
    `ending` and return False (the worker then winds down and exits 1)."""
    try:
        await watch_registry(setup.bus, setup.topics.registry(), after, on_run)
    except Exception:
        log = worker_log("workers.runtime", worker=setup.name, kind=setup.kind.kind)
        log.error("registry watch failed", exc_info=True)
        ending.set()
        return False
    return True


async def _stopping(stop: asyncio.Event, ending: asyncio.Event) -> None:
    await stop.wait()
    ending.set()


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _follow_run(
    setup: FollowerSetup, run_id: str, start: str, stop: asyncio.Event, ready: asyncio.Event | None
) -> int:
    # The run's RUN_STARTED first, so that the kind knows the config even when starting now.
    found = await _until_stopped(read_registry(setup.bus, setup.topics.registry(), run_id), stop)
    if found is None:
        return 0
    runs, after = found
    follower = RunFollower(setup, runs.get(run_id) or RegisteredRun(run_id), start)

    async def on_run(env: Envelope) -> None:
        if env.run_id == run_id:
            follower.on_registry(env)

    ending = asyncio.Event()  # set on `stop`, or when the registry cannot be followed
    watcher = asyncio.create_task(_watch(setup, after, on_run, ending))
    relay = asyncio.create_task(_stopping(stop, ending))
    driving = asyncio.create_task(drive(follower, ending))
    try:
        await first_of(follower.started.wait(), driving)
        if follower.started.is_set() and ready is not None:
            ready.set()
        outcome = await driving
    finally:
        await _cancel(watcher, relay)
    watched = watcher.done() and not watcher.cancelled() and watcher.result() is False
    return 1 if outcome == "failed" or watched else 0


async def _follow_runs(
    setup: FollowerSetup, start: str, stop: asyncio.Event, ready: asyncio.Event | None
) -> int:
    log = worker_log("workers.runtime", worker=setup.name, kind=setup.kind.kind)
    found = await _until_stopped(read_registry(setup.bus, setup.topics.registry()), stop)
    if found is None:
        return 0
    runs, after = found
    ending = asyncio.Event()  # set on `stop`, or when the registry cannot be followed
    followers: dict[str, RunFollower] = {}
    driving: dict[asyncio.Task[str], RunFollower] = {}

    def launch(info: RegisteredRun, start: str) -> None:
        try:
            follower = RunFollower(setup, info, start)
        except Exception:
            # One run this kind cannot follow (e.g. its config) must not end the others.
            log.error("cannot follow run", extra={"run": info.run_id}, exc_info=True)
            return
        followers[info.run_id] = follower
        task = asyncio.create_task(drive(follower, ending), name=f"follow:{info.run_id}")
        driving[task] = follower

        def done(task: asyncio.Task[str]) -> None:
            driving.pop(task, None)
            if followers.get(info.run_id) is follower:
                del followers[info.run_id]
            error = None if task.cancelled() else task.exception()
            if error is not None:
                log.error("run follower failed", extra={"run": info.run_id}, exc_info=error)

        task.add_done_callback(done)

    def wanted(info: RegisteredRun) -> bool:
        return setup.kind.wants(info.started, setup.kind_options)

    # Runs live now are followed from where `start` says; runs already over are skipped.
    for info in runs.values():
        if info.started is not None and not info.finished and wanted(info):
            launch(info, start)
    for task, follower in list(driving.items()):
        await first_of(follower.started.wait(), task, stop.wait())
    if ready is not None:
        ready.set()

    async def on_run(env: Envelope) -> None:
        follower = followers.get(env.run_id)
        if follower is not None:
            follower.on_registry(env)
            return
        info = runs.setdefault(env.run_id, RegisteredRun(env.run_id))
        info.observe(env)
        if env.type == RUN_STARTED and not info.finished and wanted(info):
            # Started after this worker: all of its history is new, whatever `start` says.
            launch(info, BEGINNING)

    watcher = asyncio.create_task(_watch(setup, after, on_run, ending))
    relay = asyncio.create_task(_stopping(stop, ending))
    try:
        await ending.wait()
    finally:
        ending.set()
        await _cancel(watcher, relay)
        if driving:
            await asyncio.gather(*driving, return_exceptions=True)
    watched = watcher.done() and not watcher.cancelled() and watcher.result() is False
    return 1 if watched else 0


class _SignalStop:
    """SIGTERM/SIGINT handler kept installed until the process exits (then: ignored).

    Each signal sets the running worker's stop event (through its loop); one that arrives
    before the loop runs makes the worker stop as soon as it starts, and one that arrives
    while the worker is already leaving (after its run finished, or after the loop closed)
    is noted and changes nothing: the process ends with the worker's own exit status.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop: asyncio.Event | None = None
        self.log: logging.LoggerAdapter | None = None
        self.received: signal.Signals | None = None

    def install(self) -> None:
        """Handle SIGTERM and SIGINT in this process from now until it exits."""
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self)

    def attach(
        self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event, log: logging.LoggerAdapter
    ) -> None:
        """Route later signals to `stop` on `loop`; set it now if one came already."""
        self.loop, self.stop, self.log = loop, stop, log
        if self.received is not None:
            self._on_loop(self.received)

    def ignore(self) -> None:
        """Ignore SIGTERM and SIGINT from now on (the process is on its way out)."""
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def detach(self) -> None:
        """The loop is going away: later signals only get noted."""
        self.loop = self.stop = None

    def __call__(self, signum: int, frame: Any) -> None:
        sig = signal.Signals(signum)
        first = self.received is None
        self.received = sig
        loop = self.loop
        if loop is not None:
            # In the main thread between two bytecodes: the loop may be mid-callback, so the
            # stop is set from the loop itself (which this also wakes up).
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._on_loop, sig)
        elif first:
            # No loop (yet, or any more): nothing to stop now. Written directly: logging is
            # not safe to enter from a signal handler.
            os.write(2, f"event=stopping signal={sig.name} when=outside-the-loop\n".encode())

    def _on_loop(self, sig: signal.Signals) -> None:
        if self.stop is not None and not self.stop.is_set():
            if self.log is not None:
                self.log.info("stopping", extra={"signal": sig.name})
            self.stop.set()


HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def main(kind: str, options: RuntimeOptions, kind_options: Mapping[str, Any]) -> int:
    """Run a worker of `kind` in this process until its run ends or SIGTERM/SIGINT; exit status.

    From here until the process exits, SIGTERM and SIGINT stop the worker gracefully: exit
    status 0 whenever the signal comes (STYLE.md, "Signals").
    """
    signals = _SignalStop()
    # First: a signal while the options are checked or the kind imported must end cleanly too.
    signals.install()
    configure_logging()
    log = worker_log("workers.runtime", kind=kind)
    try:
        kind_class = load_kind(kind)
        options = kind_class.runtime_options(options, kind_options)
        options.check()
        kind_class.check_options(kind_options)
    except ValueError as exc:
        log.error("invalid options", extra={"error": str(exc)})
        return 2
    # What start-up made (modules, torch's for the kinds that load it) lives as long as the
    # process: out of the collector's way, so that collections while following a run only
    # scan what the run makes, not hundreds of thousands of objects each time.
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(_serve(kind_class, options, kind_options, signals))
    finally:
        # The worker is done and this process only exits now. Python's finalization puts back
        # the default action (death by the signal) of signals it handles, but keeps "ignored":
        # a SIGTERM from here on must not turn the exit status into -15.
        signals.ignore()


async def _serve(
    kind: type[Worker],
    options: RuntimeOptions,
    kind_options: Mapping[str, Any],
    signals: _SignalStop,
) -> int:
    stop = asyncio.Event()
    log = worker_log("workers.runtime", kind=kind.kind)
    # One stop event for both signals: deliveries in hand finish, then the worker leaves.
    signals.attach(asyncio.get_running_loop(), stop, log)
    try:
        return await run_worker(kind, options, kind_options, stop)
    except Exception:
        log.error("worker failed", exc_info=True)
        return 1
    finally:
        signals.detach()
