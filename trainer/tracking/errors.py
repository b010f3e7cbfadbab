"""The errors of the tracking store: a run directory that cannot be written, a run not found."""

from __future__ import annotations

import os
from pathlib import Path

from trainer.errors import TrainerError


class TrackingError(TrainerError, RuntimeError):
    """Tracking data could not be written (full disk, read-only directory...) or read back.

    `path` is the file or directory concerned and `reason` what the system said.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None, reason: str = ""):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.reason = reason


def tracking_error(exc: OSError, doing: str, fallback: str | os.PathLike[str]) -> TrackingError:
    """A TrackingError naming the path and the OS reason of `exc`, raised while `doing`."""
    path = exc.filename if exc.filename is not None else fallback
    reason = exc.strerror or str(exc)
    return TrackingError(
        f"tracking: cannot {doing} {path}: {reason} "
        "(free some space or make the runs directory writable, or set TRAINER_TRACKING_MODE="
        "disabled)",
        path=path,
        reason=reason,
    )


class RunNotFound(TrackingError, LookupError):
    """No run matches what was asked for; the message names it and the nearest run ids."""
