"""early-stop: a voter applying EarlyStopping's patience rule to a metric of a split's METRICS."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from bus import Envelope
from bus.messages import EPOCH_COMPLETED, METRICS, PRIMARY_SPLIT, RUN_STARTED
from trainer.config_schema import EarlyStoppingSection
from trainer.patience import Patience
from workers.base import Worker
from workers.context import RunContext
from workers.figures import EpochFigures, FiguresWait, awaits_metrics, epoch_figures

SECTION = "early_stopping"  # the run's config section the settings default to
KEYS = ("patience", "metric", "split", "mode", "min_delta", "cumulative_delta")
# Used when neither an option nor the run's config sets a key: the config schema's defaults
# (patience None: early stopping is off).
DEFAULTS: dict[str, Any] = {key: getattr(EarlyStoppingSection(), key) for key in KEYS}
OFF = "early stopping is off"


@dataclass(frozen=True)
class Settings:
    """The rule's settings for one run, each from an option, the run's config or the default."""

    patience: int | None
    metric: str
    split: str
    mode: str
    min_delta: float
    cumulative_delta: bool


def _problem(key: str, value: Any) -> str | None:
    """Why `value` cannot be setting `key`, or None if it can."""
    if key == "patience":
        ok = value is None or (type(value) is int and value >= 1)
        return None if ok else "is not a positive int (or null to switch early stopping off)"
    if key in ("metric", "split"):
        return None if isinstance(value, str) and value else "is not a non-empty string"
    if key == "mode":
        return None if value in ("max", "min") else "is not 'max' or 'min'"
    if key == "min_delta":
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and math.isfinite(value) and value >= 0
        return None if ok else "is not a finite number >= 0"
    if key == "cumulative_delta":
        return None if isinstance(value, bool) else "is not true or false"
    raise KeyError(key)


def _option_flag(key: str) -> str:
    return "--" + key.replace("_", "-")


class EarlyStopWorker(Worker):
    """Vote stop once a split's metric has not improved for `patience` epochs (EarlyStopping).

    Votes on each epoch's figures of its split (`workers.figures`: in a one-rank run the
    trainer's own EPOCH_COMPLETED metrics, else the metrics worker's METRICS), once per epoch,
    with `trainer.patience.Patience` (the in-process EarlyStopping's rule), so that under barrier
    mode the run stops at the epoch where EarlyStopping with the same settings would. Settings
    not given as options come from the run's config section `early_stopping`. With patience
    unset everywhere it votes continue on each epoch of the primary split ("early stopping is
    off"): as a voter it must not hold a barrier.

    Back-filling a run that was resumed (a rank's RUN_STARTED again), it rewinds the rule to the
    epoch the run resumed at, as the in-process rule restored from the checkpoint does, and
    votes again on the epochs trained again.
    """

    kind: ClassVar[str] = "early-stop"
    votes: ClassVar[bool] = True
    handles: ClassVar[frozenset[str] | None] = frozenset({RUN_STARTED, METRICS, EPOCH_COMPLETED})
    # Entries per read: scoring an epoch takes microseconds, and most entries are passed over.
    consumer_batch: ClassVar[int] = 500

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add --metric, --split, --mode, --patience, --min-delta, --cumulative-delta."""
        parser.add_argument("--metric", help="metric name in the split's METRICS (accuracy)")
        parser.add_argument("--split", help="split whose METRICS are scored (val)")
        parser.add_argument("--mode", choices=("max", "min"), help="max: higher is better (max)")
        parser.add_argument(
            "--patience", type=int, help="epochs without improvement before stopping (off)"
        )
        parser.add_argument(
            "--min-delta", type=float, help="least change that counts as improvement (0)"
        )
        parser.add_argument(
            "--cumulative-delta",
            action=argparse.BooleanOptionalAction,
            help="measure improvement from the last improvement, not the last score (false)",
        )

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise ValueError naming an option value the patience rule cannot take."""
        for key in DEFAULTS:
            value = options.get(key)
            problem = None if value is None else _problem(key, value)
            if problem is not None:
                raise ValueError(f"early-stop {_option_flag(key)} {value!r} {problem}")

    def __init__(self, ctx: RunContext, options: Mapping[str, Any]) -> None:
        self.check_options(options)
        super().__init__(ctx, options)
        self._settings: Settings | None = None
        self._misconfigured: str | None = None
        self._rule: Patience | None = None
        self._voted: set[int] = set()  # epochs voted on since the run (re)started
        # The rule's state after each epoch scored, to rewind to when a resumed run trains an
        # epoch again.
        self._states: dict[int, dict[str, Any]] = {}
        self._starts: set[str] = set()  # sources whose RUN_STARTED was seen
        self._waits = FiguresWait(ctx)

    def settings(self) -> Settings:
        """The settings for this run (options, then the run's config, then defaults)."""
        if self._settings is None:
            values = {}
            for key, default in DEFAULTS.items():
                option = self.options.get(key)
                value = self.ctx.setting(option, f"{SECTION}.{key}", default)
                problem = _problem(key, value)
                if problem is not None:
                    where = (
                        _option_flag(key)
                        if option is not None
                        else f"{SECTION}.{key} in the run's config"
                    )
                    raise ValueError(
                        f"{key} {value!r} from {where} {problem}; fix it there or pass "
                        f"{_option_flag(key)} to the worker"
                    )
                values[key] = value
            values["min_delta"] = float(values["min_delta"])
            self._settings = Settings(**values)
            s = self._settings
            if s.patience is not None:
                self._rule = Patience(s.patience, s.min_delta, s.cumulative_delta, s.mode)
            self.ctx.log.info("settings", extra=vars(self._settings))
        return self._settings

    def _off_reason(self) -> str | None:
        """Why this voter only votes continue (off or misconfigured), or None when it scores."""
        if self._misconfigured is not None:
            return self._misconfigured
        try:
            settings = self.settings()
        except ValueError as exc:
            # The run goes on without early stopping rather than waiting on a voter that
            # cannot vote; the reason (in every vote and here) says what to fix.
            self._misconfigured = f"early stopping is misconfigured: {exc}"
            self.ctx.log.error("misconfigured", extra={"error": str(exc)})
            return self._misconfigured
        return OFF if settings.patience is None else None

    async def handle(self, env: Envelope) -> None:
        """Vote on each epoch's figures of the split (or, when off, on each primary epoch end)."""
        if env.type == RUN_STARTED:
            self._started(env)
            return
        if env.type not in (METRICS, EPOCH_COMPLETED):
            return
        off = self._off_reason()
        if off is not None:
            primary = env.type == EPOCH_COMPLETED and env.data.get("split") == PRIMARY_SPLIT
            if primary and env.epoch not in self._voted:
                await self.ctx.vote(False, off, env.epoch, env.iteration)
                self._voted.add(env.epoch)
            return
        settings = self.settings()
        if env.data.get("split") != settings.split:
            return  # another split's figures (or flaws) are not this voter's business
        figures = epoch_figures(env, self.ctx.world_size)
        if figures is None:
            if awaits_metrics(env, self.ctx.world_size) and env.epoch not in self._voted:
                # The trainer waits for this vote; the figures come from the metrics worker.
                self._waits.expect(settings.split, env.epoch, metric=settings.metric)
            return
        if figures.epoch in self._voted:
            return  # this epoch's figures again (METRICS after EPOCH_COMPLETED, a redelivery)
        self._waits.arrived(settings.split, figures.epoch)
        await self._vote_on(figures)

    def _started(self, env: Envelope) -> None:
        if env.source in self._starts or env.data.get("resumed_from") is not None:
            # The rank started again (a resume under the same run id; a voter that joined
            # `--from now` only sees that one): the epochs it trains again get votes again,
            # scored from where the rule was before each of them.
            self._voted.clear()
        self._starts.add(env.source)

    def _rewind(self, epoch: int) -> None:
        """Put the rule back where it was before `epoch`, if a later epoch was scored already."""
        rule = self._rule
        assert rule is not None
        # Epochs enter _states in increasing order (a rewind drops the later ones first), so
        # the last is the latest: the usual case, a new epoch, costs nothing per epoch scored.
        if not self._states or next(reversed(self._states)) < epoch:
            return
        before = [scored for scored in self._states if scored < epoch]
        if before:
            rule.load_state_dict(self._states[max(before)])
        else:
            rule.reset()
        for scored in [scored for scored in self._states if scored >= epoch]:
            del self._states[scored]

    async def _vote_on(self, figures: EpochFigures) -> None:
        settings = self.settings()
        epoch, values = figures.epoch, figures.values
        score = values.get(settings.metric)
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            reason = (
                f"epoch {self.ctx.epoch_label(epoch)}: {settings.split} metric "
                f"{settings.metric!r} is not in its figures (has "
                f"{', '.join(map(str, values)) or 'none'}): set --metric or "
                f"{SECTION}.metric to one of them"
            )
            self.ctx.log.warning(
                "metric missing", extra={"epoch": self.ctx.epoch_label(epoch), "detail": reason}
            )
            await self.ctx.vote(False, reason, epoch, figures.iteration)
            self._voted.add(epoch)
            return
        await self._score(float(score), epoch, figures.iteration)

    async def _score(self, score: float, epoch: int, iteration: int) -> None:
        rule, settings = self._rule, self.settings()
        assert rule is not None
        self._rewind(epoch)
        before = rule.state_dict()
        stop = rule.step(score)
        reason = (
            f"epoch {self.ctx.epoch_label(epoch)}, {settings.split} {settings.metric} "
            f"{score:.6g}: best {_fmt(rule.best_score)}, "
            f"{rule.counter} of {rule.patience} evaluations without improvement"
        )
        try:
            await self.ctx.vote(stop, reason, epoch, iteration)
        except BaseException:
            rule.load_state_dict(before)  # the retry must score this epoch once, not twice
            raise
        self._states[epoch] = rule.state_dict()
        self._voted.add(epoch)


def _fmt(value: float | None) -> str:
    return "none yet" if value is None else f"{value:.6g}"
