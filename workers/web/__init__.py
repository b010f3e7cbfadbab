"""`trainer web`: a live web view of runs, read straight from the bus, that can stop a run.

A tail reader like the monitor (never a consumer group, never an ack), served by uvicorn:
workers.web.app has the routes, .live reads the bus, .sse streams to browsers, .views turns the
monitor's state and the tracking store into what pages show, .auth and .scrub keep it private,
.stop sends TERMINATE. The static pages and the vendored chart library (uPlot, MIT) are in
static/: nothing is built or fetched from the internet.
"""

from __future__ import annotations

from workers.web.app import WebApp, create_app
from workers.web.errors import WebError
from workers.web.options import WebOptions

__all__ = ["WebApp", "WebError", "WebOptions", "create_app"]
