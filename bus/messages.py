"""The message catalogue of DESIGN.md 4.1: every type, its required `data` keys, and its topics.

The one home of the wire contract that the trainer, the workers, the monitor, the web view and
docs/protocol.md's test share; `check_data` is the one check of a message's `data`. Keys beyond
the required ones are free (messages grow additively), and so are types not listed here: a
custom engine event is its own type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bus.errors import Rejected

# The topics a message travels on (bus.Topics builds their names): a run's events, which the
# registry repeats for RUN_STARTED and RUN_FINISHED, and a run's control; the registry of sweeps,
# a sweep's queue of trials and a sweep's events (what its agents did with them).
EVENTS, CONTROL, REGISTRY = "events", "control", "registry"
SWEEPS, TRIALS, SWEEP_EVENTS = "sweeps", "trials", "sweep_events"

# ---- on a run's events topic: the trainer's lifecycle ----------------------------------------
RUN_STARTED = "RUN_STARTED"
STARTED = "STARTED"
EPOCH_STARTED = "EPOCH_STARTED"
ITERATION_COMPLETED = "ITERATION_COMPLETED"
EPOCH_COMPLETED = "EPOCH_COMPLETED"
COMPLETED = "COMPLETED"
TERMINATE = "TERMINATE"  # on events: the engine stopped; on control: stop now
EXCEPTION_RAISED = "EXCEPTION_RAISED"
CHECKPOINT_READY = "CHECKPOINT_READY"
RUN_FINISHED = "RUN_FINISHED"
# ---- on a run's events topic: the workers' reports -------------------------------------------
METRICS = "METRICS"
CHECKPOINT_SAVED = "CHECKPOINT_SAVED"
CHECKPOINT_PRUNED = "CHECKPOINT_PRUNED"
TRACK = "TRACK"  # one record of an online tracking run (docs/tracking.md); `data` is the record
# ---- on a run's control topic ----------------------------------------------------------------
WORKER_JOINED = "WORKER_JOINED"
WORKER_LEFT = "WORKER_LEFT"
HEARTBEAT = "HEARTBEAT"
VOTE = "VOTE"
CHECKPOINT_REQUEST = "CHECKPOINT_REQUEST"
# ---- on the registry of sweeps, a sweep's queue and a sweep's events ---------------------------
SWEEP_STARTED = "SWEEP_STARTED"
SWEEP_FINISHED = "SWEEP_FINISHED"
TRIAL = "TRIAL"  # one trial to run, on the sweep's queue
TRIAL_STARTED = "TRIAL_STARTED"  # an agent took a trial (or took one over) and starts its run
TRIAL_ENDED = "TRIAL_ENDED"  # the trial's run is over, as its agent saw it

# The consumer group through which every agent of every sweep reads a sweep's queue of trials.
AGENTS_GROUP = "agents"

# The registry carries these envelopes of every run as well as the run's events topic.
REGISTRY_TYPES = (RUN_STARTED, RUN_FINISHED)

# The split of the trainer's primary engine, whose EPOCH_COMPLETED closes an epoch.
PRIMARY_SPLIT = "train"

# The worker kinds (WORKER_JOINED `kind`, `trainer worker KIND`, the config's `workers:`).
WORKER_KINDS = (
    "metrics",
    "checkpoint",
    "tracking",
    "early-stop",
    "nan-guard",
    "budget",
    "pruner",
)

# The environment variable holding the shared signing secret of control envelopes.
SECRET_ENV = "TRAINER_BUS_SECRET"


@dataclass(frozen=True)
class Kind:
    """What a required `data` value must be: `name` says it, `accepts` tests it."""

    name: str
    accepts: Callable[[Any], bool]


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


STR = Kind("str", lambda v: isinstance(v, str))
NAME = Kind("a non-empty str", lambda v: isinstance(v, str) and bool(v))
OPTIONAL_STR = Kind("str or nil", lambda v: v is None or isinstance(v, str))
INT = Kind("int", _int)
BOOL = Kind("bool", lambda v: isinstance(v, bool))
MAP = Kind("map", lambda v: isinstance(v, Mapping))
LIST = Kind("list", lambda v: isinstance(v, (list, tuple)))
OPTIONAL_MAP = Kind("map or nil", lambda v: v is None or isinstance(v, Mapping))


def _trial_of_sweep(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("id"), str)
        and bool(value["id"])
        and _int(value.get("trial"))
        and value["trial"] >= 0
        and isinstance(value.get("params"), Mapping)
    )


# RUN_STARTED `sweep` of a trial: which sweep, which trial, and the values it tries.
SWEEP_TRIAL = Kind("a map of id (str), trial (int >= 0) and params (map)", _trial_of_sweep)

_CHECKPOINT_FILED = {"path": STR, "sha256": STR, "epoch": INT, "iteration": INT, "aliases": LIST}
_WORKER = {"kind": STR, "name": NAME}

# topic -> type -> required data key -> what its value must be.
REQUIRED: dict[str, dict[str, dict[str, Kind]]] = {
    EVENTS: {
        RUN_STARTED: {
            "config": MAP,
            "rank": INT,
            "world_size": INT,
            "host": STR,
            "pid": INT,
            "resumed_from": OPTIONAL_STR,
        },
        STARTED: {"split": STR},
        EPOCH_STARTED: {"split": STR},
        EPOCH_COMPLETED: {"split": STR, "metrics": MAP, "metric_states": MAP},
        COMPLETED: {"split": STR},
        TERMINATE: {"split": STR},
        ITERATION_COMPLETED: {"split": STR, "outputs": MAP},
        EXCEPTION_RAISED: {"split": STR, "error_type": STR, "message": STR, "traceback": STR},
        CHECKPOINT_READY: {"path": STR, "size": INT, "sha256": STR, "epoch": INT, "iteration": INT},
        RUN_FINISHED: {
            "status": STR,
            "reason": STR,
            "by": OPTIONAL_STR,
            "epochs": INT,
            "iteration": INT,
        },
        METRICS: {"split": STR, "epoch": INT, "values": MAP, "ranks": LIST},
        CHECKPOINT_SAVED: _CHECKPOINT_FILED,
        CHECKPOINT_PRUNED: _CHECKPOINT_FILED,
        TRACK: {"kind": STR},
    },
    CONTROL: {
        WORKER_JOINED: {**_WORKER, "votes": BOOL},
        WORKER_LEFT: _WORKER,
        HEARTBEAT: _WORKER,
        VOTE: {"stop": BOOL, "reason": STR, "voter": NAME, "epoch": INT},
        TERMINATE: {"reason": STR},
        CHECKPOINT_REQUEST: {"reason": STR},
    },
    SWEEPS: {
        SWEEP_STARTED: {
            "params": MAP,
            "trials": INT,
            "sampler": STR,
            "objective": MAP,
            "config": MAP,
        },
        SWEEP_FINISHED: {"status": STR, "reason": STR, "trials": INT, "best": OPTIONAL_MAP},
    },
    TRIALS: {
        TRIAL: {"trial": INT, "run_id": NAME, "params": MAP, "config": MAP, "nproc": INT},
    },
    SWEEP_EVENTS: {
        TRIAL_STARTED: {"trial": INT, "run_id": NAME, "agent": NAME, "resumed_from": OPTIONAL_STR},
        TRIAL_ENDED: {
            "trial": INT,
            "run_id": NAME,
            "agent": NAME,
            "status": STR,
            "reason": STR,
            "by": OPTIONAL_STR,
        },
    },
}
REQUIRED[REGISTRY] = {t: REQUIRED[EVENTS][t] for t in REGISTRY_TYPES}

# topic -> type -> optional data key -> what its value must be when it is there.
OPTIONAL: dict[str, dict[str, dict[str, Kind]]] = {
    EVENTS: {RUN_STARTED: {"sweep": SWEEP_TRIAL}},
}
OPTIONAL[REGISTRY] = {t: OPTIONAL[EVENTS][t] for t in REGISTRY_TYPES if t in OPTIONAL[EVENTS]}


def check_data(type_: str, data: Any, *, topic: str) -> None:
    """Raise bus.Rejected naming the key of `data` that breaks the catalogue for `type_` on `topic`.

    Types the catalogue does not list on `topic` pass: they are custom events, or not for the
    reader. A missing key is named with what every required key must be; a mistyped one with
    what it must be and what it is.
    """
    catalogue = REQUIRED.get(topic)
    if catalogue is None:
        raise ValueError(f"topic kind {topic!r} is not one of {', '.join(REQUIRED)}")
    required = catalogue.get(type_)
    if required is None:
        return
    if not isinstance(data, Mapping):
        raise Rejected(f"{type_} data must be a map, got {type(data).__name__}")
    missing = [key for key in required if key not in data]
    if missing:
        needs = ", ".join(f"{key} ({kind.name})" for key, kind in required.items())
        raise Rejected(f"{type_} data: missing keys {missing}; {type_} needs {needs}")
    for key, kind in required.items():
        if not kind.accepts(data[key]):
            raise Rejected(f"{type_} data {key!r} must be {kind.name}, got {data[key]!r}")
    for key, kind in OPTIONAL.get(topic, {}).get(type_, {}).items():
        if key in data and not kind.accepts(data[key]):
            raise Rejected(f"{type_} data {key!r} must be {kind.name}, got {data[key]!r}")
