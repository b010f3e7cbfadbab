"""The web view's test harness: the app served by uvicorn in a thread, and a real Chromium.

The browser is Debian's chromium driven by Playwright through `executable_path`: nothing is
downloaded (never `playwright install`). The README's test command installs chromium.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from workers.web import WebApp, WebOptions, create_app

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Seconds the server may take to start or stop.
SERVER_GUARD = 30.0


def chromium_path() -> str:
    """The system chromium; fails (not skips) with how to install it, as CI installs it."""
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        raise RuntimeError(
            f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`, "
            "as the README's test command does); never `playwright install`"
        )
    return CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))


@contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium (Playwright's sync API), closed afterwards."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        chrome = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chrome
        finally:
            chrome.close()


class WebServer:
    """`create_app(options)` under uvicorn on a free port, in a thread with its own loop."""

    def __init__(self, options: WebOptions) -> None:
        options.port = 0
        self.options = options
        self.app = create_app(options)
        self.web: WebApp = self.app.state.web
        config = uvicorn.Config(
            self.app,
            host=options.host,
            port=0,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1.0,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="web-server", daemon=True)
        self.port = 0

    def start(self) -> WebServer:
        """Serve, and return once the port is bound (a hang guard bounds the wait)."""
        self.thread.start()
        deadline = time.monotonic() + SERVER_GUARD
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError("the web server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        """The server's base address, without a trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server's event loop (where the app's state lives); its result."""
        loop = self.web.loop
        assert loop is not None, "the app has not started"

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(SERVER_GUARD)

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(SERVER_GUARD)
        assert not self.thread.is_alive(), "the web server did not stop"
