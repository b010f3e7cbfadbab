"""pruner: a voter on every trial of one sweep, stopping the trials a pruning rule prunes.

`trainer worker pruner --bus URL --sweep ID --rule asha|median|hyperband [--metric NAME
--split val --mode max] [--min-resource R] [--reduction-factor F] [--max-resource M]
[--min-trials K] [--follow-from start|now]`; `--follow` is implied (the kind picks the runs
whose RUN_STARTED carries `data.sweep.id` == ID). Built from a settings mapping with the same
names (`sweep`, `rule`, `metric`, `split`, `mode`, `min_resource`, `reduction_factor`,
`max_resource`, `min_trials`, `follow_from`) by `workers.runtime.run_worker`, as every kind is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

from bus import Envelope
from bus.messages import EPOCH_COMPLETED, METRICS, RUN_STARTED
from workers.base import Setting, Worker
from workers.context import RunContext
from workers.figures import FiguresWait, awaits_metrics, epoch_figures
from workers.logs import worker_log
from workers.pruning import RULE_OPTIONS, RULES, SweepHistory, make_rule
from workers.pruning.asha import DEFAULT_MIN_RESOURCE, DEFAULT_REDUCTION_FACTOR
from workers.pruning.median import DEFAULT_MIN_TRIALS
from workers.sweep_trials import SweepTrials, known_sweeps, sweep_of, sweeps_on_registry

if TYPE_CHECKING:
    from bus import Bus, Topics
    from workers.runtime import RuntimeOptions

# The key of the process-wide SweepTrials in RunContext.shared.
SHARED_KEY = "pruner.sweep"
# The options only some rules take (RULE_OPTIONS says which).
RULE_KNOBS = ("min_resource", "reduction_factor", "max_resource", "min_trials")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class PrunerWorker(Worker):
    """Vote stop on the trials of `--sweep` that a pruning rule prunes (docs/sweeps.md).

    Follows every trial of the sweep (the registry's RUN_STARTED with `data.sweep.id`), joins
    each as a voter and votes once per epoch on its figures of `--split` (METRICS, or a one-rank
    run's own EPOCH_COMPLETED): stop when the rule prunes it at that epoch, with the rule's
    reason, else continue. The rule sees every trial's values, running and finished, in bus
    order (`workers.sweep_trials`), so a pruner started late or restarted decides as one that
    watched from the start.
    """

    kind: ClassVar[str] = "pruner"
    votes: ClassVar[bool] = True
    handles: ClassVar[frozenset[str] | None] = frozenset({RUN_STARTED, METRICS, EPOCH_COMPLETED})
    # Reads at once, in or out of barrier mode: a pruned trial trains on until the vote lands,
    # and what that costs is the whole point of pruning (the READ_LINGER default put 0.2 s,
    # two or three digits epochs, between a trial's figures and its stop).
    read_linger: ClassVar[float | None] = 0.0
    SETTINGS: ClassVar[tuple[Setting, ...]] = (
        Setting("sweep", str, help="the sweep to prune: the id `trainer sweep` printed; required"),
        Setting(
            "rule",
            str,
            default="asha",
            choices=tuple(RULES),
            help="asha, median or hyperband (docs/sweeps.md)",
        ),
        Setting("metric", str, default="accuracy", help="the metric of the split's figures"),
        Setting("split", str, default="val", help="the split whose figures are judged"),
        Setting(
            "mode",
            str,
            default="max",
            choices=("max", "min"),
            help="max: higher is better; min: lower is better",
        ),
        Setting(
            "min_resource",
            int,
            default=DEFAULT_MIN_RESOURCE,
            ge=1,
            help="asha, hyperband: the epoch of the first rung; median: the first epoch judged",
        ),
        Setting(
            "reduction_factor",
            int,
            default=DEFAULT_REDUCTION_FACTOR,
            ge=2,
            help="asha, hyperband: the top 1/F of a rung go on, rungs at epochs R*F**k",
        ),
        Setting(
            "max_resource",
            int,
            ge=1,
            help="asha, hyperband: rungs only below this epoch; left out: each trial's "
            "train.epochs (hyperband: the first trial's)",
        ),
        Setting(
            "min_trials",
            int,
            default=DEFAULT_MIN_TRIALS,
            ge=1,
            help="median: the other trials' values an epoch needs before it is judged",
        ),
        Setting(
            "follow_from",
            str,
            default="start",
            choices=("start", "now"),
            help="start: every trial's whole history counts; now: only what comes from now on",
        ),
    )

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise ValueError (one line) for options no pruner can run with, before connecting."""
        super().check_options(options)
        if not options.get("sweep"):
            raise ValueError(
                "pruner needs --sweep ID: the id `trainer sweep` printed for the sweep to prune"
            )
        rule = options.get("rule") or "asha"
        foreign = [
            k for k in RULE_KNOBS if options.get(k) is not None and k not in RULE_OPTIONS[rule]
        ]
        if foreign:
            takes = ", ".join(_flag(k) for k in RULE_OPTIONS[rule])
            raise ValueError(
                f"pruner --rule {rule} takes no {', '.join(map(_flag, foreign))} "
                f"(its options: {takes})"
            )
        low, high = options.get("min_resource") or 1, options.get("max_resource")
        if high is not None and high <= low:
            raise ValueError(
                f"pruner --max-resource {high} leaves no rung below it (the first is at epoch "
                f"{low}): give a value above --min-resource, or leave it out"
            )

    @classmethod
    def runtime_options(
        cls, options: RuntimeOptions, kind_options: Mapping[str, Any]
    ) -> RuntimeOptions:
        """Follow every run (the sweep's trials are picked by `wants`), from --follow-from."""
        if options.run_id is not None:
            raise ValueError(
                f"pruner --run {options.run_id}: the pruner follows every trial of its --sweep; "
                "leave --run out"
            )
        if options.start != "start" and not kind_options.get("follow_from"):
            raise ValueError(
                f"pruner --from {options.start}: the pruner's history is the whole sweep's; "
                f"say --follow-from {options.start}"
            )
        return replace(options, follow=True, start=kind_options.get("follow_from") or "start")

    @classmethod
    def wants(cls, started: Envelope | None, kind_options: Mapping[str, Any]) -> bool:
        """Only the trials of the sweep: RUN_STARTED `data.sweep.id` equal to --sweep."""
        found = None if started is None else sweep_of(started)
        return found is not None and found[0] == kind_options.get("sweep")

    @classmethod
    async def preflight(cls, bus: Bus, topics: Topics, kind_options: Mapping[str, Any]) -> None:
        """Refuse a sweep id that neither the registry of sweeps nor any trial on the bus knows."""
        sweep = kind_options.get("sweep")
        started = await known_sweeps(bus, topics)  # a pruner may start before the first trial
        sweeps = await sweeps_on_registry(bus, topics)
        if sweep in sweeps or sweep in started:
            return
        known = ", ".join(sorted({*sweeps, *started})[:10]) or "none yet"
        raise ValueError(
            f"pruner --sweep {sweep!r}: no sweep of that id on {topics.sweeps()!r} and no trial "
            f"of it on the registry {topics.registry()!r}; give the id `trainer sweep` printed "
            f"(sweeps there: {known})"
        )

    def __init__(self, ctx: RunContext, options: Mapping[str, Any]) -> None:
        self.check_options(options)
        super().__init__(ctx, options)
        self.sweep_id: str = self.setting("sweep")
        self.split: str = self.setting("split")
        self.metric: str = self.setting("metric")
        self._waits = FiguresWait(ctx)
        self._starts: set[str] = set()  # sources whose RUN_STARTED was seen

    def trials(self) -> SweepTrials:
        """The sweep as this process reads it: one for every trial this process follows."""
        shared = self.ctx.shared.get(SHARED_KEY)
        if shared is None:
            rule = make_rule(
                self.setting("rule"),
                sweep=self.sweep_id,
                metric=self.metric,
                mode=self.setting("mode"),
                **{k: self.options.get(k) for k in RULE_KNOBS},
            )
            log = worker_log(
                "workers.pruner", worker=self.ctx.name, kind=self.kind, sweep=self.sweep_id
            )
            shared = SweepTrials(
                self.ctx.bus,
                self.ctx.topics,
                self.sweep_id,
                split=self.split,
                metric=self.metric,
                history=SweepHistory(rule),
                start=self.setting("follow_from"),
                log=log,
            )
            log.info("rule", extra={"rule": rule.describe()})
            self.ctx.shared[SHARED_KEY] = shared
        return shared

    async def handle(self, env: Envelope) -> None:
        """Vote once per epoch on the trial's figures of the split: the rule's stop or continue."""
        if env.type == RUN_STARTED:
            if env.source in self._starts or env.data.get("resumed_from") is not None:
                self._votes().restart()  # a resume: the epochs trained again get votes again
            self._starts.add(env.source)
            return
        if env.type not in (METRICS, EPOCH_COMPLETED) or env.data.get("split") != self.split:
            return
        votes = self._votes()
        figures = epoch_figures(env, self.ctx.world_size)
        if figures is None:
            if awaits_metrics(env, self.ctx.world_size) and not votes.has_voted(env.epoch):
                self._waits.expect(self.split, env.epoch, metric=self.metric)
            return
        epoch = figures.epoch
        if votes.has_voted(epoch):
            return  # its figures again (METRICS after EPOCH_COMPLETED, a redelivery)
        self._waits.arrived(self.split, epoch)
        value = figures.values.get(self.metric)
        label = self.ctx.epoch_label(epoch)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            reason = (
                f"epoch {label}: the {self.split} figures have no {self.metric!r} (they have "
                f"{', '.join(map(str, figures.values))}): give the pruner --metric one of them"
            )
            await votes.epoch_end(epoch, reason, figures.iteration)
            return
        decision = await self.trials().decide(self.ctx.run_id, env, epoch)
        if decision is None:
            reason = (
                f"epoch {label}: not judged (these figures were written before the pruner "
                f"started with --follow-from now, or are not the epoch's first)"
            )
            await votes.epoch_end(epoch, reason, figures.iteration)
        elif decision.stop and votes.stopped is None:
            await votes.stop(decision.reason, epoch, figures.iteration)
        else:
            await votes.epoch_end(epoch, decision.reason, figures.iteration)
