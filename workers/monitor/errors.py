"""What the monitor raises when it cannot start: one line for the user, never a traceback."""

from __future__ import annotations

from workers.errors import WorkerError


class MonitorError(WorkerError):
    """The monitor cannot watch what it was asked to; the message says what and how to fix it."""


class RunNotOnBus(MonitorError):
    """The run asked for is neither on the registry nor has an events topic."""


class BusUnreachable(MonitorError):
    """The bus cannot be reached (or refuses the monitor's credentials)."""
