"""What is known of a sweep from its envelopes: each trial's status, curve and ending, the best.

SweepState is fed envelopes in each topic's order (`observe`) and holds no connection: the
coordinator's progress line, `trainer web`'s sweep page and the tests read the same model.
A trial counts as pruned when a vote stopped it with a pruner's reason (`rung N (epoch E):
...`, `trainer.sweep_spec.pruned_at`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bus import Envelope
from bus.messages import (
    EPOCH_COMPLETED,
    METRICS,
    RUN_FINISHED,
    RUN_STARTED,
    SWEEP_FINISHED,
    SWEEP_STARTED,
    TRIAL,
    TRIAL_ENDED,
    TRIAL_STARTED,
)
from trainer.sweep_rules import SweepGoal, pruned_at
from workers.figures import epoch_figures

# A trial's statuses, in the order of its life; the last four are endings.
QUEUED, RUNNING = "queued", "running"
COMPLETED, TERMINATED, PRUNED, FAILED = "completed", "terminated", "pruned", "failed"
ENDINGS = (COMPLETED, TERMINATED, PRUNED, FAILED)


@dataclass
class TrialState:
    """One trial: its values, where it runs, its curve (epoch from 1 -> value) and its end."""

    trial: int
    run_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    status: str = QUEUED
    agent: str | None = None
    takeovers: int = 0  # times another agent took it over and resumed it
    resumed_from: str | None = None
    world_size: int = 1
    max_epochs: int | None = None
    curve: dict[int, float] = field(default_factory=dict)
    epochs: int = 0  # epochs completed, counted from 1
    by: str | None = None
    voter: str | None = None
    reason: str = ""
    rung: tuple[int, int] | None = None  # (rung, epoch) at which a pruner stopped it
    ended: bool = False  # its agent said its run is over (TRIAL_ENDED)

    def best(self, objective: SweepGoal) -> float | None:
        """The trial's best value of the objective so far, None before any."""
        best: float | None = None
        for value in self.curve.values():
            if objective.better(value, best):
                best = value
        return best

    def as_dict(self, objective: SweepGoal) -> dict[str, Any]:
        """The trial as JSON (the web page's row)."""
        best = self.best(objective)
        return {
            "trial": self.trial,
            "run_id": self.run_id,
            "params": self.params,
            "status": self.status,
            "agent": self.agent,
            "takeovers": self.takeovers,
            "epochs": self.epochs,
            "max_epochs": self.max_epochs,
            "best": best if best is None or math.isfinite(best) else None,
            "curve": [[x, v] for x, v in sorted(self.curve.items()) if math.isfinite(v)],
            "by": self.by,
            "voter": self.voter,
            "reason": self.reason,
            "rung": list(self.rung) if self.rung else None,
        }


class SweepState:
    """A sweep as its envelopes tell it; `observe` returns whether anything changed."""

    def __init__(self, sweep_id: str, objective: SweepGoal | None = None) -> None:
        self.sweep_id = sweep_id
        self.objective = objective or SweepGoal()
        self.started: dict[str, Any] | None = None  # SWEEP_STARTED's data
        self.finished: dict[str, Any] | None = None  # SWEEP_FINISHED's data
        self.trials: dict[int, TrialState] = {}
        self.by_run: dict[str, int] = {}

    # -- feeding ----------------------------------------------------------------------------

    def observe(self, env: Envelope) -> bool:
        """Account for one envelope of the sweep's topics, the registry or a trial's events."""
        kind = env.type
        if kind in (SWEEP_STARTED, SWEEP_FINISHED, TRIAL, TRIAL_STARTED, TRIAL_ENDED):
            if env.run_id != self.sweep_id:
                return False
            return self._sweep_message(env)
        trial = self._trial_of_run(env)
        if trial is None:
            return False
        if kind == RUN_STARTED:
            return self._run_started(trial, env)
        if kind == RUN_FINISHED:
            return self._run_finished(trial, env)
        if kind in (METRICS, EPOCH_COMPLETED):
            return self._figures(trial, env)
        return False

    def _sweep_message(self, env: Envelope) -> bool:
        data = env.data
        if env.type == SWEEP_STARTED:
            self.started = dict(data)
            objective = data.get("objective")
            if isinstance(objective, Mapping):
                self.objective = SweepGoal(
                    str(objective.get("metric", self.objective.metric)),
                    str(objective.get("split", self.objective.split)),
                    str(objective.get("mode", self.objective.mode)),
                )
            return True
        if env.type == SWEEP_FINISHED:
            self.finished = dict(data)
            return True
        number = data.get("trial")
        if not isinstance(number, int) or isinstance(number, bool):
            return False
        trial = self.trial(number)
        run_id = data.get("run_id")
        if isinstance(run_id, str) and run_id:
            trial.run_id = run_id
            self.by_run[run_id] = number
        if env.type == TRIAL:
            if isinstance(data.get("params"), Mapping):
                trial.params = dict(data["params"])
            epochs = (data.get("config") or {}).get("train", {}).get("epochs")
            if isinstance(epochs, int):
                trial.max_epochs = epochs
            return True
        if env.type == TRIAL_STARTED:
            if trial.agent is not None and trial.agent != data.get("agent"):
                trial.takeovers += 1
            trial.agent = data.get("agent")
            if not trial.ended:
                trial.status = RUNNING
            return True
        # TRIAL_ENDED: the trial is done, whatever came before (its agent acked it)
        trial.ended = True
        self._ending(trial, data)
        return True

    def _trial_of_run(self, env: Envelope) -> TrialState | None:
        number = self.by_run.get(env.run_id)
        if number is None and env.type == RUN_STARTED:
            sweep = env.data.get("sweep")
            if isinstance(sweep, Mapping) and sweep.get("id") == self.sweep_id:
                number = sweep.get("trial")
                if isinstance(number, int) and not isinstance(number, bool):
                    self.by_run[env.run_id] = number
                    trial = self.trial(number)
                    trial.run_id = env.run_id
                    return trial
            return None
        return None if number is None else self.trial(number)

    def _run_started(self, trial: TrialState, env: Envelope) -> bool:
        data = env.data
        sweep = data.get("sweep")
        if isinstance(sweep, Mapping) and isinstance(sweep.get("params"), Mapping):
            trial.params = dict(sweep["params"])
        size = data.get("world_size")
        trial.world_size = size if isinstance(size, int) and size >= 1 else 1
        epochs = (data.get("config") or {}).get("train", {}).get("epochs")
        if isinstance(epochs, int):
            trial.max_epochs = epochs
        if data.get("resumed_from") is not None:
            trial.resumed_from = str(data["resumed_from"])
        if not trial.ended:
            trial.status = RUNNING
            trial.by, trial.voter, trial.reason, trial.rung = None, None, "", None
        return True

    def _run_finished(self, trial: TrialState, env: Envelope) -> bool:
        if env.source.startswith("trainer:") and env.source != "trainer:0":
            return False  # every rank says the same; rank 0 speaks for the run
        data = env.data
        epochs = data.get("epochs")
        if isinstance(epochs, int) and not isinstance(epochs, bool):
            trial.epochs = max(trial.epochs, epochs)
        if not trial.ended or trial.status not in ENDINGS:
            self._ending(trial, data)
        return True

    def _ending(self, trial: TrialState, data: Mapping[str, Any]) -> None:
        status = str(data.get("status") or FAILED)
        trial.reason = str(data.get("reason") or "")
        trial.by = data.get("by") if isinstance(data.get("by"), str) else None
        voter = data.get("voter")
        trial.voter = voter if isinstance(voter, str) else trial.voter
        trial.rung = pruned_at(trial.reason) if status == TERMINATED else None
        trial.status = PRUNED if trial.rung is not None else status
        if trial.status not in ENDINGS:
            trial.status = FAILED

    def _figures(self, trial: TrialState, env: Envelope) -> bool:
        try:
            figures = epoch_figures(env, trial.world_size)
        except Exception:  # a malformed envelope: the workers dead-letter it; nothing to show
            return False
        if figures is None or figures.split != self.objective.split:
            return False
        value = figures.values.get(self.objective.metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        trial.curve[figures.epoch + 1] = float(value)
        trial.epochs = max(trial.epochs, figures.epoch + 1)
        return True

    # -- reading ----------------------------------------------------------------------------

    def trial(self, number: int) -> TrialState:
        """The state of trial `number` (made if it is new)."""
        found = self.trials.get(number)
        if found is None:
            found = self.trials[number] = TrialState(number)
        return found

    @property
    def total(self) -> int | None:
        """How many trials the sweep runs, once SWEEP_STARTED said."""
        total = (self.started or {}).get("trials")
        return total if isinstance(total, int) else None

    def counts(self) -> dict[str, int]:
        """How many trials are queued, running, done (and of those: pruned, failed)."""
        states = [t.status for t in self.trials.values()]
        # Running: taken by an agent and not over for it yet (its run may have just finished).
        running = sum(1 for t in self.trials.values() if t.status != QUEUED and not t.ended)
        return {
            "queued": states.count(QUEUED),
            "running": running,
            "done": sum(1 for t in self.trials.values() if t.ended),
            "completed": states.count(COMPLETED),
            "terminated": states.count(TERMINATED),
            "pruned": states.count(PRUNED),
            "failed": states.count(FAILED),
        }

    def best(self) -> TrialState | None:
        """The trial with the best objective value so far (ties: the earliest trial)."""
        best: TrialState | None = None
        value: float | None = None
        for trial in sorted(self.trials.values(), key=lambda t: t.trial):
            candidate = trial.best(self.objective)
            if candidate is not None and self.objective.better(candidate, value):
                best, value = trial, candidate
        return best

    @property
    def done(self) -> bool:
        """Whether every trial of the sweep has ended."""
        total = self.total
        ended = sum(1 for t in self.trials.values() if t.ended)
        return total is not None and ended >= total

    def progress(self) -> str:
        """One line: trials running, done, pruned, failed; the best so far."""
        c = self.counts()
        total = self.total
        of = f"/{total}" if total is not None else ""
        line = (
            f"sweep {self.sweep_id}: {c['running']} running, {c['done']}{of} done "
            f"({c['pruned']} pruned, {c['failed']} failed)"
        )
        best = self.best()
        if best is not None:
            value = best.best(self.objective)
            line += (
                f"; best {self.objective.key} {value:.4f} (trial {best.trial}: "
                f"{format_params(best.params)})"
            )
        return line

    def as_dict(self) -> dict[str, Any]:
        """The sweep as JSON (the web page's)."""
        best = self.best()
        started = self.started or {}
        return {
            "id": self.sweep_id,
            "objective": self.objective.to_dict() | {"key": self.objective.key},
            "params": started.get("params") or {},
            "sampler": started.get("sampler"),
            "total": self.total,
            "started_at": started.get("started_at"),
            "finished": self.finished,
            "counts": self.counts(),
            "best": None if best is None else {"trial": best.trial, "run_id": best.run_id},
            "trials": [t.as_dict(self.objective) for _, t in sorted(self.trials.items())],
        }


def format_params(params: Mapping[str, Any]) -> str:
    """key=value pairs, as people write overrides: optim.lr=0.003 model.hidden=[64]."""
    import json

    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return value if isinstance(value, str) else json.dumps(value)

    return " ".join(f"{key}={text(value)}" for key, value in params.items())
