"""Fixtures of the bridge tests: a bus URL (in memory, or the session's private Redis) and a
client of the test's own on that bus."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ._bus import BusClient


@pytest.fixture
def client(bus_url: str) -> Iterator[BusClient]:
    """The test's own handle on the bus (it also keeps an in-memory bus alive to the end)."""
    handle = BusClient(bus_url)
    yield handle
    handle.close()


@pytest.fixture
def run_id() -> str:
    """A fresh run id."""
    return f"run-{uuid.uuid4().hex[:12]}"
