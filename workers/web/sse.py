"""Server-Sent Events: a run's metric points (each with its events-stream entry id as the SSE
`id:`) and its state, and the runs list.

A run's stream sends every metric point after the browser's `Last-Event-ID` (all of them on a
first connection), then each new one as the bus delivers it, at once; between points, the run's
state (progress, workers, checkpoints, dead letters, how it ended) as a snapshot without an id,
at most every STATE_INTERVAL seconds and at least every STATE_REFRESH (which also keeps an idle
connection open through proxies). A snapshot carries no id, so only points move the browser's
`Last-Event-ID`: a reconnect resumes exactly after the last point the page received, and the
snapshot that opens every connection brings the rest.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from bus.stream_ids import parse_id
from workers.web.live import LiveRuns, RunWatch
from workers.web.scrub import Scrubber

# Seconds between two state snapshots while the run moves (progress every iteration would
# otherwise be sent every iteration), and the longest without one (heartbeat ages move on).
STATE_INTERVAL = 0.2
STATE_REFRESH = 2.0
# Seconds a held stream (see `run_stream`'s gate) looks at its drop again.
KEEPALIVE = 15.0
# How long a stream waits for a watch's history before it starts sending what it has.
READY_WAIT = 10.0


def event(data: Any, *, kind: str, event_id: str | None = None) -> bytes:
    """One SSE event: `event: kind`, an optional `id:`, and `data` as one line of JSON."""
    lines = [f"event: {kind}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    # JSON escapes newlines inside strings, so the data is one `data:` line.
    lines.append("data: " + json.dumps(data, separators=(",", ":"), allow_nan=False))
    return ("\n".join(lines) + "\n\n").encode()


def retry(milliseconds: int) -> bytes:
    """The SSE field that tells a browser how long to wait before it reconnects."""
    return f"retry: {int(milliseconds)}\n\n".encode()


def comment(text: str) -> bytes:
    """An SSE comment line (ignored by the browser; keeps the connection alive)."""
    return f": {text}\n\n".encode()


def valid_last_id(value: str | None) -> str | None:
    """`value` if it is a stream entry id ("<ms>-<seq>"), else None (start from the beginning)."""
    if not value:
        return None
    try:
        parse_id(value.strip())
    except (ValueError, TypeError):
        return None
    return value.strip()


async def _wait(events: list[asyncio.Event], timeout: float) -> None:
    """Return when one of `events` is set or after `timeout` seconds."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_stream(
    watch: RunWatch,
    after: str | None,
    snapshot: Callable[[], dict[str, Any]],
    scrub: Scrubber,
    drop: asyncio.Event,
    retry_ms: int,
    gate: asyncio.Event | None = None,
) -> AsyncIterator[bytes]:
    """The SSE stream of one run: the points after `after`, then live points and snapshots."""
    # It ends when `drop` is set (the browser then reconnects with its Last-Event-ID). Nothing
    # is sent while `gate` is clear: a test holds a reconnect while points are published.
    changed, pointed = watch.changed.subscribe(), watch.new_points.subscribe()
    watch.subscribers += 1
    try:
        yield retry(retry_ms)
        while gate is not None and not gate.is_set() and not drop.is_set():
            await _wait([gate, drop], KEEPALIVE)
        await _wait([watch.ready, drop], READY_WAIT)
        points = watch.points_after(after)
        sent = len(watch.points) - len(points)  # where this connection is in watch.points
        state_version, state_at = -1, 0.0
        while not drop.is_set():
            changed.clear()
            pointed.clear()
            for point in watch.points[sent:]:
                yield event(scrub.value(point.as_json()), kind="point", event_id=point.id)
            sent = len(watch.points)
            now = time.monotonic()
            stale = watch.version != state_version
            if (stale and now - state_at >= STATE_INTERVAL) or now - state_at >= STATE_REFRESH:
                state_version, state_at = watch.version, now
                yield event(scrub.value(snapshot()), kind="state")
            if watch.version != state_version:
                # A change waits for its snapshot's turn; only a point may wake the stream
                # before then (every iteration of a fast run is a change).
                await _wait([pointed, drop], STATE_INTERVAL - (now - state_at))
            else:
                await _wait([changed, drop], STATE_REFRESH - (now - state_at))
            watch.last_used = time.monotonic()
    finally:
        watch.changed.unsubscribe(changed)
        watch.new_points.unsubscribe(pointed)
        watch.subscribers -= 1
        watch.last_used = time.monotonic()


async def list_stream(
    live: LiveRuns,
    listing: Callable[[], Any],
    scrub: Scrubber,
    drop: asyncio.Event,
    retry_ms: int,
) -> AsyncIterator[bytes]:
    """The SSE stream of the runs list: the list whenever it changed, at most twice a second."""
    # Looked at again every STATE_REFRESH seconds too: the tracking store sends no news.
    waiter = live.changed.subscribe()
    try:
        yield retry(retry_ms)
        last = None
        while not drop.is_set():
            waiter.clear()
            rows = scrub.value(await listing())
            if rows != last:
                last = rows
                yield event(rows, kind="runs")
            else:
                yield comment("unchanged")
            await _wait([drop], 0.5)  # the throttle: changes within it are sent together
            await _wait([waiter, drop], STATE_REFRESH)
    finally:
        live.changed.unsubscribe(waiter)
