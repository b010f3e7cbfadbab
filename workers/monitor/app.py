"""The monitor's loop: read a run's topics as tails (no group, nothing acked), keep a view live.

A run is always read from its beginning, so a monitor attached mid-run has the whole history;
without `replay` the history is read at once and the view starts at the present, with `replay`
it is played back at its recorded pace times `speed` (see ReplayPacer), and ages and worker
liveness are judged on the replay clock rather than today's. Then the topics are followed live until
the run has finished (every rank's RUN_FINISHED, then `linger` seconds without news on the
events topic, so that the reports workers file after the end are shown), or `stop` is set.
Without a run id the newest run of the registry is followed, and a newer one when it starts;
if the newest run had already finished when the monitor attached, it is shown until a newer run
starts (the monitor was started to watch the next run), and the monitor ends with that one.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from bus import (
    BEGINNING,
    DEFAULT_NAMESPACE,
    Bus,
    BusAuthError,
    BusError,
    BusUnavailable,
    Entry,
    Envelope,
    InvalidTopic,
    InvalidURL,
    Tail,
    Topics,
    open_bus,
)
from bus.messages import RUN_STARTED
from bus.urls import redact
from workers.monitor.errors import BusUnreachable, MonitorError, RunNotOnBus
from workers.monitor.run_reader import HISTORY_BATCH, ReplayPacer, RunItem, RunReader
from workers.monitor.state import EVENTS, MonitorState
from workers.monitor.view import render, waiting

T = TypeVar("T")

__all__ = ["Monitor", "MonitorOptions", "ReplayPacer", "main", "monitor"]

REGISTRY = "registry"
_STOP = "stop"  # the queue item kind that says `stop` was set
# Run ids listed when the run asked for is unknown.
RECENT_RUNS = 5
# A finished run whose checkpoint worker still files checkpoints is waited for this long at most.
SETTLE_MAX = 10.0


@dataclass
class MonitorOptions:
    """What to watch, and how."""

    bus_url: str
    run_id: str | None = None  # None: the newest run of the registry, then any newer one
    namespace: str = DEFAULT_NAMESPACE
    replay: bool = False  # play the history back at its recorded pace times `speed`
    speed: float = 10.0
    once: bool = False  # render the current state once and return
    refresh: float = 0.25  # seconds between renders
    linger: float = 1.0  # after the run finished, wait this long without news on its events
    block: float = 0.5  # seconds a live read waits for new entries

    def check(self) -> None:
        """Raise MonitorError naming the first option that cannot work, and how to fix it."""
        try:
            topics = Topics(self.namespace)
            if self.run_id is not None:
                topics.events(self.run_id)
        except InvalidTopic as exc:
            raise MonitorError(str(exc)) from None
        for name, value in (
            ("speed", self.speed),
            ("refresh", self.refresh),
            ("block", self.block),
        ):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise MonitorError(
                    f"--{name} {value!r}: use a number > 0 (e.g. --speed 10 replays ten times "
                    "faster than recorded)"
                )
        if not self.linger >= 0:
            raise MonitorError(f"linger {self.linger!r}: use a number of seconds >= 0")


class _Stopped(Exception):
    """`stop` was set while waiting for the bus."""


class Monitor:
    """One monitor session on an open bus: picks the run, reads it and drives the display."""

    def __init__(
        self, bus: Bus, options: MonitorOptions, console: Console, stop: asyncio.Event
    ) -> None:
        self.bus = bus
        self.options = options
        self.console = console
        self.stop = stop
        self.topics = Topics(options.namespace)
        self.shown_url = redact(options.bus_url)
        self.queue: asyncio.Queue[tuple[int, str, Envelope | None]] = asyncio.Queue(10_000)
        self.generation = 0  # items of the run read before a switch are left out
        self.state: MonitorState | None = None
        self.live: Live | None = None
        self.awaiting_newer = False  # showing a finished run until a newer one starts
        self.pacer: ReplayPacer | None = None  # the replay clock of the run played back
        self._next_render = 0.0

    # -- the bus, with errors a user can act on -----------------------------------------

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Await `make()`, translating the bus's errors into one-line MonitorErrors."""
        try:
            return await make()
        except BusAuthError as exc:
            raise BusUnreachable(
                f"the bus at {self.shown_url} refused the monitor: {_one_line(exc)}; check the "
                "user and password in the URL"
            ) from None
        except BusUnavailable as exc:
            raise BusUnreachable(
                f"cannot reach the bus at {self.shown_url}: {_one_line(exc)}; is Redis running "
                "there, and is the URL right?"
            ) from None
        except BusError as exc:
            raise MonitorError(
                f"cannot read the bus at {self.shown_url}: {_one_line(exc)}"
            ) from None

    async def _until_stopped(self, make: Callable[[], Awaitable[T]]) -> T:
        """Await `make()` unless `stop` comes first (then raise _Stopped)."""
        task = asyncio.ensure_future(self._call(make))
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise _Stopped
        return task.result()

    def _on_bad(self, kind: str) -> Callable[[Entry, str], None]:
        def count(entry: Entry, reason: str) -> None:
            if self.state is not None:
                self.state.note_undecodable(kind, reason)

        return count

    # -- choosing the run ---------------------------------------------------------------

    async def _registry(self) -> tuple[list[str], str]:
        """Run ids of the registry, newest start first, and the id to follow it from."""
        history = Tail(
            self.bus,
            self.topics.registry(),
            BEGINNING,
            follow=False,
            batch=HISTORY_BATCH,
            on_bad=self._on_bad(REGISTRY),
        )
        order: dict[str, None] = {}

        async def read() -> None:
            async for env in history:
                if env.type == RUN_STARTED:
                    order.pop(env.run_id, None)  # a resumed run moves to the front
                    order[env.run_id] = None

        await self._until_stopped(read)
        return list(reversed(order)), history.last_id or BEGINNING

    async def _check_known(self, run_id: str, runs: list[str]) -> None:
        if run_id in runs:
            return
        events = self.topics.events(run_id)
        if await self._until_stopped(lambda: self.bus.length(events)):
            return
        recent = ", ".join(runs[:RECENT_RUNS])
        known = (
            f"recent runs: {recent}"
            if recent
            else "no run has been announced in this namespace (is --namespace right?)"
        )
        raise RunNotOnBus(
            f"run {run_id!r} not found in namespace {self.options.namespace!r} on "
            f"{self.shown_url}: the registry {self.topics.registry()!r} never announced it and "
            f"{events!r} is empty; {known}"
        )

    # -- the session ----------------------------------------------------------------------

    async def run(self) -> int:
        """Watch as the options say; the exit status (0)."""
        options = self.options
        try:
            # Reaches the server once, so that a wrong URL fails here with one line.
            await self._until_stopped(lambda: self.bus.length(self.topics.registry()))
            runs, after = await self._registry()
            run_id = options.run_id
            if run_id is not None:
                await self._check_known(run_id, runs)
            elif runs:
                run_id = runs[0]
            if options.once:
                await self._once(run_id, runs)
                return 0
        except _Stopped:
            return 0
        side = [asyncio.create_task(self._stopper(), name="monitor:stop")]
        if options.run_id is None:
            side.append(asyncio.create_task(self._watch_registry(after), name="monitor:registry"))
        try:
            # No redirection: nothing else prints while the view is live, and the monitor may run
            # in a thread (tests) where swapping sys.stdout would reach other threads.
            live = Live(
                console=self.console,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            with live:
                self.live = live
                # The newest run at attach time may have finished long ago; a run announced
                # while the monitor watches the registry started under its eyes.
                announced = False
                while True:
                    if run_id is None:
                        run_id = await self._wait_for_run(runs)
                        if run_id is None:
                            break
                        announced = True
                    run_id = await self._watch(run_id, announced)
                    if run_id is None:
                        break
                    announced = True
        finally:
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
        return 0

    async def _once(self, run_id: str | None, runs: list[str]) -> None:
        if run_id is None:
            self.console.print(waiting(self.options.namespace, self.topics.registry(), runs))
            return
        state = self.state = MonitorState(run_id, self.options.namespace)
        for item in await self._read_history(self._reader(state)):
            state.feed(item.kind, item.env)
        self.console.print(render(state, time.time()))

    async def _stopper(self) -> None:
        await self.stop.wait()
        await self.queue.put((0, _STOP, None))

    async def _watch_registry(self, after: str) -> None:
        tail = Tail(
            self.bus,
            self.topics.registry(),
            after,
            follow=True,
            block=self.options.block,
            on_bad=self._on_bad(REGISTRY),
        )
        async for env in tail:
            if env.type == RUN_STARTED:
                await self.queue.put((0, REGISTRY, env))

    async def _wait_for_run(self, runs: list[str]) -> str | None:
        """Show where the monitor looks until a run starts; its id, or None once stopped."""
        self._show(waiting(self.options.namespace, self.topics.registry(), runs))
        while True:
            _, kind, env = await self.queue.get()
            if kind == _STOP:
                return None
            if kind == REGISTRY and env is not None:
                return env.run_id

    def _switch(self, kind: str, env: Envelope | None, run_id: str) -> str | None:
        """What a stop or registry item means for the session: "" to stop, a run id to switch
        to, None to go on."""
        if kind == _STOP:
            return ""
        if kind == REGISTRY and env is not None and env.run_id != run_id:
            return env.run_id
        return None

    def _reader(self, state: MonitorState) -> RunReader:
        """The reader of `state`'s run, feeding what does not decode to `state`."""
        return RunReader(
            self.bus,
            self.topics,
            state.run_id,
            keep=state.concerns,
            on_bad=state.note_undecodable,
            block=self.options.block,
        )

    async def _read_history(self, reader: RunReader) -> list[RunItem]:
        """The run's envelopes up to now, interleaved by time, unless `stop` comes first."""
        return await self._until_stopped(reader.history)

    async def _watch(self, run_id: str, announced: bool) -> str | None:
        """Show run `run_id` until it finished or `stop`; the run to switch to, or None.

        `announced`: the run started while the monitor watched the registry (so it ends the
        monitor once finished, even if it was over by the time its history was read).
        """
        self.generation += 1
        generation = self.generation
        self.awaiting_newer = False
        state = self.state = MonitorState(run_id, self.options.namespace)
        reader = self._reader(state)
        try:
            history = await self._read_history(reader)
        except _Stopped:
            return None
        self.pacer = None
        if self.options.replay:
            outcome = await self._replay(state, history)
            if outcome is not None:
                self._show(render(state, self._now()))
                return outcome or None
        else:
            for item in history:
                state.feed(item.kind, item.env)
        self._show(render(state, self._now()))
        pump = asyncio.create_task(self._pump(generation, reader), name=f"monitor:{run_id}")
        try:
            seen_running = announced or self.options.replay or not state.finished
            return await self._follow(state, generation, seen_running)
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    async def _replay(self, state: MonitorState, history: list[RunItem]) -> str | None:
        """Feed the history at its recorded pace times `speed`; "" once stopped, a run id to
        switch to, or None when done."""
        pacer = self.pacer = ReplayPacer(self.options.speed)
        # The reader kept only the run's own envelopes, so only they set the pace: the
        # dead-letter topic holds the whole namespace's, hours before or after this run.
        for item in history:
            wait = pacer.wait(item.env.ts)
            if wait > 0:
                outcome = await self._pause(wait, state)
                if outcome is not None:
                    return outcome
            state.feed(item.kind, item.env)
            self._maybe_show(state, self._now())
        return None

    async def _pause(self, seconds: float, state: MonitorState) -> str | None:
        """Wait `seconds`, rendering as the replay clock moves; a stop or a run switch ends
        the wait (see `_switch`)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                _, kind, env = await asyncio.wait_for(
                    self.queue.get(), min(left, self.options.refresh)
                )
            except asyncio.TimeoutError:
                self._maybe_show(state, self._now())
                continue
            outcome = self._switch(kind, env, state.run_id)
            if outcome is not None:
                return outcome
        return None

    def _now(self) -> float:
        """The time the view stands at, which ages and liveness are judged against: the replay
        clock while a run is played back (up to the present), else the wall clock."""
        wall = time.time()
        replayed = self.pacer.stream_time() if self.pacer is not None else None
        return wall if replayed is None else min(replayed, wall)

    async def _pump(self, generation: int, reader: RunReader) -> None:
        async with contextlib.aclosing(reader.follow()) as items:
            async for item in items:
                await self.queue.put((generation, item.kind, item.env))

    async def _follow(self, state: MonitorState, generation: int, seen_running: bool) -> str | None:
        """Feed what the live tails read until the run has settled or a stop or switch.

        A run followed as the newest one that had already finished when the monitor attached
        (`seen_running` False) stays shown until a newer run starts: the monitor was started
        to watch the next run. A run given by id, or seen running, ends the monitor once settled.
        """
        options = self.options
        last_news = time.monotonic()  # the last entry read from the events topic
        finished_at = time.monotonic() if state.finished else None
        while True:
            timeout = options.refresh
            if finished_at is not None:
                timeout = min(timeout, options.linger)
            items = []
            with contextlib.suppress(asyncio.TimeoutError):
                items.append(await asyncio.wait_for(self.queue.get(), timeout))
                while not self.queue.empty():
                    items.append(self.queue.get_nowait())
            for item_generation, kind, env in items:
                outcome = self._switch(kind, env, state.run_id)
                if outcome is not None:
                    self._show(self._view(state, self._now()))
                    return outcome or None
                if item_generation != generation or env is None:
                    continue
                state.feed(kind, env)
                if kind == EVENTS:
                    last_news = time.monotonic()
            if not state.finished:
                seen_running, finished_at = True, None  # (again, after a resume)
            elif finished_at is None:
                finished_at = time.monotonic()
            may_end = seen_running or options.run_id is not None
            self.awaiting_newer = finished_at is not None and not may_end
            if finished_at is not None and may_end and self._settled(state, last_news, finished_at):
                self._show(self._view(state, self._now()))
                return None
            self._maybe_show(state, self._now())

    def _settled(self, state: MonitorState, last_news: float, finished_at: float) -> bool:
        """Whether a finished run is done being reported on: quiet for `linger` seconds, and
        no checkpoint still being filed by a live checkpoint worker (up to SETTLE_MAX)."""
        now = time.monotonic()
        if now - max(last_news, finished_at) < self.options.linger:
            return False
        if now - finished_at >= SETTLE_MAX:
            return True
        filing = state.pending_ready and state.live_workers(self._now(), "checkpoint")
        return not filing

    # -- display ------------------------------------------------------------------------

    def _show(self, renderable: RenderableType) -> None:
        if self.live is not None:
            self.live.update(renderable, refresh=True)
        self._next_render = time.monotonic() + self.options.refresh

    def _maybe_show(self, state: MonitorState, now: float) -> None:
        if time.monotonic() >= self._next_render:
            self._show(self._view(state, now))

    def _view(self, state: MonitorState, now: float) -> RenderableType:
        view = render(state, now)
        if not self.awaiting_newer:
            return view
        registry = self.topics.registry()
        note = Text(f"waiting for a newer run on {registry} (Ctrl-C to quit)", style="dim")
        return Group(view, note)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


async def monitor(
    options: MonitorOptions,
    console: Console | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Watch as `options` say on `console` until the run finished or `stop`; the exit status.

    Raises MonitorError (RunNotOnBus, BusUnreachable) with a one-line message when it cannot.
    """
    options.check()
    try:
        bus = open_bus(options.bus_url)
    except InvalidURL as exc:
        raise MonitorError(str(exc)) from None
    session = Monitor(bus, options, console or Console(), stop or asyncio.Event())
    try:
        return await session.run()
    finally:
        with contextlib.suppress(BusError, OSError):
            await bus.close()


def main(options: MonitorOptions, console: Console | None = None) -> int:
    """Run the monitor until the run finished, SIGINT or SIGTERM; the exit status."""
    return asyncio.run(_main(options, console))


async def _main(options: MonitorOptions, console: Console | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[Any] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
            pass
    try:
        return await monitor(options, console, stop)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
