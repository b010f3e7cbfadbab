"""The error `trainer web` raises for options or a setting it cannot use."""

from __future__ import annotations

from workers.errors import WorkerError


class WebError(WorkerError):
    """The web view cannot start as asked; the message says what to change."""
