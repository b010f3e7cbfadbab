"""The `stack` fixture: a Stack (stack_harness.py) on the session's private Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stack_harness import Stack


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """A Stack on the session's private Redis (flushed), working in the test's directory."""
    s = Stack(redis_url, tmp_path)
    yield s
    s.close()
