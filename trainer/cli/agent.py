"""`trainer agent --bus URL --sweep ID [--parallel P] [--name NAME]`: run a sweep's trials here.

Takes trials from the sweep's queue on the bus, P at a time, each a `trainer run` process with
its config's workers, until the sweep has finished and its own trials are over (exit 0). A
trial it takes over from an agent that died resumes from its last checkpoint. SIGTERM or SIGINT
stop it: its trials are stopped and left on the queue, for another agent to take over after
the sweep's reclaim timeout (`sweep.reclaim_after`). A sweep id the bus has never seen is
refused in one line (exit 2), and so is a sweep that has finished.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from bus import InvalidTopic, Topics, open_bus
from trainer.cli.environment import BUS_URL_ENV
from trainer.cli.errors import UsageError
from trainer.cli.reach import check_bus
from trainer.cli.sweep_session import Stop, agent_name, local_agent


def add_parser(commands: Any) -> None:
    """Register the `agent` command."""
    agent = commands.add_parser(
        "agent",
        help="run trials of a sweep from its queue on the bus, on this machine",
        description="Take trials of sweep ID (the id `trainer sweep` prints) from its queue on "
        "the bus and run them here, P at a time, until the sweep has finished.",
    )
    agent.add_argument(
        "--bus",
        metavar="URL",
        default=os.environ.get(BUS_URL_ENV) or None,
        help=f"the sweep's bus, redis://[user:password@]host:port/db (default: ${BUS_URL_ENV})",
    )
    agent.add_argument("--sweep", metavar="ID", required=True, help="the sweep's id")
    agent.add_argument(
        "--parallel", type=int, default=1, metavar="P", help="trials at once (default 1)"
    )
    agent.add_argument("--name", help="the agent's name (default agent-HOST-PID)")
    agent.add_argument("--namespace", default="trainer", help="topic namespace (default trainer)")
    agent.set_defaults(handler=command)


def command(args: argparse.Namespace, extras: list[str]) -> int:
    """Check the bus and the sweep, then run trials until the sweep has finished."""
    if extras:
        raise UsageError(f"trainer agent: unrecognized arguments: {' '.join(extras)}")
    if not args.bus:
        raise UsageError(f"trainer agent: --bus URL is required (or set {BUS_URL_ENV})")
    if args.bus.startswith("memory:"):
        raise UsageError(
            f"trainer agent --bus {args.bus}: an in-memory bus lives inside one process, so no "
            "sweep can be shared through it; give the sweep's redis:// URL"
        )
    if args.parallel < 1:
        raise UsageError(f"trainer agent --parallel {args.parallel}: run 1 trial at a time or more")
    try:
        Topics(args.namespace).trials(args.sweep)
    except InvalidTopic as exc:
        raise UsageError(f"trainer agent --sweep: {exc}") from None
    check_bus(args.bus, args.namespace)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return asyncio.run(_agent(args))


async def _agent(args: argparse.Namespace) -> int:
    from workers.sweeps.bus_reads import find_sweep, known_sweeps

    bus = open_bus(args.bus)
    topics = Topics(args.namespace)
    try:
        record = await find_sweep(bus, topics, args.sweep)
        if record is None:
            known = await known_sweeps(bus, topics)
            hint = f"; sweeps on this bus: {', '.join(known[-5:])}" if known else ""
            raise UsageError(
                f"trainer agent: no sweep {args.sweep!r} on the bus (namespace "
                f"{args.namespace!r}): start it with `trainer sweep ... --bus URL`{hint}"
            )
        if record.finished is not None:
            status = record.finished.data.get("status", "finished")
            raise UsageError(f"trainer agent: sweep {args.sweep!r} has finished ({status})")
        reclaim_after = float(record.started.data.get("reclaim_after") or 60.0)
        name = args.name or agent_name()
        agent, _ = local_agent(
            bus,
            topics,
            args.sweep,
            slots=args.parallel,
            reclaim_after=reclaim_after,
            in_process=False,
            name=name,
        )
        print(f"agent {name}: sweep {args.sweep}, {args.parallel} trial(s) at a time", flush=True)
        stop = Stop()
        stop.install()
        try:
            status = await agent.run(stop.event)
        finally:
            stop.remove()
        print(f"agent {name}: ran trials {agent.ran}", flush=True)
        return status
    finally:
        await bus.close()
