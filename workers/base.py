"""Worker: the logic of one worker kind, as the runtime drives it for one run.

A kind writes only what is its own: `kind` (its name on the bus), `SETTINGS` (its options, each
read from the command line, else the run's config, else a default), `votes`, and `handle`. The
runtime does the rest: registration (WORKER_JOINED/WORKER_LEFT), heartbeats, consumer groups,
retries and dead letters.
"""

from __future__ import annotations

import abc
import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from bus.messages import EPOCH_COMPLETED, PRIMARY_SPLIT
from workers.context import config_value
from workers.epoch_votes import EpochVotes

if TYPE_CHECKING:
    from bus import Bus, Envelope, Topics
    from workers.context import RunContext
    from workers.runtime import RuntimeOptions

_UNSET = object()


@dataclass(frozen=True)
class Setting:
    """One option of a kind: `--name` on the command line, else a key of the run's config,
    else `default`. `type` is int, float or str; `gt`/`ge`/`choices` bound the value."""

    name: str  # the Python name, e.g. "limit_mb": option --limit-mb
    type: Callable[[str], Any] = str
    default: Any = None
    help: str = ""
    config: str | None = None  # dotted key, e.g. "extra.memory_guard.limit_mb"
    gt: float | None = None
    ge: float | None = None
    choices: Sequence[Any] | None = None

    def __post_init__(self) -> None:
        if self.type not in (int, float, str):
            raise TypeError(f"Setting {self.name!r}: type {self.type!r} is not int, float or str")

    @property
    def flag(self) -> str:
        """The command-line option, e.g. "--limit-mb"."""
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """The option's help line: what it is, where else it is read from, its default."""
        parts = [self.help] if self.help else []
        if self.config is not None:
            parts.append(f"config {self.config}")
        parts.append(f"default {self.default}" if self.default is not None else "default: off")
        return "; ".join(parts)

    def problem(self, value: Any) -> str | None:
        """Why `value` cannot be this setting's value ("is not a number > 0"), or None."""
        if self.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            what = "a number"
        elif self.type is int:
            ok, what = type(value) is int, "an int"
        else:
            ok, what = isinstance(value, str) and bool(value), "a non-empty string"
        bounds = [f"> {self.gt:g}"] if self.gt is not None else []
        bounds += [f">= {self.ge:g}"] if self.ge is not None else []
        if ok and self.gt is not None and not value > self.gt:
            ok = False
        if ok and self.ge is not None and not value >= self.ge:
            ok = False
        if ok and self.choices is not None and value not in self.choices:
            return f"is not one of {', '.join(map(repr, self.choices))}"
        return None if ok else f"is not {' '.join([what, *bounds])}"


class WorkerStopping(Exception):
    """Raised by a kind that gave up waiting inside `handle` because the worker stops.

    The delivery is not acked: it stays pending for a replica (or this worker's next start) to
    handle whole. `RunContext.stopping` tells a kind when to raise it.
    """


class Worker(abc.ABC):
    """One worker kind's logic for ONE run; the runtime makes one instance per followed run.

    `handle` gets every envelope of the run's events topic in stream order, through the consumer
    group of the kind (replicas share the deliveries; a voter's group is its own, see
    `workers.runtime.consumer_group`). Raise `bus.Rejected` for an envelope that can never be
    handled (it is dead-lettered at once); any other exception makes the delivery retried later.
    A kind that waits inside `handle` also waits for `ctx.stopping` and raises WorkerStopping.
    """

    # The kind's name on the bus: WORKER_JOINED `kind`, its consumer group, its workers' names.
    kind: ClassVar[str]
    # Voters register with WORKER_JOINED votes=True and must vote on EVERY epoch: in barrier
    # mode the trainer waits for each live voter's vote on each epoch (see `vote_epoch`).
    votes: ClassVar[bool] = False
    # The kind's options; `add_arguments`, `check_options` and `setting` are made from them.
    SETTINGS: ClassVar[Sequence[Setting]] = ()
    # The envelope types `handle` acts on (None: every type). The runtime acks the others
    # without decoding them or waking the kind; RUN_STARTED reaches every kind regardless.
    handles: ClassVar[frozenset[str] | None] = None
    # Seconds the runtime lets a run's events gather after a read that found fewer than a
    # batch, before it reads again (None: workers.follow.READ_LINGER): how often the kind wakes
    # while a run streams events, and so how late it may see one (see `serves_barrier`).
    read_linger: ClassVar[float | None] = None

    @classmethod
    def runtime_options(
        cls, options: RuntimeOptions, kind_options: Mapping[str, Any]
    ) -> RuntimeOptions:
        """How the runtime runs this kind, given its options (default: as asked).

        A kind that picks its runs itself (the pruner: every trial of one sweep) returns the
        options with `follow` set, so that `--run`/`--follow` need not be given. ValueError
        (one line) names options it cannot run with.
        """
        return options

    @classmethod
    def wants(cls, started: Envelope | None, kind_options: Mapping[str, Any]) -> bool:
        """Whether a `--follow` worker of this kind takes part in the run `started` announces.

        Every run by default; `started` is the run's RUN_STARTED from the registry (None when
        the registry has none).
        """
        return True

    @classmethod
    async def preflight(cls, bus: Bus, topics: Topics, kind_options: Mapping[str, Any]) -> None:
        """Raise ValueError (one line) when the bus shows the options cannot work, e.g. a sweep
        nobody started; the command line calls it before the worker joins anything."""
        return None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the kind's options to `parser`; every default is None (= take it from the config)."""
        for setting in cls.SETTINGS:
            parser.add_argument(
                setting.flag,
                dest=setting.name,
                type=setting.type,
                metavar=setting.name.upper(),
                help=setting.describe(),
            )

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise ValueError naming a kind option that can never work, before anything connects."""
        for setting in cls.SETTINGS:
            value = options.get(setting.name)
            problem = None if value is None else setting.problem(value)
            if problem is not None:
                raise ValueError(f"{cls.kind} {setting.flag} {value!r} {problem}")

    def __init__(self, ctx: RunContext, options: Mapping[str, Any]) -> None:
        self.ctx = ctx
        self.options = dict(options)
        self._epoch_votes: EpochVotes | None = None

    def setting(self, name: str) -> Any:
        """Setting `name`'s value: the option given, else the run's config key, else its default.

        ValueError names a config value that cannot be the setting's (a null in the config
        means "off", as the default None does).
        """
        setting = next((s for s in self.SETTINGS if s.name == name), None)
        if setting is None:
            known = ", ".join(s.name for s in self.SETTINGS) or "none"
            raise KeyError(f"{self.kind} has no setting {name!r} (its settings: {known})")
        value = self.options.get(name)
        if value is not None:
            return value
        if setting.config is None:
            return setting.default
        value = config_value(self.ctx.config, setting.config, _UNSET)
        if value is _UNSET:
            return setting.default
        problem = None if value is None else setting.problem(value)
        if problem is not None:
            raise ValueError(
                f"{self.kind}: the run's config {setting.config} {value!r} {problem}; "
                f"fix the config or pass {setting.flag}"
            )
        return value

    # -- voting: helpers for a kind with votes = True -------------------------------------

    def _votes(self) -> EpochVotes:
        if not type(self).votes:
            raise TypeError(f"{self.kind} votes: set the class attribute votes = True")
        if self._epoch_votes is None:
            self._epoch_votes = EpochVotes(self.ctx)
        return self._epoch_votes

    @property
    def stopped(self) -> str | None:
        """The reason of this worker's stop vote once it voted stop (it then stands), else None."""
        return None if self._epoch_votes is None else self._epoch_votes.stopped

    async def vote_stop(self, reason: str, env: Envelope) -> None:
        """Vote stop now, on `env`'s epoch; once: the stop then stands for every later epoch."""
        await self._votes().stop(reason, env.epoch, env.iteration)

    async def vote_epoch(self, env: Envelope, reason: str, split: str = PRIMARY_SPLIT) -> None:
        """At `split`'s EPOCH_COMPLETED: vote continue with `reason`, or the standing stop.

        Once per epoch; any other envelope is ignored, so a voter calls it on every envelope.
        """
        if env.type == EPOCH_COMPLETED and env.data.get("split") == split:
            await self._votes().epoch_end(env.epoch, reason, env.iteration)

    def handled_types(self) -> frozenset[str] | None:
        """The envelope types this instance acts on (`handles`, unless its options say more)."""
        return self.handles

    def serves_barrier(self) -> bool:
        """Whether a trainer in barrier mode waits for what this kind sends (a voter's votes).

        Such a kind reads without lingering where the wait would hold every epoch's barrier:
        in a run whose config sets `bus.barrier`, and on a bus that passes over the types it
        ignores itself (the in-memory bus), where reading at once costs nothing extra.
        """
        return type(self).votes

    async def flush(self) -> None:
        """Finish what `handle` kept back, e.g. rows to write in one go (default: nothing).

        The runtime awaits it after each batch of deliveries and before acking them, so what
        a kind keeps back is never acked unwritten: if it raises, the batch's deliveries stay
        pending and are delivered again (see `bus.Consumer`, `after_batch`).
        """
        return None

    @abc.abstractmethod
    async def handle(self, env: Envelope) -> None:
        """Handle one envelope of the run's events topic."""

    async def close(self) -> None:
        """Release what the kind holds: the run finished (and was drained) or the worker stops."""
        return None  # side tasks (ctx.spawn) are cancelled by the runtime
