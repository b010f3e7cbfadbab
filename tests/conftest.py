"""Shared fixtures: a private Redis for the whole session, flushed between tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from redis_server import RedisServer

# Torch's intra-op pool only adds noise on a 2-core machine running several processes.
os.environ.setdefault("OMP_NUM_THREADS", "1")


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
