"""`trainer web --bus URL [--runs DIR] [--host 127.0.0.1] [--port 8080] [--token T]
[--namespace NS]`: the live web view (workers.web)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any

from trainer.cli.environment import BUS_URL_ENV, SECRET_ENV
from trainer.cli.errors import UsageError
from trainer.cli.reach import check_bus
from trainer.tracking.layout import RUNS_DIR_ENV, runs_root

TOKEN_ENV = "TRAINER_WEB_TOKEN"


def add_parser(commands: Any) -> None:
    """Register the `web` command."""
    web = commands.add_parser(
        "web",
        help="a live web view of runs that can stop them",
        description="Serve a web page of the runs on the bus at URL and in the tracking store: "
        "live metric curves, per-rank progress, workers and votes, checkpoints, dead letters, "
        "how each run ended, runs compared on one chart, and a Stop button (TERMINATE, signed "
        f"with ${SECRET_ENV} when set). It only reads the bus (no consumer group, nothing "
        "acked). It listens on 127.0.0.1 unless --host says otherwise, which then needs --token. "
        "Finished runs are served from the tracking store even while Redis is down.",
    )
    web.add_argument(
        "--bus",
        metavar="URL",
        default=os.environ.get(BUS_URL_ENV) or None,
        help=f"redis://[user:password@]host:port/db (default: ${BUS_URL_ENV})",
    )
    web.add_argument(
        "--runs",
        metavar="DIR",
        default=None,
        help=f"the tracking store's runs directory (default: ${RUNS_DIR_ENV}, else ./runs)",
    )
    web.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; anything else "
        "needs --token)",
    )
    web.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    web.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"require this token on every request (default: ${TOKEN_ENV}, better: other "
        "users see a command line in ps); open the page once as /?token=T",
    )
    web.add_argument("--namespace", default="trainer", help="topic namespace (default trainer)")
    web.set_defaults(handler=command)


def command(args: argparse.Namespace, extras: list[str]) -> int:
    """Check the options and the bus, then serve until Ctrl-C."""
    if extras:
        raise UsageError(f"trainer web: unrecognized arguments: {' '.join(extras)}")
    if not args.bus:
        raise UsageError(
            f"trainer web: --bus URL is required (e.g. redis://localhost:6379/0), or set "
            f"{BUS_URL_ENV}"
        )
    from trainer.tracking.reader import run_dirs
    from workers.web.errors import WebError
    from workers.web.options import WebOptions
    from workers.web.server import serve

    options = WebOptions(
        bus_url=args.bus,
        runs_dir=Path(runs_root(args.runs)),
        host=args.host,
        port=args.port,
        token=args.token,
        secret=os.environ.get(SECRET_ENV) or None,
        namespace=args.namespace,
    )
    try:
        options.check()
    except WebError as exc:
        raise UsageError(f"trainer web: {exc}") from None
    check_port(options.host, options.port)
    try:
        check_bus(options.bus_url, options.namespace)
    except UsageError as exc:
        # Finished runs need no Redis: with some in the store the page starts on them, and
        # live runs appear once the bus answers. With none there is nothing to show.
        stored = len(run_dirs(options.runs_dir))
        if not stored:
            raise UsageError(
                f"trainer web: {exc} (and {options.runs_dir} holds no finished run to show)"
            ) from None
        print(
            f"trainer web: {exc} Serving the {stored} run(s) of {options.runs_dir} from the "
            "tracking store; live runs appear once it answers",
            file=sys.stderr,
            flush=True,
        )
    return serve(options)


def check_port(host: str, port: int) -> None:
    """Raise UsageError if nothing can listen on `host`:`port` (in use, or not an address here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As uvicorn binds: a port in TIME_WAIT is free, one with a listener is not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise UsageError(
            f"trainer web: cannot listen on {host}:{port}: {exc.strerror or exc}; pick another "
            "--port (or --host)"
        ) from None
