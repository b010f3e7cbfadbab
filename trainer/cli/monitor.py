"""`trainer monitor --bus URL [--run ID] [--replay] [--speed X] [--namespace NS] [--once]`."""

from __future__ import annotations

import argparse
import os
from typing import Any

from trainer.cli.environment import BUS_URL_ENV
from trainer.cli.errors import UsageError


def add_parser(commands: Any) -> None:
    """Register the `monitor` command."""
    monitor = commands.add_parser(
        "monitor",
        help="watch a run live: progress, metrics, workers, checkpoints",
        description="Watch a run on the bus at URL: per-rank progress, metrics with their "
        "history, the workers and their votes, the checkpoints kept, dead letters and how the "
        "run ended. It only reads (no consumer group, nothing acked), so it never disturbs the "
        "workers. Without --run it follows the newest run, and a newer one when it starts (a "
        "newest run that was already over is shown until the next one starts). It exits once "
        "the run it watched has finished, or on Ctrl-C.",
    )
    monitor.add_argument(
        "--bus",
        metavar="URL",
        default=os.environ.get(BUS_URL_ENV) or None,
        help=f"redis://[user:password@]host:port/db (default: ${BUS_URL_ENV})",
    )
    monitor.add_argument("--run", metavar="ID", help="the run to watch (default: the newest)")
    monitor.add_argument(
        "--replay",
        action="store_true",
        help="play the run back from its start at its recorded pace times --speed",
    )
    monitor.add_argument(
        "--speed",
        type=float,
        default=10.0,
        metavar="X",
        help="replay speed: X times the recorded pace (default 10)",
    )
    monitor.add_argument("--namespace", default="trainer", help="topic namespace (default trainer)")
    monitor.add_argument(
        "--once", action="store_true", help="print the run's current state once and exit"
    )
    monitor.set_defaults(handler=command)


def command(args: argparse.Namespace, extras: list[str]) -> int:
    """Watch the run until it finishes (or once), as the options say."""
    if extras:
        raise UsageError(f"trainer monitor: unrecognized arguments: {' '.join(extras)}")
    if not args.bus:
        raise UsageError(
            f"trainer monitor: --bus URL is required (e.g. redis://localhost:6379/0), or set "
            f"{BUS_URL_ENV}"
        )
    from workers.monitor.app import MonitorOptions, main
    from workers.monitor.errors import MonitorError

    options = MonitorOptions(
        bus_url=args.bus,
        run_id=args.run,
        namespace=args.namespace,
        replay=args.replay,
        speed=args.speed,
        once=args.once,
    )
    try:
        return main(options)
    except MonitorError as exc:
        raise UsageError(f"trainer monitor: {exc}") from None
