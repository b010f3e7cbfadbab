"""A sweep's trials in the tracking store: which runs they are, their curves, and the PNG.

A trial's run.json carries `sweep` (id, trial, params, objective), as the tracking worker
records it from RUN_STARTED; its metrics rows give its curve of the objective (`val/accuracy`
by default) per epoch. A trial stopped by a pruner's vote counts as pruned
(`trainer.sweep_spec.pruned_at`, the same rule as on the bus).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.sweep_rules import SweepGoal, pruned_at
from trainer.tracking.plot import DPI, PANEL_WIDTH_PX, save_figure
from trainer.tracking.reader import RunRecord, epochs_completed, read_run, run_dirs


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the tracking store has it."""

    trial: int
    record: RunRecord
    params: dict[str, Any]
    objective: SweepGoal
    curve: list[tuple[int, float]]  # (epoch from 1, value), in epoch order

    @property
    def status(self) -> str:
        """completed, pruned, terminated, failed or running."""
        status = str(self.record.meta.get("status") or "unknown")
        return "pruned" if status == "terminated" and self.rung is not None else status

    @property
    def rung(self) -> tuple[int, int] | None:
        """(rung, epoch) at which a pruner stopped it, if one did."""
        return pruned_at(self.record.meta.get("reason"))

    @property
    def best(self) -> float | None:
        """Its best value of the objective."""
        best: float | None = None
        for _, value in self.curve:
            if self.objective.better(value, best):
                best = value
        return best

    @property
    def epochs(self) -> int | None:
        """Epochs it trained."""
        r = self.record
        return epochs_completed(r.dir, r.meta, r.summary)


def _objective(sweep: Mapping[str, Any]) -> SweepGoal:
    given = sweep.get("objective")
    if not isinstance(given, Mapping):
        return SweepGoal()
    default = SweepGoal()
    return SweepGoal(
        str(given.get("metric", default.metric)),
        str(given.get("split", default.split)),
        str(given.get("mode", default.mode)),
    )


def sweep_records(root: str | os.PathLike[str], sweep_id: str) -> list[TrialRecord]:
    """The trials of sweep `sweep_id` under the runs directory `root`, by trial number."""
    found = []
    for run_dir in run_dirs(root):
        try:
            record = read_run(run_dir)
        except (OSError, ValueError):
            continue
        sweep = record.meta.get("sweep")
        if not isinstance(sweep, Mapping) or sweep.get("id") != sweep_id:
            continue
        objective = _objective(sweep)
        curve = {}
        for row in record.rows:
            value, epoch = row.get(objective.key), row.get("epoch")
            if isinstance(value, (int, float)) and isinstance(epoch, int):
                curve[epoch] = float(value)
        found.append(
            TrialRecord(
                trial=int(sweep.get("trial", -1)),
                record=record,
                params=dict(sweep.get("params") or {}),
                objective=objective,
                curve=sorted(curve.items()),
            )
        )
    return sorted(found, key=lambda t: t.trial)


def sweep_ids(root: str | os.PathLike[str]) -> list[str]:
    """Every sweep id the runs under `root` belong to."""
    ids: dict[str, None] = {}
    for run_dir in run_dirs(root):
        try:
            sweep = read_run(run_dir).meta.get("sweep")
        except (OSError, ValueError):
            continue
        if isinstance(sweep, Mapping) and isinstance(sweep.get("id"), str):
            ids.setdefault(sweep["id"], None)
    return list(ids)


def best_trial(trials: Sequence[TrialRecord]) -> TrialRecord | None:
    """The trial with the best value of the objective (ties: the lower trial number)."""
    best: TrialRecord | None = None
    for trial in trials:
        value = trial.best
        if value is not None and (best is None or trial.objective.better(value, best.best)):
            best = trial
    return best


def plot_sweep(trials: Sequence[TrialRecord], path: str | os.PathLike[str]) -> Path:
    """A PNG of every trial's curve of the objective per epoch: pruned trials dashed with an x
    where they stopped, the best trial drawn thick and named."""
    from matplotlib.figure import Figure

    if not trials:
        raise ValueError("no trials to plot")
    objective = trials[0].objective
    best = best_trial(trials)
    figure = Figure(figsize=(PANEL_WIDTH_PX / DPI, 450 / DPI), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    pruned = 0
    for index, trial in enumerate(trials):
        points = [(x, v) for x, v in trial.curve if math.isfinite(v)]
        if not points:
            continue
        xs, ys = [x for x, _ in points], [v for _, v in points]
        is_best = trial is best
        is_pruned = trial.status == "pruned"
        pruned += is_pruned
        color = "black" if is_best else f"C{index % 10}"
        ax.plot(
            xs,
            ys,
            color=color,
            linestyle="--" if is_pruned else "-",
            linewidth=2.5 if is_best else 1.0,
            alpha=1.0 if is_best else 0.55 if is_pruned else 0.85,
            label=f"best: trial {trial.trial}" if is_best else None,
        )
        if is_pruned:
            ax.plot(xs[-1:], ys[-1:], marker="x", color=color, markersize=7, linestyle="none")
    ax.plot([], [], color="grey", linestyle="-", label="ran to the end")
    ax.plot([], [], color="grey", linestyle="--", marker="x", label="pruned (x: where it stopped)")
    sweep = trials[0].record.meta.get("sweep") or {}
    ax.set_title(
        f"sweep {sweep.get('id', '')}: {objective.key} per epoch, {len(trials)} trials, "
        f"{pruned} pruned",
        fontsize="medium",
    )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(objective.key)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return save_figure(figure, path)
