"""What the registry topic `<ns>:runs` says about runs: started, with which config, finished."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bus import BEGINNING, Bus, Envelope, tail
from bus.messages import RUN_FINISHED, RUN_STARTED

# Called with each RUN_STARTED / RUN_FINISHED envelope read from the registry.
RegistryHook = Callable[[Envelope], Awaitable[None]]


@dataclass
class RegisteredRun:
    """One run as announced on the registry: its RUN_STARTED and the ranks that finished."""

    run_id: str
    started: Envelope | None = None
    finished_by: set[str] = field(default_factory=set)  # sources ("trainer:<rank>") of RUN_FINISHED

    @property
    def world_size(self) -> int:
        """Ranks of the run, from RUN_STARTED (1 when it is unknown or malformed)."""
        size = self.started.data.get("world_size") if self.started is not None else None
        if isinstance(size, int) and not isinstance(size, bool) and size >= 1:
            return size
        return 1

    @property
    def finished(self) -> bool:
        """True once every rank has announced RUN_FINISHED."""
        return len(self.finished_by) >= self.world_size

    def observe(self, env: Envelope) -> None:
        """Account for one registry envelope of this run."""
        if env.type == RUN_STARTED:
            # A rank that starts again after finishing (a resume under the same run id) is live.
            restarted = env.source in self.finished_by
            self.finished_by.discard(env.source)
            if self.started is None or restarted:
                self.started = env
        elif env.type == RUN_FINISHED:
            self.finished_by.add(env.source)


async def read_registry(
    bus: Bus, topic: str, run_id: str | None = None
) -> tuple[dict[str, RegisteredRun], str]:
    """Read the registry's history (of `run_id` only if given): its runs, and where to go on."""
    runs: dict[str, RegisteredRun] = {}
    history = tail(bus, topic, BEGINNING, follow=False)
    async for env in history:
        if env.type not in (RUN_STARTED, RUN_FINISHED):
            continue
        if run_id is not None and env.run_id != run_id:
            continue
        runs.setdefault(env.run_id, RegisteredRun(env.run_id)).observe(env)
    # From the last entry read; an empty registry is followed from its beginning.
    return runs, history.last_id or BEGINNING


async def watch_registry(bus: Bus, topic: str, after: str, on_run: RegistryHook) -> None:
    """Follow the registry after entry `after`, calling `on_run` with each run envelope; forever."""
    async for env in tail(bus, topic, after, follow=True):
        if env.type in (RUN_STARTED, RUN_FINISHED):
            await on_run(env)
