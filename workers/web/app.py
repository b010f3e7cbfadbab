"""The web view's Starlette app: pages, the JSON API, Server-Sent Events and the Stop action.

Pages are static files (no server-side templating, so nothing a run carries is ever parsed as
HTML); the script reads everything from the API:

| route | what |
|---|---|
| `GET /`, `/runs/{id}`, `/compare?runs=a,b` | the runs list, one run, runs on one chart |
| `GET /api/info` | the bus (redacted URL, whether it answers), the runs directory |
| `GET /api/runs` | the runs list: the registry's runs and the tracking store's, merged |
| `GET /api/runs/stream` | the same as SSE, sent again whenever it changes |
| `GET /api/runs/{id}` | one run: from the bus when it knows it, else from the tracking store |
| `GET /api/runs/{id}/stream` | the run's metric points (SSE id: the entry id) and state |
| `POST /api/runs/{id}/stop` | TERMINATE with `{"reason": ...}` on the run's control topic |
| `GET /sweeps/{id}` | one sweep: its trials, their curves, who pruned which |
| `GET /api/sweeps` | the sweeps the bus has seen, newest first |
| `GET /api/sweeps/{id}` | one sweep as JSON (`workers.sweeps.state.SweepState.as_dict`) |
| `GET /api/sweeps/{id}/stream` | the same as SSE (`event: sweep`), sent again whenever it changes |

Every JSON body and event goes through the Scrubber: no response carries the token, the
signing secret or the bus password.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bus import Bus, BusError, InvalidTopic, Topics, open_bus
from trainer.tracking.errors import TrackingError
from trainer.tracking.reader import list_runs, read_meta
from workers.web import sse
from workers.web.auth import TokenGuard, same_origin
from workers.web.live import LiveRuns, RunWatch
from workers.web.options import WebOptions
from workers.web.scrub import Scrubber
from workers.web.stop import BadReason, check_reason, send_terminate, terminate_envelope
from workers.web.sweeps import Sweeps, sweep_stream
from workers.web.views import (
    bus_listing_row,
    live_run,
    live_series,
    merged_listing,
    store_dir,
    store_listing_row,
    store_run,
)

STATIC = Path(__file__).resolve().parent / "static"
# Seconds a request waits for a run's history to be read before answering with what it has.
HISTORY_WAIT = 10.0
# Seconds the tracking store's listing is reused (every runs-list client would re-read it).
STORE_CACHE = 2.0
# Response headers of every page and answer: no framing (a Stop button inside a foreign page
# could be clicked through), scripts only from here, no Referer (a ?token= address stays here).
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


class WebApp:
    """The state behind the routes: the bus, the live runs, the scrubber, the stream drops."""

    def __init__(self, options: WebOptions, bus: Bus | None = None) -> None:
        options.check()
        self.options = options
        self.topics = Topics(options.namespace)
        self._bus = bus
        self.bus: Bus | None = None
        self.live: LiveRuns | None = None
        self.sweeps: Sweeps | None = None
        self.scrub = Scrubber(options.hidden())
        self.drop = asyncio.Event()  # replaced by drop_streams; set ends every open stream
        self.gate = asyncio.Event()  # run streams send nothing while it is clear (tests)
        self.stream_connects: list[str | None] = []  # each run stream's Last-Event-ID
        self.loop: asyncio.AbstractEventLoop | None = None
        self._store_rows: list[dict[str, Any]] = []
        self._store_read_at = -STORE_CACHE

    # -- life ------------------------------------------------------------------------------

    async def startup(self) -> None:
        """Open the bus and start reading the registry (failures surface on the page)."""
        self.loop = asyncio.get_running_loop()
        self.drop = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.bus = self._bus or open_bus(self.options.bus_url)
        self.live = LiveRuns(self.bus, self.options)
        self.live.start()
        self.sweeps = Sweeps(self.bus, self.topics)

    async def shutdown(self) -> None:
        """End the streams, stop reading, close the bus (unless it was handed in)."""
        self.drop.set()
        self.gate.set()
        if self.live is not None:
            await self.live.close()
        if self.sweeps is not None:
            await self.sweeps.close()
        if self.bus is not None and self._bus is None:
            with contextlib.suppress(BusError, OSError):
                await self.bus.close()

    def drop_streams(self, hold: bool = False) -> None:
        """End every open SSE stream, as a lost connection would; `hold` holds the new ones."""
        # Held run streams send nothing until `release_streams` (a test's reconnect window).
        if hold:
            self.gate.clear()
        self.drop.set()
        self.drop = asyncio.Event()

    def release_streams(self) -> None:
        """Let held run streams send (see `drop_streams`)."""
        self.gate.set()

    # -- helpers ---------------------------------------------------------------------------

    def json(self, data: Any, status: int = 200) -> Response:
        """A JSON response of scrubbed `data`."""
        body = json.dumps(self.scrub.value(data), separators=(",", ":"), allow_nan=False)
        return Response(
            body,
            status_code=status,
            media_type="application/json",
            headers={"cache-control": "no-store"},
        )

    def error(self, status: int, message: str) -> Response:
        """A JSON error naming what went wrong and what to do."""
        return self.json({"error": message}, status)

    @property
    def _live(self) -> LiveRuns:
        assert self.live is not None, "the app has not started (lifespan)"
        return self.live

    async def _store_listing(self) -> list[dict[str, Any]]:
        if time.monotonic() - self._store_read_at >= STORE_CACHE:
            self._store_rows = await asyncio.to_thread(_store_rows, self.options.runs_dir)
            self._store_read_at = time.monotonic()
        return self._store_rows

    async def listing(self) -> list[dict[str, Any]]:
        """The runs list: registry runs (with progress when watched) and tracking-store runs."""
        live = self._live
        if live.bus_ok is not False:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(live.registry_ready.wait(), 2.0)
        bus_rows = []
        for run_id, state in list(live.registry.items()):
            watch = live.watches.get(run_id)
            bus_rows.append(bus_listing_row(state, watch.state if watch is not None else None))
        return merged_listing(bus_rows, await self._store_listing())

    async def find_watch(self, run_id: str) -> RunWatch | None:
        """The watch of `run_id` if the bus knows the run (its history read, up to a bound)."""
        live = self._live
        watch = live.watches.get(run_id)
        if watch is None:
            # With the bus down a new watch could read nothing: the store answers instead.
            if live.bus_ok is False or not await live.on_bus(run_id):
                return None
            watch = live.watch(run_id)
        if not watch.ready.is_set() and live.bus_ok is not False:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(watch.ready.wait(), HISTORY_WAIT)
        watch.last_used = time.monotonic()
        return watch

    def _run_id(self, request: Request) -> str:
        return request.path_params["run_id"]

    def _bus_state(self) -> dict[str, Any]:
        live = self._live
        return {
            "url": self.options.shown_url,
            "ok": live.bus_ok,
            "problem": live.bus_problem,
            "namespace": self.options.namespace,
        }

    def _bus_view(self, watch: RunWatch, series: bool, config: bool = True) -> dict[str, Any]:
        view = live_run(watch.state)
        if config:  # not in every SSE snapshot: the page keeps the one it fetched first
            view["config"] = dict(watch.state.config)
        view["bus"] = self._bus_state()
        view["can_stop"] = self.can_stop(watch)
        if series:
            view["series"], view["series_source"] = live_series(watch.state)
        return view

    def can_stop(self, watch: RunWatch) -> bool:
        """Whether the page offers Stop: the run is on the bus, started and not finished."""
        state = watch.state
        return state.started is not None and not state.finished

    # -- routes ----------------------------------------------------------------------------

    async def info(self, request: Request) -> Response:
        """What the page needs to know about this server."""
        return self.json(
            {
                "bus": self._bus_state(),
                "runs_dir": str(self.options.runs_dir),
                "source": self.options.source,
                "signed": self.options.secret is not None,
                "token_required": self.options.token is not None,
            }
        )

    async def runs(self, request: Request) -> Response:
        """The runs list as JSON."""
        return self.json({"runs": await self.listing(), "bus": self._bus_state()})

    async def runs_stream(self, request: Request) -> Response:
        """The runs list as SSE."""

        async def listing() -> dict[str, Any]:
            return {"runs": await self.listing(), "bus": self._bus_state()}

        stream = sse.list_stream(
            self._live, listing, self.scrub, self.drop, self.options.sse_retry_ms
        )
        return _sse_response(stream)

    async def run(self, request: Request) -> Response:
        """One run as JSON: from the bus when it knows it, else from the tracking store."""
        run_id = self._run_id(request)
        series = request.query_params.get("series") != "0"
        watch = None
        with contextlib.suppress(InvalidTopic):
            self.topics.events(run_id)
            watch = await self.find_watch(run_id)
        if watch is not None and watch.ready.is_set():
            return self.json(self._bus_view(watch, series))
        path = await asyncio.to_thread(store_dir, self.options.runs_dir, run_id)
        if path is not None:
            try:
                view = await asyncio.to_thread(store_run, path)
            except (OSError, ValueError, LookupError, TrackingError) as exc:  # gone meanwhile
                return self.error(500, f"cannot read run {run_id!r} from {path}: {exc}")
            view["bus"] = self._bus_state()
            view["can_stop"] = False
            return self.json(view)
        if watch is not None:  # known to the bus, whose history could not be read in time
            return self.json(self._bus_view(watch, series))
        return self.error(
            404,
            f"no run {run_id!r} on the bus at {self.options.shown_url} (namespace "
            f"{self.options.namespace!r}) nor in the tracking store {self.options.runs_dir}: "
            "the runs list at / shows the runs there are",
        )

    async def run_stream(self, request: Request) -> Response:
        """One run's points and state as SSE (resuming after `Last-Event-ID`)."""
        run_id = self._run_id(request)
        try:
            self.topics.events(run_id)
        except InvalidTopic as exc:
            return self.error(400, str(exc))
        watch = await self.find_watch(run_id)
        if watch is None:
            return self.error(
                404,
                f"run {run_id!r} is not on the bus at {self.options.shown_url}: a finished run "
                f"is read whole from GET /api/runs/{run_id}",
            )
        after = sse.valid_last_id(request.headers.get("last-event-id"))
        self.stream_connects.append(after)

        def snapshot() -> dict[str, Any]:
            return self._bus_view(watch, series=False, config=False)

        stream = sse.run_stream(
            watch, after, snapshot, self.scrub, self.drop, self.options.sse_retry_ms, self.gate
        )
        return _sse_response(stream)

    async def stop(self, request: Request) -> Response:
        """Send TERMINATE with the posted reason on the run's control topic."""
        if not same_origin(request.scope):
            return self.error(403, "a stop must come from this page (the Origin is another site)")
        if self.options.token is None and not self.options.local_only:
            return self.error(403, "stopping runs needs --token when listening beyond localhost")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return self.error(
                415, 'send the stop as JSON, Content-Type: application/json, {"reason": "why"}'
            )
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self.error(400, 'the body is not JSON: send {"reason": "why"}')
        try:
            reason = check_reason(body.get("reason") if isinstance(body, dict) else body)
        except BadReason as exc:
            return self.error(400, str(exc))
        run_id = self._run_id(request)
        try:
            self.topics.control(run_id)
        except InvalidTopic as exc:
            return self.error(400, str(exc))
        live = self._live
        if live.bus_ok is False:
            return self.error(
                503,
                f"cannot reach the bus at {self.options.shown_url}: nothing was sent; try again "
                "once Redis answers",
            )
        watch = await self.find_watch(run_id)
        if watch is None:
            return self.error(404, f"run {run_id!r} is not on the bus: there is nothing to stop")
        state = watch.state
        if state.finished:
            finish = state.finish or {}
            return self.error(
                409, f"run {run_id!r} has already finished ({finish.get('status', 'finished')})"
            )
        rank = min(state.ranks.values(), key=lambda r: r.rank, default=None)
        env = terminate_envelope(
            run_id,
            self.options.source,
            reason,
            self.options.secret,
            epoch=rank.epoch if rank else 0,
            iteration=rank.iteration if rank else 0,
        )
        try:
            assert self.bus is not None  # opened at startup, before any request
            entry = await send_terminate(self.bus, self.topics, env)
        except BusError as exc:
            return self.error(503, f"the TERMINATE was not sent: {exc}")
        return self.json(
            {
                "sent": True,
                "entry": entry,
                "envelope": env.id,
                "source": env.source,
                "reason": reason,
                "signed": env.sig is not None,
            },
            202,
        )

    # -- sweeps ------------------------------------------------------------------------------

    async def _sweep_watch(self, request: Request) -> Any:
        """The watch of the sweep in the path, or the error response to send instead."""
        sweep_id = request.path_params["sweep_id"]
        try:
            self.topics.trials(sweep_id)
        except InvalidTopic as exc:
            return self.error(400, str(exc))
        assert self.sweeps is not None, "the app has not started (lifespan)"
        try:
            watch = await self.sweeps.watch(sweep_id)
        except BusError as exc:
            return self.error(503, f"cannot read the bus at {self.options.shown_url}: {exc}")
        if watch is None:
            return self.error(
                404,
                f"no sweep {sweep_id!r} on the bus at {self.options.shown_url} (namespace "
                f"{self.options.namespace!r}): GET /api/sweeps lists the sweeps there are",
            )
        return watch

    async def sweep_list(self, request: Request) -> Response:
        """The sweeps the bus has seen."""
        assert self.sweeps is not None, "the app has not started (lifespan)"
        try:
            ids = await self.sweeps.ids()
        except BusError as exc:
            return self.error(503, f"cannot read the bus at {self.options.shown_url}: {exc}")
        return self.json({"sweeps": ids, "bus": self._bus_state()})

    async def sweep(self, request: Request) -> Response:
        """One sweep as JSON."""
        watch = await self._sweep_watch(request)
        if isinstance(watch, Response):
            return watch
        return self.json({**watch.state.as_dict(), "bus": self._bus_state()})

    async def sweep_events(self, request: Request) -> Response:
        """One sweep as SSE, sent again whenever it changes."""
        watch = await self._sweep_watch(request)
        if isinstance(watch, Response):
            return watch
        stream = sweep_stream(watch, self.scrub, self.drop, self.options.sse_retry_ms)
        return _sse_response(stream)


def _store_rows(root: Path) -> list[dict[str, Any]]:
    """The runs-list rows of the tracking store under `root` (file reads: run in a thread)."""
    return [store_listing_row(info, read_meta(info.dir)) for info in list_runs(root)]


def _sse_response(stream: AsyncIterator[bytes]) -> Response:
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


class _SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, with_headers)


def _page(name: str) -> Any:
    """The endpoint serving static page `name` (the script fills it in from the API)."""

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / name, headers={"cache-control": "no-store"})

    return page


def create_app(options: WebOptions, bus: Bus | None = None) -> Starlette:
    """The ASGI app of `trainer web`; `app.state.web` is its WebApp (tests drive it there)."""
    web = WebApp(options, bus)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await web.startup()
        try:
            yield
        finally:
            await web.shutdown()

    routes = [
        Route("/", _page("index.html")),
        Route("/runs/{run_id}", _page("run.html")),
        Route("/compare", _page("compare.html")),
        Route("/api/info", web.info),
        Route("/api/runs", web.runs),
        Route("/api/runs/stream", web.runs_stream),
        Route("/api/runs/{run_id}", web.run),
        Route("/api/runs/{run_id}/stream", web.run_stream),
        Route("/api/runs/{run_id}/stop", web.stop, methods=["POST"]),
        Route("/sweeps/{sweep_id}", _page("sweep.html")),
        Route("/api/sweeps", web.sweep_list),
        Route("/api/sweeps/{sweep_id}", web.sweep),
        Route("/api/sweeps/{sweep_id}/stream", web.sweep_events),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_SecurityHeaders), Middleware(TokenGuard, options=options)],
        lifespan=lifespan,
    )
    app.state.web = web
    return app
