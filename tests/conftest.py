"""Shared fixtures: a private Redis for the whole session, flushed between tests."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
from redis_server import RedisServer

from bus import Bus, open_bus

if TYPE_CHECKING:
    from workers.context import RunContext

# Torch's intra-op pool only adds noise on a 2-core machine running several processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    """Hand modules to xdist's workers in collection order (see the next hook)."""
    # xdist's --dist loadscope otherwise starts the modules with the most tests first, which
    # leaves the few-test process-heavy ones (a whole sweep, two ranks) to run alone at the end.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the modules marked heavy first, the longest first, so that they start early."""

    def cost(item: pytest.Item) -> float:
        mark = item.get_closest_marker("heavy")
        return -mark.args[0] if mark is not None else 0.0

    items.sort(key=cost)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server started by the tests on a free port (never the machine's own)."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of the session's private Redis, emptied before each test."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(params=["memory", "redis"])
def bus_url(request: pytest.FixtureRequest) -> str:
    """URL of an empty bus: a fresh in-memory name, or the session's private Redis, flushed.

    A test taking it runs twice, once on each bus: they promise the same semantics.
    """
    if request.param == "memory":
        return f"memory://test-{uuid.uuid4().hex}"
    return request.getfixturevalue("redis_url")


@pytest.fixture
async def bus(bus_url: str) -> AsyncIterator[Bus]:
    """An open bus on `bus_url` for the test's own reads and writes, closed after the test."""
    handle = open_bus(bus_url)
    yield handle
    await handle.close()


@pytest.fixture
async def worker_ctx() -> AsyncIterator[RunContext]:
    """A worker's context before its run's RUN_STARTED (no config yet), on a fresh memory bus."""
    from bus import Publisher, Topics
    from workers.context import RunContext
    from workers.logs import worker_log

    handle = open_bus(f"memory://ctx-{uuid.uuid4().hex}")
    yield RunContext(
        run_id="r",
        kind="test",
        name="w",
        topics=Topics(),
        bus=handle,
        publisher=Publisher(handle),
        log=worker_log("test"),
    )
    await handle.close()
