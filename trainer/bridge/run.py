"""BusRun: one training process's run on the bus, publishing its engines and obeying control.

```python
run = BusRun("redis://localhost:6379/0", config=cfg)
run.attach(trainer)                # the primary: its epoch/iteration stamp every envelope
run.attach(evaluator, "val")
run.checkpoint({"model": model, "optimizer": opt, "trainer": trainer}, directory="ckpt")
with run:                          # RUN_STARTED ... RUN_FINISHED, on events and the registry
    trainer.run(data, max_epochs=10)
```

Stop signals (TERMINATE, a vote tally, in barrier mode the barrier's tally) are applied only at
the primary's iteration boundaries, by `engine.terminate()`; RUN_FINISHED then names the cause.

Several ranks (torchrun): each rank runs its own BusRun with its `rank` and `world_size`. When
torch.distributed is initialised, every stop and checkpoint request of any rank (control, or the
program's own `terminate()`) is agreed by all ranks every `stop_sync_every` iterations and at
every EPOCH_COMPLETED (`trainer.bridge.ranks`), so all ranks stop at the same iteration with the
same cause; only rank 0 writes checkpoints. With one rank nothing of this runs and
torch.distributed is never called.

Several ranks on in-memory buses (`memory://`, the embedded default of `trainer run --nproc N`):
such a bus lives inside one process, so each rank's is its own and only rank 0's has readers
(the workers it hosts). Rank 0 then presents the job as a run of one publisher: its RUN_STARTED
says `world_size` 1 and `reduced_ranks` N, its EPOCH_COMPLETED carry `metrics` and
`metric_states` all-reduced over every rank's data (so the metrics worker, waiting for one rank,
reports the job's figures), and the other ranks publish nothing. Stops and checkpoints are
agreed as above, so a vote that reaches rank 0 stops every rank.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bus
from bus import ThreadedPublisher, Topics, Verifier, open_bus
from bus.messages import PRIMARY_SPLIT, RUN_FINISHED, RUN_STARTED, SECRET_ENV
from trainer.bridge.barrier import BarrierResult
from trainer.bridge.boundaries import Boundaries
from trainer.bridge.checkpointer import Checkpointer, CheckpointService, CheckpointStat
from trainer.bridge.clock import RunClock
from trainer.bridge.control import ControlReader, ControlState, StopCause
from trainer.bridge.lifecycle import EngineLink, RunNotStarted
from trainer.bridge.outputs import Probe, Probes
from trainer.bridge.ranks import RankBoundaries
from trainer.bridge.sender import Sender
from trainer.vote_tally import parse_policy

if TYPE_CHECKING:
    import concurrent.futures

    from trainer.distributed import StopAgreement
    from trainer.engine import Engine

log = logging.getLogger(__name__)

# Longest start() waits for the control reader to catch up with the topic's history.
CATCH_UP_TIMEOUT = 30.0
# Longest finish() waits for checkpoint writes, and then for the publisher to write it all.
WRITE_TIMEOUT = 600.0
FLUSH_TIMEOUT = 30.0
# Seconds the publisher lets envelopes gather into one write: a write per envelope would cost
# the training process a round trip's worth of Python per iteration. Stops and barriers do not
# wait for it (control is read separately; a barrier flushes first), nor do RUN_STARTED and,
# outside barrier mode when a voter is registered, each EPOCH_COMPLETED: those are written at
# once (`ThreadedPublisher.hurry`), since a worker joins a run only once it has seen its start
# and a voter judges each epoch as soon as it can (bench/sweep_savings.py: a pruned digits
# trial ran 0.2-0.3 s past its rung before). 0.1 s, not 0.02: each
# write costs the publisher's thread (sharing the GIL with training) about 0.5 ms of Python
# whatever it carries (digits job on Redis: 1.10-1.13 x the plain loop at 0.02 s, 1.05-1.06 at
# 0.1 s); the workers read a few times a second anyway, and people watch at that pace.
PUBLISH_LINGER = float(os.environ.get("TRAINER_PUBLISH_LINGER", "0.1"))
# The same on the in-memory bus, shorter: a write there costs no round trip, but each one wakes
# the embedded workers' consumers on the loop whose thread shares the GIL with training (digits
# job, 4 workers: that thread's CPU per epoch -10 to -17% against 0.02 s). Workers see events
# up to this much later; barriers and finish() flush first, and stops never wait for it.
PUBLISH_LINGER_MEMORY = float(os.environ.get("TRAINER_PUBLISH_LINGER", "0.05"))


@dataclass(frozen=True)
class RunEnd:
    """How the run ended, as RUN_FINISHED says."""

    status: str  # "completed", "terminated" or "failed"
    reason: str
    by: str | None  # the source of the signal that stopped the run, if one did
    epochs: int  # epochs the primary engine completed
    iteration: int
    voter: str | None = None  # the voter's name, when a vote stopped the run
    # Seconds of training over all the run's sessions (resumes), not counting time it was down.
    duration_s: float = 0.0


def _number(name: str, value: object, *, minimum: float, integer: bool = False) -> Any:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        what = "an int" if integer else "a number"
        raise ValueError(f"BusRun {name} must be {what} >= {minimum}, got {value!r}")
    return value


def _native_config(config: Any, what: str = "config") -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, Mapping) and callable(getattr(config, "to_dict", None)):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(f"BusRun {what} must be a mapping (or have to_dict()), got {config!r}")
    try:
        return bus.to_native(dict(config))
    except TypeError as exc:
        raise TypeError(f"BusRun {what} cannot travel on the bus: {exc}") from None


class BusRun:
    """A run on the bus: lifecycle events out, control signals in, checkpoints off-thread.

    `policy` ("any", "majority", "all" or a quorum k) decides on stop votes of the registered
    live voters; with `barrier` the primary waits at each EPOCH_COMPLETED, up to
    `barrier_timeout` s, for every live voter's vote on that epoch. A voter silent for
    `heartbeat_timeout` s is no longer counted. With a `secret` (default: the environment
    variable TRAINER_BUS_SECRET) unsigned or forged control envelopes are ignored. Pass
    `publisher` to share a ThreadedPublisher (the caller then closes it). `probes` (functions
    fn(engine) -> {name: number}, or their "package.module:function" paths) add their values to
    each published ITERATION_COMPLETED's outputs as "probe/<name>". `run_info` adds keys to
    RUN_STARTED (never replacing the catalogue's): `framework`, `name`, `project`...
    A trial of a sweep passes `sweep` ({"id", "trial", "params"}), which its RUN_STARTED carries.

    With `world_size` > 1 and an initialised torch.distributed process group of that size, the
    ranks agree on stops and checkpoints every `stop_sync_every` iterations and at every
    EPOCH_COMPLETED; `agreements` and `agreement_seconds` say what that cost. With an in-memory
    `bus_url` as well, rank 0 speaks for every rank (see the module's docstring).
    """

    def __init__(
        self,
        bus_url: str,
        run_id: str | None = None,
        *,
        namespace: str = bus.DEFAULT_NAMESPACE,
        config: Mapping[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        stop_sync_every: int = 10,
        publish_every: int = 1,
        policy: str | int = "any",
        barrier: bool = False,
        barrier_timeout: float = 30.0,
        heartbeat_timeout: float = 10.0,
        secret: str | None = None,
        resumed_from: str | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        bus_options: Mapping[str, Any] | None = None,
        publisher: ThreadedPublisher | None = None,
        probes: Sequence[str | Probe] = (),
        run_info: Mapping[str, Any] | None = None,
        sweep: Mapping[str, Any] | None = None,
    ) -> None:
        self.rank = _number("rank", rank, minimum=0, integer=True)
        self.world_size = _number("world_size", world_size, minimum=1, integer=True)
        if rank >= world_size:
            raise ValueError(f"BusRun rank {rank} must be below world_size {world_size}")
        self.publish_every = _number("publish_every", publish_every, minimum=1, integer=True)
        self.stop_sync_every = _number("stop_sync_every", stop_sync_every, minimum=1, integer=True)
        self.policy = parse_policy(policy, "BusRun policy")
        self.barrier = bool(barrier)
        self.barrier_timeout = float(_number("barrier_timeout", barrier_timeout, minimum=0))
        self.heartbeat_timeout = float(
            _number("heartbeat_timeout", heartbeat_timeout, minimum=1e-3)
        )
        self.bus_url = bus_url
        # Each rank's in-memory bus is its own: rank 0 publishes the job as one rank's run.
        self.speaks_for_ranks = self.world_size > 1 and bus_url.startswith("memory:")
        self.run_id = run_id if run_id is not None else bus.new_id()
        self.namespace = namespace
        self.topics = Topics(namespace)
        self.topics.events(self.run_id)  # refuses a run id unusable in a topic name, now
        # Counts from start() to finish(); checkpoint it (in to_save) to count on after a resume.
        self.clock = RunClock(self.run_id)
        # Before any thread starts: a rank that disagrees with its process group is refused.
        self._agreement = self._rank_agreement()
        self.source = f"trainer:{rank}"
        self.secret = secret if secret is not None else (os.environ.get(SECRET_ENV) or None)
        self.config = _native_config(config)
        self.resumed_from = None if resumed_from is None else str(resumed_from)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir).resolve()
        # Where the trainer keeps the run's files; a tracking worker that sees it writes there.
        self.run_dir = None if run_dir is None else Path(run_dir).resolve()
        self.probes = Probes.load(probes, lambda i: f"BusRun probes[{i}]")
        # More RUN_STARTED keys (a framework adapter's `framework`, a run `name`, `project`).
        self.run_info = _native_config(run_info, "run_info")
        # A sweep's trial says so in its RUN_STARTED: {"id", "trial", "params"}.
        self.sweep = None if sweep is None else bus.to_native(dict(sweep))
        verifier = Verifier(self.secret)  # refuses an empty secret before any thread starts
        options = dict(bus_options or {})
        self._owns_publisher = publisher is None
        linger = PUBLISH_LINGER_MEMORY if bus_url.startswith("memory:") else PUBLISH_LINGER
        self.publisher = publisher or ThreadedPublisher(
            lambda: open_bus(bus_url, **options), flush_interval=linger
        )
        self.sender = Sender(self.publisher, self.topics, self.run_id, self.source)
        self.sender.muted = self.speaks_for_ranks and self.rank != 0
        self.control = ControlState(
            self.run_id,
            policy=self.policy,
            barrier=self.barrier,
            heartbeat_timeout=self.heartbeat_timeout,
            verifier=verifier,
            can_checkpoint=lambda: self._checkpointer is not None,
        )
        book = self.control.book
        self.sender.voters_waiting = lambda: not self.barrier and bool(book.registered)
        self._reader = ControlReader(
            self.control,
            topic=self.topics.control(self.run_id),
            dead_letter_topic=self.topics.dead_letter(),
            source=self.source,
        )
        self._reader_future: concurrent.futures.Future[None] | None = None
        self.links: list[EngineLink] = []
        self._checkpointer: CheckpointService | None = None
        self._boundaries: Boundaries
        if self._agreement is not None:
            self._boundaries = RankBoundaries(
                self.run_id,
                self.control,
                agreement=self._agreement,
                every=self.stop_sync_every,
                rank=self.rank,
                source=self.source,
                barrier=self.barrier,
                barrier_timeout=self.barrier_timeout,
                checkpointer=lambda: self._checkpointer,
                before_barrier=self._flush_for_barrier,
            )
        else:
            self._boundaries = Boundaries(
                self.run_id,
                self.control,
                barrier=self.barrier,
                barrier_timeout=self.barrier_timeout,
                checkpointer=lambda: self._checkpointer,
                before_barrier=self._flush_for_barrier,
            )
        self._phase = "new"  # -> "started" -> "finished" -> "closed"
        self._failure: BaseException | None = None  # what ended the primary's run, if anything
        self._end: RunEnd | None = None

    # ---- set-up -----------------------------------------------------------------------------

    @property
    def primary(self) -> Engine | None:
        """The first engine attached: its progress stamps envelopes, stop signals stop it."""
        return self.links[0].engine if self.links else None

    @property
    def stop_cause(self) -> StopCause | None:
        """The control signal that stopped the primary engine, once one has."""
        return self._boundaries.stop_cause

    @property
    def barriers(self) -> list[BarrierResult]:
        """One record per barrier passed (barrier mode): who was counted, waited for, tallied."""
        return list(self._boundaries.barriers)

    @property
    def _published_world_size(self) -> int:
        """The world size the bus's readers see: 1 when rank 0 speaks for every rank."""
        return 1 if self.speaks_for_ranks else self.world_size

    @property
    def agreements(self) -> int:
        """How many times the ranks agreed on stops and checkpoints (0 with one rank)."""
        return 0 if self._agreement is None else self._agreement.agreements

    @property
    def agreement_seconds(self) -> float:
        """Seconds this rank spent in the agreements' collectives (0.0 with one rank)."""
        return 0.0 if self._agreement is None else self._agreement.seconds

    @property
    def checkpoint_stats(self) -> list[CheckpointStat]:
        """One record per checkpoint taken: loop-blocked seconds, write seconds, file."""
        return [] if self._checkpointer is None else list(self._checkpointer.stats)

    def attach(self, engine: Engine, split: str = PRIMARY_SPLIT) -> None:
        """Publish `engine`'s lifecycle under `split`; the first engine attached is the primary."""
        if not isinstance(split, str) or not split:
            raise ValueError(f"attach split must be a non-empty str, got {split!r}")
        for link in self.links:
            if link.engine is engine:
                raise ValueError(
                    f"this engine is already attached to run {self.run_id} as {link.split!r}"
                )
            if link.split == split:
                raise ValueError(
                    f"split {split!r} of run {self.run_id} is already taken by another engine; "
                    "give each attached engine its own split"
                )
        if self._phase not in ("new", "started"):
            raise RuntimeError(f"run {self.run_id} has finished: attach engines before finish()")
        is_primary = not self.links
        link = EngineLink(
            engine,
            split,
            self.sender,
            self.publish_every,
            rank=self.rank,
            world_size=self._published_world_size,
            before_run=self._check_running,
            on_exception=self._primary_failed if is_primary else None,
            reduce=self.speaks_for_ranks,
            probes=self.probes,
        )
        link.attach()
        self.links.append(link)
        if is_primary:
            self.sender.primary = engine
            self._boundaries.attach(engine)
            if self._checkpointer is not None:
                self._checkpointer.attach(engine)

    def checkpoint(
        self,
        to_save: Mapping[str, Any],
        every: int = 1,
        unit: str = "epoch",
        directory: str | os.PathLike[str] | None = None,
        name: str = "checkpoint",
        *,
        max_pending: int = 2,
        overlap: bool = True,
    ) -> None:
        """Checkpoint `to_save` every `every` epochs (or iterations) of the primary, on request
        (CHECKPOINT_REQUEST) and at finish(); written off the training thread.

        `overlap`: copy parameters and optimizer state while the next step runs, up to its
        optimizer step (trainer.bridge.staging); False copies everything at the boundary.
        """
        self._check_can_add_checkpointer()
        chosen = directory if directory is not None else self.checkpoint_dir
        if chosen is None:
            raise ValueError(
                "checkpoint() needs a directory: pass directory= or BusRun(checkpoint_dir=...)"
            )
        self.checkpoint_dir = Path(chosen).resolve()
        checkpointer = Checkpointer(
            self.sender,
            to_save,
            every=every,
            unit=unit,
            directory=self.checkpoint_dir,
            name=name,
            max_pending=max_pending,
            overlap=overlap,
            # Rank 0 writes; the other ranks take part (collective state_dicts) and drop it.
            write=self.rank == 0,
        )
        self.checkpoint_with(checkpointer)

    def checkpoint_with(self, checkpointer: CheckpointService) -> None:
        """Serve checkpoints (scheduled, requested, final) with `checkpointer` instead of
        `checkpoint()`'s own: e.g. another framework's saving (trainer.adapters)."""
        self._check_can_add_checkpointer()
        self._checkpointer = checkpointer
        if self.primary is not None:
            checkpointer.attach(self.primary)

    def _check_can_add_checkpointer(self) -> None:
        if self._checkpointer is not None:
            raise RuntimeError(f"run {self.run_id} already checkpoints; call checkpoint() once")
        if self._phase != "new":
            raise RuntimeError(
                "call checkpoint() before start(): RUN_STARTED announces the checkpoint directory"
            )

    # ---- start and finish -------------------------------------------------------------------

    def start(self) -> None:
        """Announce the run (RUN_STARTED) and start obeying the control topic."""
        if self._phase != "new":
            raise RuntimeError(f"run {self.run_id} was already started")
        if self._checkpointer is not None:
            self._checkpointer.prepare()
        self.control.started_at = time.time()
        self.clock.start()
        self._reader_future = self.publisher.submit(self._reader.run)
        data = {
            "config": self.config,
            "rank": self.rank,
            "world_size": self._published_world_size,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "resumed_from": self.resumed_from,
            "checkpoint_dir": None if self.checkpoint_dir is None else str(self.checkpoint_dir),
            "run_dir": None if self.run_dir is None else str(self.run_dir),
            "namespace": self.namespace,
            # Voters (and what they score) read at once when the trainer waits for them.
            "barrier": self.barrier,
        }
        if self.speaks_for_ranks:
            data["reduced_ranks"] = self.world_size
        if self.sweep is not None:
            data["sweep"] = self.sweep
        data.update({k: v for k, v in self.run_info.items() if k not in data})
        self._announce(RUN_STARTED, data)
        # Written now, not a linger later: workers join a run (and voters count) only once
        # they have seen its RUN_STARTED, and a short epoch may end within one linger.
        if not self.sender.muted:
            self.publisher.hurry()
        self._phase = "started"
        # Voters that registered before this start must count from the first boundary on.
        deadline = time.monotonic() + CATCH_UP_TIMEOUT
        while not self._reader.caught_up.wait(0.05):
            if self._reader_future.done():
                self._reader_future.result()  # a reader that died raises its error here
            if time.monotonic() > deadline:
                log.warning(
                    "run %s: the control reader has not caught up with %s after %.0f s; "
                    "training starts anyway",
                    self.run_id,
                    self._reader.topic,
                    CATCH_UP_TIMEOUT,
                )
                break

    def finish(self, error: BaseException | None = None) -> RunEnd:
        """End the run: final checkpoint, pending writes, RUN_FINISHED, publisher flushed."""
        if self._end is not None:
            return self._end
        if self._phase == "new":
            raise RuntimeError(f"finish() of run {self.run_id} before start()")
        try:
            end = self._outcome(error)
            self._final_checkpoint(end)
            self.clock.stop()
            end = replace(end, duration_s=self.clock.seconds)
            data = {
                "status": end.status,
                "reason": end.reason,
                "by": end.by,
                "voter": end.voter,
                "epochs": end.epochs,
                "iteration": end.iteration,
                "duration_s": end.duration_s,
            }
            self._announce(RUN_FINISHED, data)
            self._end = end
            try:
                self.publisher.flush(FLUSH_TIMEOUT)
            except (TimeoutError, bus.BusError) as exc:
                log.error("run %s: RUN_FINISHED may not have reached the bus: %s", self.run_id, exc)
        finally:
            self._phase = "finished"
            self._stop_reader()
        return end

    def close(self) -> None:
        """Finish the run if that was not done (as failed), stop the threads, close the bus."""
        if self._phase == "closed":
            return
        try:
            if self._phase == "started":
                self.finish(RuntimeError("the run was closed without finish()"))
        finally:
            self._phase = "closed"
            self._stop_reader()
            if self._checkpointer is not None:
                self._checkpointer.close(WRITE_TIMEOUT)
            if self._owns_publisher:
                self.publisher.close(FLUSH_TIMEOUT)

    def __enter__(self) -> BusRun:
        self.start()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self.finish(exc)
        finally:
            self.close()

    # ---- internals --------------------------------------------------------------------------

    def _rank_agreement(self) -> StopAgreement | None:
        """The agreement among the ranks, when there are several in an initialised group."""
        if self.world_size == 1:
            return None  # one rank: torch.distributed is not even imported
        from trainer import distributed

        rank, size = distributed.world()
        if size == 1:
            log.warning(
                "run %s: rank %d of %d without an initialised torch.distributed process group: "
                "stops are not agreed with the other ranks (call "
                "trainer.distributed.init_from_env() before BusRun)",
                self.run_id,
                self.rank,
                self.world_size,
            )
            return None
        if (rank, size) != (self.rank, self.world_size):
            raise ValueError(
                f"BusRun rank={self.rank}, world_size={self.world_size} disagree with the "
                f"torch.distributed process group (rank {rank} of {size}); pass the group's "
                "(trainer.distributed.world())"
            )
        return distributed.StopAgreement()

    def _flush_for_barrier(self) -> None:
        """Write this epoch's events now: the voters vote on them while the barrier waits."""
        try:
            self.publisher.flush(self.barrier_timeout)
        except (TimeoutError, bus.BusError) as exc:
            log.warning("run %s: events not yet written before a barrier: %s", self.run_id, exc)

    def _announce(self, type: str, data: dict[str, Any], at: tuple[int, int] | None = None) -> None:
        """Send the same envelope to the run's events topic and to the registry of runs."""
        env = self.sender.envelope(type, data, at)
        self.sender.publish(self.sender.events_topic, env)
        self.sender.publish(self.sender.registry_topic, env)

    def _check_running(self) -> None:
        if self._phase != "started":
            state = "before BusRun.start()" if self._phase == "new" else "after BusRun.finish()"
            raise RunNotStarted(
                f"an engine attached to run {self.run_id} was started {state}: call run.start() "
                "(or enter `with run:`) before engine.run(), and finish() after it"
            )

    def _stop_reader(self) -> None:
        self._reader.stop()
        future = self._reader_future
        if future is None or future.done():
            return
        try:
            future.result(timeout=self._reader.block + FLUSH_TIMEOUT)
        except Exception as exc:
            log.error("run %s: the control reader ended with %r", self.run_id, exc)

    def _outcome(self, error: BaseException | None) -> RunEnd:
        primary = self.primary
        epochs = primary.state_dict()["epochs_completed"] if primary is not None else 0
        iteration = primary.state.iteration if primary is not None else 0
        failure = error if error is not None else self._failure
        if failure is not None:
            message = str(failure)
            reason = type(failure).__name__ + (f": {message}" if message else "")
            return RunEnd("failed", reason, None, epochs, iteration)
        if self._boundaries.terminated:
            cause = self._boundaries.stop_cause
            if cause is None:
                said = primary.stop_reason if primary is not None else None
                reason = said or "terminated by the program"
                return RunEnd("terminated", reason, None, epochs, iteration)
            return RunEnd("terminated", cause.reason, cause.by, epochs, iteration, cause.voter)
        return RunEnd("completed", "completed", None, epochs, iteration)

    def _final_checkpoint(self, end: RunEnd) -> None:
        checkpointer, primary = self._checkpointer, self.primary
        if checkpointer is None:
            return
        # A failed run's state is whatever the exception left; the last good one is on disk.
        if end.status != "failed" and primary is not None and primary.state.iteration > 0:
            # A run that ended with an epoch (not in the middle of one) ends after that epoch's
            # EPOCH_COMPLETED, validation included: its metrics score this checkpoint too.
            at_epoch_end = primary.state_dict()["epoch_iteration"] == 0
            try:
                checkpointer.take(primary, "final", epoch_end=at_epoch_end)
            except Exception as exc:
                if self._agreement is None:
                    raise
                # A lost rank fails the collective state_dicts (DistributedRNGState): the run's
                # end must still reach the bus, and the last agreed checkpoint is on disk.
                log.error(
                    "run %s: rank %d could not take the final checkpoint with the other ranks: %s",
                    self.run_id,
                    self.rank,
                    exc,
                )
        if not checkpointer.wait(WRITE_TIMEOUT):
            log.error(
                "run %s: checkpoint writes still pending after %.0f s; RUN_FINISHED goes out "
                "without them",
                self.run_id,
                WRITE_TIMEOUT,
            )

    def _primary_failed(self, engine: Engine, exc: BaseException) -> None:
        self._failure = exc
