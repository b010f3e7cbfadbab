"""The embedded default: the config's workers as asyncio tasks beside the trainer, in-process.

They run on the event loop of the run's publisher thread, on the same in-memory bus, so the
training thread never waits for them except where the run itself says so (barrier mode).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainer.bridge.outputs import Probes
from trainer.config import ConfigError
from trainer.plugins import PluginError
from workers.base import Worker
from workers.kinds import load_kind
from workers.runtime import RuntimeOptions, run_worker

if TYPE_CHECKING:
    from bus import Bus
    from trainer.bridge import BusRun
    from trainer.config import Config

# Seconds an embedded worker keeps handling after the run finished before it ends: in-process
# the reports of other workers follow within milliseconds.
LINGER = 0.2
# Seconds `wait` allows the workers to finish the run's last events.
FINISH_TIMEOUT = 120.0


def worker_kinds(cfg: Config) -> list[type[Worker]]:
    """The Worker classes the config's `workers` names (built-in names or "package.module:Class");
    ConfigError names a bad one, the layer that set it and the fix."""
    source = cfg.source_of("workers")
    kinds = []
    for index, name in enumerate(cfg.workers):
        where = f"config 'workers[{index}]', set by {source}"
        try:
            kinds.append(load_kind(str(name), where=where))
        except ValueError as exc:
            raise ConfigError(str(exc), key="workers", source=source) from None
    return kinds


def check_plugins(cfg: Config, embedded: bool) -> None:
    """Import what the config plugs in (`bus.probes`; `workers` when they run in this process)
    before anything is made; ConfigError names a bad one."""
    source = cfg.source_of("bus.probes")
    try:
        Probes.load(list(cfg.bus.probes), lambda i: f"config 'bus.probes[{i}]', set by {source}")
    except PluginError as exc:
        raise ConfigError(str(exc), key="bus.probes", source=source) from None
    if embedded:
        worker_kinds(cfg)


@dataclass
class EmbeddedWorkers:
    """Workers running as tasks on the run's loop; `wait` until they end, `stop` to end them."""

    link: BusRun
    tasks: list[asyncio.Task[int]]
    stop_event: asyncio.Event

    @classmethod
    def start(cls, link: BusRun, kinds: Sequence[str], namespace: str) -> EmbeddedWorkers:
        """Start one worker of each kind on `link`'s run; return once each has joined it."""
        # Fail here, before any task runs (`check_plugins` names the config layer earlier).
        kind_classes = [load_kind(kind, where="config 'workers'") for kind in kinds]

        async def launch(bus: Bus) -> tuple[list[asyncio.Task[int]], asyncio.Event]:
            stop = asyncio.Event()
            tasks, ready = [], []
            for kind in kind_classes:
                options = RuntimeOptions(
                    bus_url=link.bus_url,
                    run_id=link.run_id,
                    namespace=namespace,
                    linger=LINGER,
                    secret=link.secret,
                )
                joined = asyncio.Event()
                task = asyncio.create_task(
                    run_worker(kind, options, {}, stop=stop, ready=joined),
                    name=f"worker:{kind.kind}",
                )
                tasks.append(task)
                ready.append(joined)
            for task, joined in zip(tasks, ready, strict=True):
                waiter = asyncio.ensure_future(joined.wait())
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if task.done():
                    task.result()  # a worker that failed to start raises here
            return tasks, stop

        tasks, stop = link.publisher.submit(launch).result()
        return cls(link, tasks, stop)

    def wait(self, timeout: float = FINISH_TIMEOUT) -> list[int]:
        """Wait until every worker has handled the finished run and ended; their exit codes."""

        async def gather(bus: Any) -> list[int]:
            return list(await asyncio.wait_for(asyncio.gather(*self.tasks), timeout))

        return self.link.publisher.submit(gather).result()

    def stop(self) -> None:
        """Ask the workers still running to end (after the delivery in hand) and wait for them."""
        if all(task.done() for task in self.tasks):
            return

        async def stop(bus: Any) -> None:
            self.stop_event.set()
            await asyncio.gather(*self.tasks, return_exceptions=True)

        # If the loop is going away, the daemon thread ends with the process.
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self.link.publisher.submit(stop).result(timeout=30)
