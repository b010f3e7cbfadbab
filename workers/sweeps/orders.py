"""A trial as the sweep's messages carry it: the order on the queue, and the envelopes of a sweep.

Every envelope of a sweep's topics names the sweep in its `run_id`; `data` holds the rest
(bus.messages lists the required keys, docs/protocol.md section 10.4 documents them).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bus import Envelope, Rejected
from bus.messages import SWEEP_EVENTS, TRIAL, TRIALS, check_data


@dataclass(frozen=True)
class TrialOrder:
    """One trial to run: its number, run id, the values it tries and its whole config."""

    sweep_id: str
    trial: int
    run_id: str
    params: dict[str, Any]
    config: dict[str, Any]
    nproc: int = 1
    objective: dict[str, str] | None = None

    @property
    def sweep(self) -> dict[str, Any]:
        """What the trial's RUN_STARTED carries as `sweep`."""
        marker: dict[str, Any] = {"id": self.sweep_id, "trial": self.trial, "params": self.params}
        if self.objective is not None:
            marker["objective"] = dict(self.objective)
        return marker

    def envelope(self, source: str) -> Envelope:
        """The TRIAL envelope of the queue."""
        data: dict[str, Any] = {
            "trial": self.trial,
            "run_id": self.run_id,
            "params": self.params,
            "config": self.config,
            "nproc": self.nproc,
        }
        if self.objective is not None:
            data["objective"] = dict(self.objective)
        return Envelope(TRIAL, self.sweep_id, source, data)

    @classmethod
    def of(cls, env: Envelope) -> TrialOrder:
        """The order a TRIAL envelope carries; bus.Rejected names what is wrong with it."""
        if env.type != TRIAL:
            raise Rejected(f"{env.type} {env.id} on a queue of trials: only TRIAL belongs there")
        check_data(TRIAL, env.data, topic=TRIALS)
        data = env.data
        objective = data.get("objective")
        return cls(
            sweep_id=env.run_id,
            trial=data["trial"],
            run_id=data["run_id"],
            params=dict(data["params"]),
            config=dict(data["config"]),
            nproc=max(1, data["nproc"]),
            objective=dict(objective) if isinstance(objective, Mapping) else None,
        )


def trial_run_id(sweep_id: str, trial: int) -> str:
    """The run id of trial `trial` of a sweep: `<sweep id>-t<trial, 3 digits or more>`.

    Fixed by the sweep, so that an agent taking a trial over finds its run (and directory).
    """
    return f"{sweep_id}-t{trial:03d}"


def sweep_event(type_: str, sweep_id: str, source: str, data: Mapping[str, Any]) -> Envelope:
    """An envelope of the sweep's events topic, checked against the catalogue."""
    check_data(type_, dict(data), topic=SWEEP_EVENTS)
    return Envelope(type_, sweep_id, source, dict(data))


def default_source(role: str) -> str:
    """`<role>:<host>:<pid>`: who sends a sweep's envelopes from this process."""
    return f"{role}:{socket.gethostname()}:{os.getpid()}"
