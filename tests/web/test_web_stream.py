"""The run stream's contract, read with a plain HTTP client: every metric point is an SSE event
whose id is its events-stream entry id, and `Last-Event-ID` resumes right after it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from web_envelopes import metrics, publish, started
from web_harness import WebServer

from workers.web import WebOptions

HANG_GUARD = 30.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[WebServer]:
    """The app on a fresh in-memory bus."""
    s = WebServer(WebOptions(f"memory://web-{uuid.uuid4().hex}", runs_dir=tmp_path)).start()
    yield s
    s.stop()


def read_events(
    client: httpx.Client, path: str, points: int, last_id: str | None = None
) -> list[dict[str, Any]]:
    """The SSE events of `path` until `points` points and a state came (with a hang guard)."""
    headers = {"last-event-id": last_id} if last_id else {}
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    deadline = time.monotonic() + HANG_GUARD
    with client.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            assert time.monotonic() < deadline, f"only {events} within {HANG_GUARD} s"
            if line == "":
                if current:
                    events.append(current)
                    current = {}
                kinds = [e.get("event") for e in events]
                if kinds.count("point") >= points and "state" in kinds:
                    return events
                continue
            field, _, value = line.partition(": ")
            current[field] = json.loads(value) if field == "data" else value
    return events


def test_points_carry_their_entry_ids_and_a_last_event_id_resumes_after_it(
    server: WebServer,
) -> None:
    values = [0.5, 0.6, 0.7, 0.8]
    ids = asyncio.run(
        publish(
            server.options.bus_url,
            [started("r1"), *(metrics("r1", e, v) for e, v in enumerate(values))],
        )
    )
    metric_ids = ids[1:]
    with httpx.Client(base_url=server.url, timeout=HANG_GUARD) as client:
        first = read_events(client, "/api/runs/r1/stream", points=4)
        points = [e for e in first if e.get("event") == "point"]
        assert [p["id"] for p in points] == metric_ids
        assert [p["data"]["values"]["accuracy"] for p in points] == values
        assert [p["data"]["x"] for p in points] == [1, 2, 3, 4]  # epochs counted from 1
        state = next(e for e in first if e.get("event") == "state")
        assert "id" not in state  # snapshots never move the browser's Last-Event-ID
        assert state["data"]["status"] == "running"

        # A browser reconnecting after the second point is sent the third and the fourth,
        # then whatever is published next.
        more = asyncio.run(publish(server.options.bus_url, [metrics("r1", 4, 0.9)]))
        resumed = read_events(client, "/api/runs/r1/stream", points=3, last_id=metric_ids[1])
        assert [e["id"] for e in resumed if e.get("event") == "point"] == [*metric_ids[2:], *more]
