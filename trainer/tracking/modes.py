"""The process-wide tracking mode: online, offline or disabled (env TRAINER_TRACKING_MODE)."""

from __future__ import annotations

import os

MODES = ("online", "offline", "disabled")
MODE_ENV = "TRAINER_TRACKING_MODE"
DEFAULT_MODE = "offline"

_mode: str | None = None


def check_mode(mode: str, source: str = "mode") -> str:
    """`mode` if it is one of MODES; a ValueError naming `source` otherwise."""
    if mode not in MODES:
        raise ValueError(f"tracking {source} {mode!r} is not one of {', '.join(MODES)}")
    return mode


def set_mode(mode: str) -> None:
    """Set the mode new runs take when `run()` is not given one (overrides the environment)."""
    global _mode
    _mode = check_mode(mode)


def get_mode() -> str:
    """The default mode: set_mode's, else env TRAINER_TRACKING_MODE, else offline."""
    if _mode is not None:
        return _mode
    from_env = os.environ.get(MODE_ENV, "").strip().lower()
    if not from_env:
        return DEFAULT_MODE
    return check_mode(from_env, f"mode from ${MODE_ENV}")


def reset_mode() -> None:
    """Forget set_mode's choice (back to the environment's or the default)."""
    global _mode
    _mode = None
