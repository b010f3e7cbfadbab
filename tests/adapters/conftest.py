"""Fixtures of the adapter tests: the bridge tests' bus client and run id, reused."""

from __future__ import annotations

from bridge.conftest import client, run_id

__all__ = ["client", "run_id"]
