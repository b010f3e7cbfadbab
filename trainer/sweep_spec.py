"""A sweep's plan: its search space (`--param KEY=SPEC`, the `sweep:` section), budget and goal,
checked against the trainer's config schema before anything starts.

SPEC, the values one key of the config takes across the trials:

    choice(a, b, ...)    one of the values, each read as YAML: 0.1, adam, true, [64, 32]
    uniform(lo, hi)      a float drawn uniformly from [lo, hi]
    loguniform(lo, hi)   a float drawn log-uniformly from [lo, hi], with 0 < lo
    int(lo, hi)          an integer from lo to hi, both included

Under `sweep.params` a YAML list means choice(...) of its items. Every key must be a key of the
trainer's config (the nearest one is named when it is not) and every value one it accepts
(`choice`'s items, and a range's bounds, are checked as overrides of the base config), so a bad
sweep is refused in one line before any trial runs. Torch-free, and Optuna-free: the sampler
that draws from these distributions lives with the sweep's coordinator.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import yaml

from trainer.config import Config, ConfigError, from_dict
from trainer.config_schema import TrainerConfig
from trainer.sweep_rules import SweepGoal, pruned_at

__all__ = ["SweepGoal", "pruned_at"]  # re-exported: a sweep's goal and the pruned rule

# The samplers `trainer sweep --sampler` offers (Optuna's GridSampler, RandomSampler, TPESampler).
SAMPLERS = ("grid", "random", "tpe")
# A grid bigger than this is refused: nobody means to run that many trials.
MAX_GRID = 100_000
_SPEC = re.compile(r"\s*(choice|uniform|loguniform|int)\s*\((.*)\)\s*", re.DOTALL)
_FORMS = "choice(a, b, ...), uniform(lo, hi), loguniform(lo, hi) or int(lo, hi)"
# Keys a trial cannot take from the sweep: the sweep's own section.
_NOT_SWEPT = ("sweep",)


class SweepSpecError(ConfigError):
    """A sweep that cannot run: a malformed SPEC, an unknown key, a value the config refuses."""


@dataclass(frozen=True)
class Choice:
    """One of `values` (any YAML values: numbers, strings, booleans, lists)."""

    values: tuple[Any, ...]

    @property
    def text(self) -> str:
        """The SPEC, written back: choice(0.1, 0.01)."""
        return f"choice({', '.join(_yaml_text(v) for v in self.values)})"

    def bounds(self) -> list[Any]:
        """The values to check against the config."""
        return list(self.values)

    def grid(self) -> list[Any] | None:
        """Every value, in order."""
        return list(self.values)


@dataclass(frozen=True)
class Uniform:
    """A float from [lo, hi], drawn uniformly, or log-uniformly with `log`."""

    lo: float
    hi: float
    log: bool = False

    @property
    def text(self) -> str:
        """The SPEC, written back: loguniform(0.0001, 0.1)."""
        return f"{'loguniform' if self.log else 'uniform'}({self.lo:g}, {self.hi:g})"

    def bounds(self) -> list[Any]:
        """The values to check against the config."""
        return [self.lo, self.hi]

    def grid(self) -> list[Any] | None:
        """None: a continuous range has no grid."""
        return None


@dataclass(frozen=True)
class IntRange:
    """An integer from lo to hi, both included."""

    lo: int
    hi: int

    @property
    def text(self) -> str:
        """The SPEC, written back: int(16, 256)."""
        return f"int({self.lo}, {self.hi})"

    def bounds(self) -> list[Any]:
        """The values to check against the config."""
        return [self.lo, self.hi]

    def grid(self) -> list[Any] | None:
        """Every integer from lo to hi."""
        return list(range(self.lo, self.hi + 1))


Param = Choice | Uniform | IntRange


@dataclass(frozen=True)
class SweepPlan:
    """A checked sweep: what varies, how many trials, how many at once, how they are chosen."""

    params: dict[str, Param]
    trials: int
    parallel: int
    sampler: str
    seed: int | None
    objective: SweepGoal
    nproc: int = 1
    reclaim_after: float = 60.0
    pruner: dict[str, Any] = field(default_factory=dict)

    def params_text(self) -> dict[str, str]:
        """Each key's SPEC, as SWEEP_STARTED carries it."""
        return {key: param.text for key, param in self.params.items()}


def parse_spec(text: str, where: str) -> Param:
    """The distribution a SPEC describes; SweepSpecError names `where` it came from, and the
    forms."""
    found = _SPEC.fullmatch(text) if isinstance(text, str) else None
    if found is None:
        raise SweepSpecError(f"{where}: SPEC {text!r} is not one of {_FORMS}")
    form, inner = found.group(1), found.group(2)
    try:
        args = [_value(item) for item in _split_args(inner)]
    except (yaml.YAMLError, ValueError) as exc:
        problem = str(exc).splitlines()[0]
        raise SweepSpecError(
            f"{where}: SPEC {text!r}: cannot read its values ({problem})"
        ) from None
    if form == "choice":
        if not args:
            raise SweepSpecError(f"{where}: SPEC {text!r}: choice needs one value or more")
        return Choice(tuple(args))
    if len(args) != 2:
        raise SweepSpecError(
            f"{where}: SPEC {text!r}: {form} takes two values, lo and hi, e.g. {form}(1, 10)"
        )
    lo, hi = args
    if form == "int":
        if not all(type(v) is int for v in (lo, hi)) or lo > hi:
            raise SweepSpecError(
                f"{where}: SPEC {text!r}: int takes two integers lo <= hi, e.g. int(16, 256)"
            )
        return IntRange(lo, hi)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi))
    if not numbers or not all(math.isfinite(v) for v in (lo, hi)) or not lo < hi:
        raise SweepSpecError(
            f"{where}: SPEC {text!r}: {form} takes two finite numbers lo < hi, e.g. {form}(0.1, 1)"
        )
    if form == "loguniform" and lo <= 0:
        raise SweepSpecError(
            f"{where}: SPEC {text!r}: loguniform needs 0 < lo (its logarithm is drawn), "
            "e.g. loguniform(1e-4, 1e-1)"
        )
    return Uniform(float(lo), float(hi), log=form == "loguniform")


def parse_param_option(option: str) -> tuple[str, str]:
    """KEY and SPEC of a `--param KEY=SPEC` option."""
    key, sep, spec = option.partition("=")
    if not sep or not key.strip() or not spec.strip():
        raise SweepSpecError(
            f"--param {option!r}: write KEY=SPEC, e.g. --param optim.lr='loguniform(1e-4, 1e-1)'"
        )
    return key.strip(), spec.strip()


def section_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The `sweep.params` section as dotted keys: nested maps are walked to their leaves."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(section_params(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def plan_sweep(
    cfg: Config,
    params: Sequence[str] = (),
    *,
    trials: int | None = None,
    parallel: int | None = None,
    sampler: str | None = None,
    seed: int | None = None,
    nproc: int | None = None,
) -> SweepPlan:
    """The sweep that `cfg`'s `sweep:` section and the command line (which wins) describe.

    `params` are `--param KEY=SPEC` options; the other arguments, when given, replace the
    section's values. SweepSpecError (one line) names what cannot work and how to fix it.
    """
    section = SimpleNamespace(**cfg.to_dict()["sweep"])  # plain values, not OmegaConf nodes
    source = cfg.source_of("sweep.params")
    found: dict[str, Param] = {}
    for key, value in section_params(section.params or {}).items():
        where = f"sweep.params.{key} (set by {source})"
        if isinstance(value, list):
            found[key] = Choice(tuple(value))
        else:
            found[key] = parse_spec(str(value), where)
    for option in params:
        key, spec = parse_param_option(option)
        found[key] = parse_spec(spec, f"--param {key}")
    if not found:
        raise SweepSpecError(
            "nothing to sweep: give --param KEY=SPEC (e.g. --param optim.lr='loguniform(1e-4, "
            "1e-1)') or a sweep.params section in the config"
        )
    for key, param in found.items():
        check_param(cfg, key, param)
    chosen = sampler or section.sampler
    if chosen not in SAMPLERS:
        raise SweepSpecError(f"--sampler {chosen!r} is not one of {', '.join(SAMPLERS)}")
    count = trials if trials is not None else section.trials
    if chosen == "grid":
        count = _grid_trials(found, count)
    if count is None:
        raise SweepSpecError(
            f"how many trials? give --trials N (or sweep.trials); only --sampler grid "
            f"counts them itself (the sampler here is {chosen})"
        )
    if count < 1:
        raise SweepSpecError(f"--trials {count}: a sweep runs 1 trial or more")
    at_once = parallel if parallel is not None else section.parallel
    if at_once < 0:
        raise SweepSpecError(f"--parallel {at_once}: use 0 (agents run every trial) or more")
    ranks = nproc if nproc is not None else section.nproc
    if ranks < 1:
        raise SweepSpecError(f"--nproc {ranks}: each trial runs on 1 rank or more")
    return SweepPlan(
        params=found,
        trials=count,
        parallel=at_once,
        sampler=chosen,
        seed=seed if seed is not None else section.seed,
        objective=SweepGoal(section.metric, section.split, section.mode),
        nproc=ranks,
        reclaim_after=float(section.reclaim_after),
        pruner=dict(section.pruner or {}),
    )


def check_param(cfg: Config, key: str, param: Param) -> None:
    """Refuse a key the trainer's config does not have (naming the nearest), or a value of
    `param` that it refuses (as an override of `cfg` would be)."""
    where = f"--param {key}={param.text}"
    if key.split(".")[0] in _NOT_SWEPT:
        raise SweepSpecError(f"{where}: the sweep's own section cannot be swept")
    known = leaf_keys(cfg.to_dict())
    if key not in known and not key.startswith("extra."):
        sections = {k.rsplit(".", 1)[0] for k in known if "." in k}
        if key in sections:
            keys = [k for k in known if k.startswith(key + ".")]
            raise SweepSpecError(
                f"{where}: {key!r} is a section, not a key; sweep one of its keys: "
                f"{', '.join(keys)}"
            )
        nearest = nearest_key(key, known)
        hint = f"; did you mean {nearest!r}?" if nearest else ""
        raise SweepSpecError(
            f"{where}: unknown config key {key!r}{hint} (`trainer config` lists every key)"
        )
    default = cfg.get(key)
    takes_list = isinstance(default, Sequence) and not isinstance(default, str)
    for value in param.bounds():
        if takes_list and not isinstance(value, (list, tuple)):
            raise SweepSpecError(
                f"{where}: {key} takes a list (it is {json.dumps(wire_value(list(default)))}), "
                "so each value must be one: write choice([32], [64]) rather than choice(32, 64)"
            )
        try:
            cfg.merge(nested(key, value))
        except ConfigError as exc:
            problem = re.sub(r" \(set by merged mapping #\d+\)|merged mapping #\d+: ", "", str(exc))
            raise SweepSpecError(
                f"{where}: the value {_yaml_text(value)} does not fit the config: {problem}"
            ) from None


def nearest_key(key: str, known: Sequence[str]) -> str | None:
    """The known key `key` most likely means: the same name in another section
    (train.batch_size: data.batch_size), a name it abbreviates (optim.learning_rate: optim.lr),
    else the closest spelling."""
    section, _, name = key.rpartition(".")

    def initials(word: str) -> str:
        return "".join(part[:1] for part in word.split("_") if part)

    leaves = [(k.rpartition(".")[0], k.rpartition(".")[2], k) for k in known]
    for test in (
        lambda s, n: n == name,
        lambda s, n: n == initials(name) or initials(n) == name,
    ):
        matches = [k for s, n, k in leaves if test(s, n)]
        if matches:
            same = [k for k in matches if k.startswith(section + ".")] if section else []
            return (same or matches)[0]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return close[0] if close else None


def trial_config(cfg: Config, params: Mapping[str, Any]) -> Config:
    """A trial's config: `cfg` with the trial's `params` set, its own `sweep` section cleared
    (a trial sweeps nothing) and no progress bar (a trial's output goes to a log)."""
    layers: list[Mapping[str, Any]] = [nested(k, v) for k, v in params.items()]
    base = cfg.to_dict()
    base.pop("sweep", None)
    base.setdefault("train", {})["progress_bar"] = False
    return from_dict(base, schema=TrainerConfig).merge(*layers)


def nested(key: str, value: Any) -> dict[str, Any]:
    """{"optim": {"lr": 0.1}} for ("optim.lr", 0.1)."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def leaf_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Every dotted key of a nested mapping that holds a value rather than a section."""
    keys = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            keys += leaf_keys(value, f"{dotted}.")
        else:
            keys.append(dotted)
    return keys


def wire_value(value: Any) -> Any:
    """A parameter's value as msgpack carries it (a tuple becomes a list)."""
    return json.loads(json.dumps(value))


def _grid_trials(params: Mapping[str, Param], trials: int | None) -> int:
    """The number of grid trials: every point of the grid, or fewer if `trials` says."""
    size = 1
    for key, param in params.items():
        points = param.grid()
        if points is None:
            raise SweepSpecError(
                f"--sampler grid: {key}={param.text} is a continuous range, which has no grid; "
                "give it as choice(...) or int(lo, hi), or use --sampler random or tpe"
            )
        size *= len(points)
        if size > MAX_GRID:
            raise SweepSpecError(f"--sampler grid: the grid has more than {MAX_GRID} points")
    if trials is not None and trials > size:
        raise SweepSpecError(
            f"--trials {trials}: the grid has {size} points only; give --trials {size} or "
            "fewer, or leave --trials out"
        )
    return trials if trials is not None else size


def _split_args(inner: str) -> list[str]:
    """The comma-separated arguments of a SPEC, commas inside brackets and quotes kept."""
    if not inner.strip():
        return []
    items, depth, quote, current = [], 0, "", []
    for char in inner:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced {char!r}")
        elif char == "," and depth == 0:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    if depth or quote:
        raise ValueError("unbalanced brackets or quotes")
    items.append("".join(current))
    if any(not item.strip() for item in items):
        raise ValueError("an empty value between commas")
    return [item.strip() for item in items]


def _value(item: str) -> Any:
    """One SPEC argument: a number as Python reads it (1e-4 too, which YAML 1.1 takes for a
    string), else a YAML value (adam, true, [64, 32], 'quoted')."""
    for number in (int, float):
        try:
            return number(item)
        except ValueError:
            pass
    return yaml.safe_load(item)


def _yaml_text(value: Any) -> str:
    """A value as it is written in a SPEC (flow-style YAML on one line)."""
    return value if isinstance(value, str) else json.dumps(wire_value(value))
