"""The suggestions of a sweep: Optuna's samplers through its ask-and-tell interface.

Optuna is the `sweep` extra (`pip install -e ".[sweep]"`) and is imported only here. The study
lives in the coordinator's memory: it only suggests values (`ask`) and learns each trial's
outcome (`tell`); pruning is the pruner worker's business on the bus, never Optuna's.

- grid: GridSampler over every point of the choice(...) and int(lo, hi) values, in its order;
- random: RandomSampler, seeded with --seed;
- tpe: TPESampler (Optuna's default), seeded with --seed, learning from the finished trials
  (pruned ones count as pruned, with their curve as intermediate values).

Values Optuna cannot hold as a category (lists, maps) are given to it as their JSON text and
turned back here, so a trial gets `model.hidden=[64]` as a list.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from trainer.sweep_spec import Choice, IntRange, Param, SweepPlan, Uniform
from workers.errors import WorkerError

INSTALL = 'pip install -e ".[sweep]"'


class SamplerUnavailable(WorkerError, ImportError):
    """Optuna is not installed: the message says how to install it."""


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise SamplerUnavailable(
            f"trainer sweep draws its trials with Optuna, which is not installed: {INSTALL} "
            "(the sweep extra)"
        ) from None
    optuna.logging.set_verbosity(logging.WARNING)
    return optuna


def _category(value: Any) -> Any:
    """`value` as an Optuna category (None, bool, int, float, str), lists as JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


class Suggester:
    """Asks Optuna for each trial's values and tells it how each trial went."""

    def __init__(self, plan: SweepPlan) -> None:
        optuna = _optuna()
        self.plan = plan
        self._optuna = optuna
        distributions = optuna.distributions
        self.distributions: dict[str, Any] = {}
        self._back: dict[str, dict[Any, Any]] = {}  # key -> category -> value
        grid: dict[str, list[Any]] = {}
        for key, param in plan.params.items():
            self.distributions[key] = self._distribution(distributions, key, param, plan.sampler)
            if plan.sampler == "grid":
                grid[key] = list(self.distributions[key].choices)
        samplers = optuna.samplers
        if plan.sampler == "grid":
            sampler = samplers.GridSampler(grid, seed=plan.seed)
        elif plan.sampler == "random":
            sampler = samplers.RandomSampler(seed=plan.seed)
        else:
            sampler = samplers.TPESampler(seed=plan.seed)
        direction = "maximize" if plan.objective.mode == "max" else "minimize"
        self.study = optuna.create_study(direction=direction, sampler=sampler)
        self._asked: dict[int, Any] = {}

    def _distribution(self, distributions: Any, key: str, param: Param, sampler: str) -> Any:
        if isinstance(param, Choice) or (sampler == "grid" and isinstance(param, IntRange)):
            values = param.grid() or []
            self._back[key] = {_category(v): v for v in values}
            return distributions.CategoricalDistribution(list(self._back[key]))
        if isinstance(param, IntRange):
            return distributions.IntDistribution(param.lo, param.hi)
        assert isinstance(param, Uniform)
        return distributions.FloatDistribution(param.lo, param.hi, log=param.log)

    def ask(self) -> tuple[int, dict[str, Any]]:
        """The next trial: its number (0, 1, ...) and its values, key by key."""
        trial = self.study.ask(self.distributions)
        self._asked[trial.number] = trial
        values = {}
        for key, value in trial.params.items():
            back = self._back.get(key)
            values[key] = back[value] if back is not None else value
        return trial.number, {key: values[key] for key in self.plan.params}

    def tell(
        self, number: int, status: str, curve: Mapping[int, float], best: float | None
    ) -> None:
        """Tell Optuna how trial `number` went: its best value, or that it was pruned or failed."""
        trial = self._asked.pop(number, None)
        if trial is None:
            return  # told already (a trial's end seen twice), or asked by another coordinator
        states = self._optuna.trial.TrialState
        for step, value in sorted(curve.items()):
            trial.report(value, step)
        try:
            if status == "pruned":
                self.study.tell(trial, state=states.PRUNED)
            elif best is None or status == "failed":
                self.study.tell(trial, state=states.FAIL)
            else:
                self.study.tell(trial, best)
        except RuntimeError as exc:
            # GridSampler asks the study to stop once every point has been told, which Optuna
            # allows only inside its own optimize loop; the sweep ends by itself then anyway.
            if "Study.stop" not in str(exc):
                raise
