"""What `trainer sweep` and `trainer agent` share: the bus they run on, their stop signal, the
local agent and the embedded pruner."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Coroutine, Mapping
from typing import Any

from bus import Bus, Topics
from trainer.cli.errors import UsageError
from trainer.cli.trial_threads import ThreadRunner
from workers.sweeps.agent import Agent
from workers.sweeps.process_runner import ProcessRunner

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def agent_name(role: str = "agent") -> str:
    """This process's name as an agent: `<role>-<host>-<pid>` (its consumer name too)."""
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


class Stop:
    """SIGINT and SIGTERM set one stop event (kept installed until the command ends)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.signal: signal.Signals | None = None

    def install(self) -> None:
        """Route SIGINT and SIGTERM to the event, on the running loop."""
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: signal.Signals) -> None:
        if self.signal is None:
            self.signal = sig
            print(f"{sig.name}: stopping (the trials running are stopped)", flush=True)
        self.event.set()

    def remove(self) -> None:
        """Put the default handlers back."""
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)


def local_agent(
    bus: Bus,
    topics: Topics,
    sweep_id: str,
    *,
    slots: int,
    reclaim_after: float,
    in_process: bool,
    name: str,
) -> tuple[Agent, ThreadRunner | None]:
    """An agent of this process: trials as `trainer run` processes on the bus, or (on the
    in-memory bus of the embedded default) as runs on threads of this process."""
    threads = ThreadRunner(bus, topics, slots, name) if in_process else None
    runner = threads if threads is not None else ProcessRunner(bus.url)
    agent = Agent(
        bus,
        topics,
        sweep_id,
        runner,
        name=name,
        slots=slots,
        reclaim_after=reclaim_after,
    )
    return agent, threads


def pruner_options(pruner: Mapping[str, Any], sweep_id: str) -> dict[str, Any]:
    """The `sweep.pruner` section as the pruner kind's settings (`min-resource` or
    `min_resource` alike), for sweep `sweep_id`; UsageError names an option it refuses."""
    from workers.kinds import load_kind

    options = {str(key).replace("-", "_"): value for key, value in pruner.items()}
    options["sweep"] = sweep_id
    try:
        kind = load_kind("pruner", where="config 'sweep.pruner'")
        known = {s.name for s in kind.SETTINGS}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"unknown option(s) {', '.join(unknown)}; it takes {', '.join(sorted(known))}"
            )
        kind.check_options(options)
    except ValueError as exc:
        raise UsageError(f"sweep.pruner: {exc}") from None
    return options


def embedded_pruner(
    bus_url: str, namespace: str, options: Mapping[str, Any], stop: asyncio.Event
) -> Coroutine[Any, Any, int]:
    """The pruner of the `sweep.pruner` section, to run as a task of this process."""
    from workers.kinds import load_kind
    from workers.runtime import RuntimeOptions, run_worker

    kind = load_kind("pruner")
    runtime = RuntimeOptions(
        bus_url=bus_url, follow=True, namespace=namespace, name=agent_name("pruner")
    )
    return run_worker(kind, runtime, dict(options), stop=stop)
