"""Serving the web view with uvicorn until Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

import uvicorn

from workers.web.app import create_app
from workers.web.options import WebOptions

# Seconds open SSE streams get to end once the server stops (they never end by themselves).
SHUTDOWN_GRACE = 1.0


def address(options: WebOptions, port: int | None = None) -> str:
    """The URL a browser on this machine (or, with --host, another one) opens."""
    host = options.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{options.port if port is None else port}/"


class _Server(uvicorn.Server):
    """uvicorn's server, for which Ctrl-C and SIGTERM are the normal way to stop: status 0.

    uvicorn raises the signal again once it has shut down, so the process would end as killed
    by it (status -15 or 130) however cleanly it stopped.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Stop gracefully on SIGINT and SIGTERM (a second one forces), without re-raising."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def config(options: WebOptions) -> uvicorn.Config:
    """The uvicorn configuration of `options` (no access log: a login address holds the token)."""
    return uvicorn.Config(
        create_app(options),
        host=options.host,
        port=options.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=SHUTDOWN_GRACE,
        server_header=False,
    )


def serve(options: WebOptions, out: TextIO = sys.stderr) -> int:
    """Serve until interrupted; the exit status (0, or 1 when the port could not be bound)."""
    # The web view says itself, once, when the bus goes away and comes back; the tails it reads
    # with would otherwise log every retry.
    logging.getLogger("bus.tail").setLevel(logging.ERROR)
    web_log = logging.getLogger("workers.web")
    if not web_log.handlers:
        handler = logging.StreamHandler(out)
        handler.setFormatter(logging.Formatter("trainer web: %(message)s"))
        web_log.addHandler(handler)
        web_log.setLevel(logging.INFO)
        web_log.propagate = False
    login = " (every request needs the token: open it once as /?token=<the token>)"
    # A wildcard host is shown as the URL to open here, and said plainly: every interface hears.
    wildcard = options.host in ("0.0.0.0", "::", "")
    everywhere = f" (listening on every interface, {options.host or '*'})" if wildcard else ""
    print(
        f"trainer web: serving {address(options)}{everywhere} · bus {options.shown_url} · runs "
        f"{options.runs_dir}" + (login if options.token else ""),
        file=out,
        flush=True,
    )
    server = _Server(config(options))
    server.run()
    # uvicorn reports a port it could not bind and returns without starting.
    return 0 if server.started else 1
