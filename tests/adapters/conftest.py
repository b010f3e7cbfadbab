"""Fixtures of the adapter tests: the bridge tests' bus client and run id, and a Stack of
`trainer worker` processes on the session's private Redis (tests/stack/stack_harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from bridge._bus import BusClient
from bridge.conftest import client, run_id
from stack.stack_harness import Stack

__all__ = ["client", "redis_client", "run_id", "stack"]


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """Worker processes on the session's private Redis (flushed), working in the test's dir."""
    s = Stack(redis_url, tmp_path)
    yield s
    s.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[BusClient]:
    """The test's own handle on the session's private Redis."""
    handle = BusClient(redis_url)
    yield handle
    handle.close()
