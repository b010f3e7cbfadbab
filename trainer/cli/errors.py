"""The one error a command raises for bad usage; the CLI prints it and exits with status 2."""

from __future__ import annotations

from trainer.errors import TrainerError

USAGE_ERROR = 2


class UsageError(TrainerError, ValueError):
    """The command line (or what it names) cannot be used; the message says what to do."""
