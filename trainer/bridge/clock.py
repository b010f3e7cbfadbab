"""RunClock: the seconds a run has spent training, over all its sessions, and its run id.

A run killed and resumed later trains in several sessions; the time it was down between them is
not the run's. The clock runs from `BusRun.start()` to `finish()` and is checkpointed with the
rest of the run (`state_dict`), so a resumed run goes on counting from its checkpoint's time.
(The time between that checkpoint and the kill is lost with the work done in it, which the
resumed run does again, and counts again.) The checkpoint also keeps the run's id, so that a
resume can continue under it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


class RunClock:
    """Seconds of training of run `run_id`: earlier sessions' (restored) plus this one's."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._before = 0.0  # seconds of the sessions before this one (from a checkpoint)
        self._since: float | None = None  # time.monotonic() when this session started

    def start(self) -> None:
        """Start counting this session (BusRun.start())."""
        if self._since is None:
            self._since = time.monotonic()

    def stop(self) -> None:
        """Stop counting: the session's seconds are added to the total (BusRun.finish())."""
        if self._since is not None:
            self._before += time.monotonic() - self._since
            self._since = None

    @property
    def seconds(self) -> float:
        """Seconds trained so far, this session's up to now included."""
        running = time.monotonic() - self._since if self._since is not None else 0.0
        return self._before + running

    def state_dict(self) -> dict[str, Any]:
        """The run's id and its seconds trained so far (plain values: weights_only loads them)."""
        return {"run_id": self.run_id, "running_s": self.seconds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Count on from a checkpoint's seconds; the run id stays this clock's own."""
        seconds = state.get("running_s")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
            raise ValueError(f"run clock state needs running_s >= 0, got {seconds!r}")
        self._before = float(seconds)


def saved_run_id(state: Mapping[str, Any]) -> str | None:
    """The run id a checkpoint's states were saved under (its `run` entry), if it has one."""
    entry = state.get("run") if isinstance(state, Mapping) else None
    run_id = entry.get("run_id") if isinstance(entry, Mapping) else None
    return run_id if isinstance(run_id, str) and run_id else None
