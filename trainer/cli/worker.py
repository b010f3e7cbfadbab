"""`trainer worker KIND --bus URL (--run ID | --follow) [--from start|now] [kind options]`.

KIND is a built-in kind's name or the import path of your own ("package.module:Class").
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import TYPE_CHECKING, Any

from bus import Topics, open_bus
from trainer.cli.environment import BUS_URL_ENV, SECRET_ENV
from trainer.cli.errors import UsageError
from trainer.cli.reach import check_bus

if TYPE_CHECKING:
    from workers.base import Worker

FROM_CHOICES = ("start", "now")


def add_parser(commands: Any) -> None:
    """Register the `worker` command; the kind's own options are parsed in `command`."""
    from workers.kinds import KINDS  # names only: no kind module (and no torch) is loaded

    worker = commands.add_parser(
        "worker",
        help="run one worker process on a run (or on every new run)",
        description="Run a worker of KIND against the bus at URL: on one run (--run ID) until "
        "it finishes, or on every run announced from now on (--follow). SIGTERM or SIGINT end "
        "it gracefully. `trainer worker KIND --help` lists the kind's options.",
        add_help=False,
        usage="%(prog)s [-h] KIND --bus URL (--run ID | --follow) [options] [KIND options]",
    )
    # Optional to argparse, so that `trainer worker --help` shows the help (exit 0) rather than
    # "KIND is required"; `command` refuses a missing KIND itself, with the usage (exit 2).
    worker.add_argument(
        "kind",
        metavar="KIND",
        nargs="?",
        help=f"{', '.join(KINDS)}, or your own: package.module:Class (a workers.base.Worker)",
    )
    worker.add_argument("-h", "--help", action="store_true", help="show this help and exit")
    worker.add_argument(
        "--bus",
        metavar="URL",
        default=os.environ.get(BUS_URL_ENV) or None,
        help=f"redis://[user:password@]host:port/db (default: ${BUS_URL_ENV})",
    )
    which = worker.add_mutually_exclusive_group()
    which.add_argument("--run", metavar="ID", help="follow this run until it finishes")
    which.add_argument("--follow", action="store_true", help="follow every new run")
    worker.add_argument(
        "--from",
        dest="start",
        choices=FROM_CHOICES,
        default="start",
        help="start: back-fill a run's history (default); now: only what comes next",
    )
    worker.add_argument("--name", help="worker name (default: KIND-HOST-PID)")
    worker.add_argument(
        "--group",
        help="consumer group (default: the kind's, so replicas share the work; a voter's own); "
        "another group makes an independent copy, e.g. a second tracker writing elsewhere",
    )
    worker.add_argument("--namespace", default="trainer", help="topic namespace (default trainer)")
    worker.add_argument(
        "--heartbeat", type=float, default=2.0, help="seconds between heartbeats (default 2)"
    )
    worker.add_argument(
        "--claim-idle",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="take over deliveries a dead replica left pending this long (default 30)",
    )
    worker.set_defaults(handler=command, parser=worker)


def command(args: argparse.Namespace, extras: list[str]) -> int:
    """Parse the kind's options and run the worker until it ends or is stopped."""
    from workers.kinds import KINDS, load_kind
    from workers.runtime import RuntimeOptions, main

    if args.kind is None:
        if args.help:
            args.parser.print_help()
            return 0
        args.parser.error(f"the following arguments are required: KIND (one of {', '.join(KINDS)})")
    try:
        kind = load_kind(args.kind, where="given on the command line")
    except ValueError as exc:
        raise UsageError(f"trainer worker: {exc}") from None
    kind_parser = argparse.ArgumentParser(
        prog=f"trainer worker {args.kind}",
        add_help=False,
        usage=argparse.SUPPRESS,
        description=kind.__doc__,
    )
    kind.add_arguments(kind_parser)
    if args.help:
        args.parser.print_help()
        print(f"\n{args.kind} (options left out come from the run's config):")
        print(kind_parser.format_help().replace("options:", f"options of {args.kind}:", 1))
        return 0
    kind_options = kind_parser.parse_args(extras)
    try:
        kind.check_options(vars(kind_options))  # before anything connects
    except ValueError as exc:
        raise UsageError(f"trainer worker: {exc}") from None
    if not args.bus:
        raise UsageError(
            f"trainer worker {args.kind}: --bus URL is required (or set {BUS_URL_ENV})"
        )
    options = RuntimeOptions(
        bus_url=args.bus,
        run_id=args.run,
        follow=args.follow,
        start=args.start,
        name=args.name,
        group=args.group,
        namespace=args.namespace,
        heartbeat=args.heartbeat,
        claim_idle=args.claim_idle,
        secret=os.environ.get(SECRET_ENV) or None,
    )
    # A kind that picks its runs (the pruner: a sweep's trials) follows without being told.
    try:
        options = kind.runtime_options(options, vars(kind_options))
    except ValueError as exc:
        raise UsageError(f"trainer worker: {exc}") from None
    if not options.run_id and not options.follow:
        raise UsageError(f"trainer worker {args.kind}: give --run ID or --follow")
    check_bus(args.bus, args.namespace)  # one clear line now, not a retry loop
    preflight(kind, args.bus, args.namespace, vars(kind_options))
    return main(args.kind, options, vars(kind_options))


def preflight(kind: type[Worker], url: str, namespace: str, kind_options: dict[str, Any]) -> None:
    """Raise UsageError (one line) when the bus shows the kind's options cannot work."""

    async def probe() -> None:
        bus = open_bus(url)
        try:
            await kind.preflight(bus, Topics(namespace), kind_options)
        finally:
            await bus.close()

    try:
        asyncio.run(probe())
    except ValueError as exc:
        raise UsageError(f"trainer worker: {exc}") from None
