"""MonitorState: what a monitor knows of one run, built only from the envelopes it is fed.

Fed the run's events, control and dead-letter envelopes (`feed(topic_kind, env)`), it keeps
per-rank progress, metric histories per split, the workers and their votes, the checkpoints
kept and how the run ended. It never raises on a malformed envelope: a value of the wrong type
is treated as absent. Times are envelope timestamps (seconds since the epoch), so a replay and
a live view compute the same rates.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bus import DEAD_LETTER, Envelope, Topics
from bus.messages import (
    CHECKPOINT_PRUNED,
    CHECKPOINT_READY,
    CHECKPOINT_REQUEST,
    CHECKPOINT_SAVED,
    CONTROL,
    EPOCH_COMPLETED,
    EVENTS,
    EXCEPTION_RAISED,
    HEARTBEAT,
    ITERATION_COMPLETED,
    METRICS,
    PRIMARY_SPLIT,
    RUN_FINISHED,
    RUN_STARTED,
    TERMINATE,
    VOTE,
    WORKER_JOINED,
    WORKER_LEFT,
)

# The topic an envelope was read from (besides bus.messages' EVENTS and CONTROL): TERMINATE
# means "the engine stopped" on the events topic and "stop now" on the control topic.
DEAD_LETTERS = "deadletter"

# The trainer's envelopes have source "trainer:<rank>"; only they move a rank's progress.
TRAINER_PREFIX = "trainer:"
# it/s is measured over this many seconds of envelope time (a long window spans validation too,
# so the ETA it gives includes the time spent evaluating).
RATE_WINDOW = 30.0
# Scalar outputs of the latest iterations kept per rank (for a sparkline of the loss).
OUTPUT_HISTORY = 120
# The trainer's default bus.heartbeat_timeout: a worker silent this long no longer counts.
HEARTBEAT_TIMEOUT = 10.0
# What a worker is: heard of within the heartbeat timeout, not heard of for longer (killed, or
# cut off: the trainer no longer counts it), or departed with WORKER_LEFT.
LIVE, GONE, LEFT = "live", "gone", "left"


def _int(value: Any) -> int | None:
    """`value` if it is an int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    """`value` as a float if it is a real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _str(value: Any) -> str | None:
    """`value` if it is a str, else None."""
    return value if isinstance(value, str) else None


def _map(value: Any) -> Mapping[str, Any]:
    """`value` if it is a mapping, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def _scalars(value: Any) -> dict[str, float]:
    """The name -> number items of a mapping (others left out)."""
    out = {}
    for name, number in _map(value).items():
        number = _float(number)
        if isinstance(name, str) and number is not None:
            out[name] = number
    return out


@dataclass
class RankProgress:
    """Where one trainer rank is: epoch, iteration, and the samples its rate is measured on."""

    source: str
    rank: int
    host: str | None = None
    pid: int | None = None
    resumed_from: str | None = None
    started_ts: float | None = None
    started_iteration: int | None = None
    epoch: int = 0  # 0-indexed, of the latest trainer envelope
    iteration: int = 0
    last_ts: float | None = None
    outputs: dict[str, float] = field(default_factory=dict)  # latest train step outputs
    output_history: dict[str, deque[float]] = field(default_factory=dict)
    samples: deque[tuple[float, int]] = field(default_factory=deque)  # (ts, iteration)
    finish: Mapping[str, Any] | None = None  # the data of this rank's RUN_FINISHED
    finished_ts: float | None = None

    def observe(self, env: Envelope) -> None:
        """Account for one envelope this rank sent."""
        self.epoch, self.iteration, self.last_ts = env.epoch, env.iteration, env.ts
        if self.started_iteration is None:
            self.started_iteration = env.iteration
        samples = self.samples
        samples.append((env.ts, env.iteration))
        while len(samples) > 2 and samples[1][0] < env.ts - RATE_WINDOW:
            samples.popleft()

    @property
    def epoch_shown(self) -> int:
        """The epoch it is in, or stopped in, counted from 1 as people read it."""
        return self.epoch + 1

    def rate(self) -> float | None:
        """Iterations per second: over the run once it finished, else over the last window."""
        if self.finish is not None and self.started_ts is not None:
            first_ts, first_it = self.started_ts, self.started_iteration or 0
            last_ts, last_it = self.finished_ts or self.started_ts, self.iteration
        elif len(self.samples) >= 2:
            (first_ts, first_it), (last_ts, last_it) = self.samples[0], self.samples[-1]
        else:
            return None
        if last_ts <= first_ts or last_it < first_it:
            return None
        return (last_it - first_it) / (last_ts - first_ts)


@dataclass
class SplitMetrics:
    """A split's metric values by epoch: the aggregator's (METRICS) and the trainer's own."""

    aggregated: dict[str, dict[int, float]] = field(default_factory=dict)
    local: dict[str, dict[int, float]] = field(default_factory=dict)
    local_rank: int | None = None  # the rank whose EPOCH_COMPLETED metrics are kept

    @property
    def source(self) -> str:
        """Where the shown values come from: "METRICS" (aggregated) or "EPOCH_COMPLETED"."""
        return METRICS if self.aggregated else EPOCH_COMPLETED

    def series(self) -> dict[str, list[tuple[int, float]]]:
        """Each metric's (epoch, value) history, oldest first, from the preferred source."""
        chosen = self.aggregated or self.local
        return {name: sorted(by_epoch.items()) for name, by_epoch in sorted(chosen.items())}


@dataclass(frozen=True)
class LatestVote:
    """A voter's latest vote."""

    stop: bool
    epoch: int | None
    reason: str
    ts: float


@dataclass
class WorkerState:
    """One worker as its control envelopes tell."""

    name: str
    kind: str = "?"
    votes: bool = False
    heartbeat: float | None = None  # its announced seconds between heartbeats
    joined_ts: float | None = None
    last_seen: float | None = None
    left: bool = False
    vote: LatestVote | None = None

    def age(self, now: float) -> float | None:
        """Seconds since the worker was last heard of."""
        return None if self.last_seen is None else max(0.0, now - self.last_seen)


@dataclass
class KeptCheckpoint:
    """A checkpoint file the checkpoint worker keeps."""

    path: str
    epoch: int | None
    iteration: int | None
    score: float | None
    aliases: list[str]
    ts: float

    @property
    def name(self) -> str:
        """The file name, without its directory."""
        return self.path.rsplit("/", 1)[-1]


@dataclass
class DeadLetters:
    """The run's entries some consumer gave up on."""

    count: int = 0
    last_reason: str | None = None
    last_group: str | None = None
    last_ts: float | None = None


class MonitorState:
    """Everything a monitor shows about run `run_id` of namespace `namespace`."""

    def __init__(self, run_id: str, namespace: str = "trainer") -> None:
        self.run_id = run_id
        self.namespace = namespace
        topics = Topics(namespace)
        self._run_topics = {topics.events(run_id), topics.control(run_id)}
        self.started: Envelope | None = None  # the first RUN_STARTED (rank 0's when several)
        self.config: Mapping[str, Any] = {}
        self.world_size = 1
        self.ranks: dict[str, RankProgress] = {}  # by source "trainer:<rank>"
        self.epoch_length_learnt: int | None = None
        self.metrics: dict[str, SplitMetrics] = {}  # by split
        self.workers: dict[str, WorkerState] = {}  # by name
        self.checkpoints: dict[str, KeptCheckpoint] = {}  # by path
        self.pending_ready: dict[str, str] = {}  # CHECKPOINT_READY id -> path, not yet filed
        self.dead_letters = DeadLetters()
        self.exception: Mapping[str, Any] | None = None
        self.terminate_requests: list[tuple[str, str]] = []  # (source, reason) on control
        self.checkpoint_requests = 0
        self.undecodable: dict[str, int] = {}  # topic kind -> entries that did not decode
        self.last_undecodable: str | None = None
        self.envelopes = 0
        self.clock: float | None = None  # the newest envelope timestamp fed

    # -- what the run's config says ----------------------------------------------------

    def _section(self, name: str) -> Mapping[str, Any]:
        return _map(self.config.get(name))

    @property
    def name(self) -> str | None:
        """The run's name from its config (`run.name`)."""
        return _str(self._section("run").get("name"))

    @property
    def max_epochs(self) -> int | None:
        """Epochs the run trains for (`train.epochs`)."""
        return _int(self._section("train").get("epochs"))

    @property
    def epoch_length(self) -> int | None:
        """Iterations per epoch: `train.epoch_length`, else learnt from the first epoch done."""
        configured = _int(self._section("train").get("epoch_length"))
        return configured if configured and configured > 0 else self.epoch_length_learnt

    @property
    def total_iterations(self) -> int | None:
        """Iterations of the whole run, when epochs and epoch length are known."""
        epochs, length = self.max_epochs, self.epoch_length
        return epochs * length if epochs and length else None

    @property
    def heartbeat_timeout(self) -> float:
        """Seconds of silence after which the trainer stops counting a worker."""
        timeout = _float(self._section("bus").get("heartbeat_timeout"))
        return timeout if timeout and timeout > 0 else HEARTBEAT_TIMEOUT

    # -- how it ended -------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once every rank has sent RUN_FINISHED (and none started again since)."""
        done = [r for r in self.ranks.values() if r.finish is not None]
        return self.started is not None and len(done) >= self.world_size

    @property
    def finish(self) -> Mapping[str, Any] | None:
        """The RUN_FINISHED data of the lowest rank that finished, or None while running."""
        done = sorted((r.rank, r.source) for r in self.ranks.values() if r.finish is not None)
        return self.ranks[done[0][1]].finish if done else None

    @property
    def status(self) -> str:
        """ "waiting" (no RUN_STARTED yet), "running", or the RUN_FINISHED status."""
        if self.started is None:
            return "waiting"
        finish = self.finish if self.finished else None
        if finish is None:
            return "running"
        return _str(finish.get("status")) or "finished"

    def eta(self, progress: RankProgress) -> float | None:
        """Seconds until `progress`'s rank reaches the run's last iteration, at its rate."""
        total, rate = self.total_iterations, progress.rate()
        if progress.finish is not None or total is None or not rate:
            return None
        return max(0, total - progress.iteration) / rate

    def worker_status(self, worker: WorkerState, now: float) -> str:
        """LEFT, GONE (not heard of for longer than `heartbeat_timeout` at `now`) or LIVE.

        `now` is the time the view stands at: the wall clock when following a run live, the
        replay clock when playing one back (the run's own time, not today's).
        """
        if worker.left:
            return LEFT
        age = worker.age(now)
        return GONE if age is None or age > self.heartbeat_timeout else LIVE

    def live_workers(self, now: float, kind: str | None = None) -> list[WorkerState]:
        """Workers (of `kind`) that joined, have not left and were heard of lately."""
        return [
            w
            for w in self.workers.values()
            if (kind is None or w.kind == kind) and self.worker_status(w, now) == LIVE
        ]

    def workers_shown(self, now: float) -> list[WorkerState]:
        """The workers in the order they are shown: live, then gone, then left; by kind, name."""
        order = {LIVE: 0, GONE: 1, LEFT: 2}
        return sorted(
            self.workers.values(),
            key=lambda w: (order[self.worker_status(w, now)], w.kind, w.name),
        )

    # -- feeding ------------------------------------------------------------------------

    def note_undecodable(self, topic_kind: str, reason: str) -> None:
        """Count an entry of `topic_kind` that did not decode; the reading goes on."""
        self.undecodable[topic_kind] = self.undecodable.get(topic_kind, 0) + 1
        self.last_undecodable = reason

    def concerns(self, topic_kind: str, env: Envelope) -> bool:
        """Whether `env`, read from the `topic_kind` topic, is about this run (the dead-letter
        topic holds the whole namespace's)."""
        if topic_kind == DEAD_LETTERS:
            return env.type == DEAD_LETTER and (
                env.run_id == self.run_id or _str(env.data.get("topic")) in self._run_topics
            )
        return env.run_id == self.run_id

    def feed(self, topic_kind: str, env: Envelope) -> None:
        """Account for `env`, read from the run's `topic_kind` topic (EVENTS, CONTROL or
        DEAD_LETTERS); envelopes of other runs are left out."""
        if not self.concerns(topic_kind, env):
            return
        if topic_kind == DEAD_LETTERS:
            self._on_dead_letter(env)
            return
        self.envelopes += 1
        self._tick(env)
        if topic_kind == EVENTS:
            self._on_event(env)
        elif topic_kind == CONTROL:
            self._on_control(env)

    def _tick(self, env: Envelope) -> None:
        ts = env.ts
        if isinstance(ts, (int, float)) and math.isfinite(ts):
            self.clock = ts if self.clock is None else max(self.clock, ts)

    # -- the events topic ---------------------------------------------------------------

    def _on_event(self, env: Envelope) -> None:
        data = env.data
        kind = env.type
        if kind == RUN_STARTED:
            self._on_started(env)
            return
        rank = self.ranks.get(env.source)
        if rank is None and env.source.startswith(TRAINER_PREFIX):
            rank = self._rank(env.source, _int(data.get("rank")))
        if rank is not None:
            rank.observe(env)
        split = _str(data.get("split"))
        if kind == ITERATION_COMPLETED and rank is not None and split == PRIMARY_SPLIT:
            self._on_outputs(rank, _scalars(data.get("outputs")))
        elif kind == EPOCH_COMPLETED and rank is not None and split is not None:
            self._on_epoch_completed(rank, env, split)
        elif kind == METRICS and split is not None:
            epoch, values = _int(data.get("epoch")), _scalars(data.get("values"))
            if epoch is not None and values and not data.get("running"):
                by_name = self.metrics.setdefault(split, SplitMetrics()).aggregated
                for name, value in values.items():
                    by_name.setdefault(name, {})[epoch] = value
        elif kind == CHECKPOINT_READY and rank is not None:
            self.pending_ready[env.id] = _str(data.get("path")) or "?"
        elif kind == CHECKPOINT_SAVED:
            self._on_saved(env)
        elif kind == CHECKPOINT_PRUNED:
            self.checkpoints.pop(_str(data.get("path")) or "", None)
            self.pending_ready.pop(_str(data.get("ready_id")) or "", None)
        elif kind == EXCEPTION_RAISED and rank is not None:
            self.exception = dict(data)
        elif kind == RUN_FINISHED and rank is not None:
            rank.finish = dict(data)
            rank.finished_ts = env.ts
            iteration = _int(data.get("iteration"))
            if iteration is not None:
                rank.iteration = iteration

    def _rank(self, source: str, rank: int | None) -> RankProgress:
        found = self.ranks.get(source)
        if found is None:
            if rank is None:
                tail = source[len(TRAINER_PREFIX) :]
                rank = int(tail) if tail.isdigit() else len(self.ranks)
            found = self.ranks[source] = RankProgress(source, rank)
        return found

    def _on_started(self, env: Envelope) -> None:
        data = env.data
        rank_number = _int(data.get("rank"))
        if self.started is None or (rank_number == 0 and _int(self.started.data.get("rank"))):
            self.started = env
            self.config = _map(data.get("config"))
        size = _int(data.get("world_size"))
        if size is not None and size >= 1:
            self.world_size = size
        rank = self._rank(env.source, rank_number)
        # A rank that starts again (a resume under the same run id) is running again.
        rank.finish = rank.finished_ts = None
        rank.host, rank.pid = _str(data.get("host")), _int(data.get("pid"))
        rank.resumed_from = _str(data.get("resumed_from"))
        rank.started_ts = env.ts
        rank.started_iteration = None
        rank.samples.clear()
        rank.observe(env)
        if self.exception is not None and rank.rank == 0:
            self.exception = None  # the failure was in the run's previous life

    def _on_outputs(self, rank: RankProgress, outputs: dict[str, float]) -> None:
        rank.outputs = outputs
        for name, value in outputs.items():
            history = rank.output_history.get(name)
            if history is None:
                history = rank.output_history[name] = deque(maxlen=OUTPUT_HISTORY)
            history.append(value)

    def _on_epoch_completed(self, rank: RankProgress, env: Envelope, split: str) -> None:
        if split == PRIMARY_SPLIT and self.epoch_length_learnt is None and env.iteration > 0:
            # Every epoch is as long: epoch e (0-indexed) ends at iteration (e + 1) * length,
            # resumed runs included.
            self.epoch_length_learnt = max(1, env.iteration // (env.epoch + 1))
        metrics = self.metrics.setdefault(split, SplitMetrics())
        if metrics.local_rank is None or rank.rank < metrics.local_rank:
            metrics.local_rank = rank.rank
        if rank.rank != metrics.local_rank:
            return
        for name, value in _scalars(env.data.get("metrics")).items():
            metrics.local.setdefault(name, {})[env.epoch] = value

    def _on_saved(self, env: Envelope) -> None:
        data = env.data
        path = _str(data.get("path"))
        if path is None:
            return
        raw_aliases = data.get("aliases")
        aliases = (
            [a for a in raw_aliases if isinstance(a, str)] if isinstance(raw_aliases, list) else []
        )
        for other in self.checkpoints.values():  # an alias names one checkpoint: it moves
            other.aliases = [a for a in other.aliases if a not in aliases]
        self.checkpoints[path] = KeptCheckpoint(
            path=path,
            epoch=_int(data.get("epoch")),
            iteration=_int(data.get("iteration")),
            score=_float(data.get("score")),
            aliases=aliases,
            ts=env.ts,
        )
        self.pending_ready.pop(_str(data.get("ready_id")) or "", None)

    # -- the control topic --------------------------------------------------------------

    def _on_control(self, env: Envelope) -> None:
        data = env.data
        kind = env.type
        if kind == TERMINATE:
            self.terminate_requests.append((env.source, _str(data.get("reason")) or ""))
            return
        if kind == CHECKPOINT_REQUEST:
            self.checkpoint_requests += 1
            return
        if kind not in (WORKER_JOINED, WORKER_LEFT, HEARTBEAT, VOTE):
            return
        name = _str(data.get("voter" if kind == VOTE else "name")) or env.source
        worker = self.workers.get(name)
        if worker is None:
            worker = self.workers[name] = WorkerState(name)
        worker_kind = _str(data.get("kind"))
        if worker_kind:
            worker.kind = worker_kind
        worker.last_seen = env.ts if worker.last_seen is None else max(worker.last_seen, env.ts)
        if kind == WORKER_JOINED:
            worker.votes = data.get("votes") is True
            worker.heartbeat = _float(data.get("heartbeat"))
            worker.joined_ts = env.ts
            worker.left = False
        elif kind == WORKER_LEFT:
            worker.left = True
        elif kind == VOTE:
            worker.votes = True
            worker.vote = LatestVote(
                stop=data.get("stop") is True,
                epoch=_int(data.get("epoch")),
                reason=_str(data.get("reason")) or "",
                ts=env.ts,
            )

    # -- the namespace's dead letters -------------------------------------------------

    def _on_dead_letter(self, env: Envelope) -> None:
        data = env.data
        letters = self.dead_letters
        letters.count += 1
        letters.last_reason = _str(data.get("reason")) or "?"
        letters.last_group = _str(data.get("group"))
        letters.last_ts = env.ts
        self._tick(env)
