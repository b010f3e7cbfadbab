"""The `bus` fixture: every contract test runs once on InMemoryBus and once on Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from bus import Bus, open_bus


@pytest.fixture(params=["memory", "redis"])
def bus_url(request: pytest.FixtureRequest) -> str:
    """URL of an empty bus: a fresh in-memory name, or the session's private Redis, flushed."""
    if request.param == "memory":
        return f"memory://test-{uuid.uuid4().hex}"
    return request.getfixturevalue("redis_url")


@pytest.fixture
async def bus(bus_url: str) -> AsyncIterator[Bus]:
    """An open bus on `bus_url`, closed after the test."""
    handle = open_bus(bus_url)
    yield handle
    await handle.close()
