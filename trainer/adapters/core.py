"""LoopBridge: another framework's training loop on the bus, through the bridge's own code.

An adapter (Lightning, Hugging Face, Ignite) calls the LoopBridge from the framework's hooks;
the LoopBridge fires those points as the events of a `DrivenEngine` per split, attached to a
`trainer.bridge.BusRun` like any Engine. So the envelopes (4.1 of the design: lifecycle,
`publish_every` coalescing, EPOCH_COMPLETED metrics and metric states, RUN_FINISHED's cause),
the control topic (signing, the vote tally, barrier mode) and, with several ranks, the ranks'
agreement on every stop come from the same code as for our own Engine.

```python
bridge = LoopBridge("redis://localhost:6379/0", config=hparams, framework="ignite")
bridge.start()                                        # RUN_STARTED
bridge.epoch_started("train", epoch)                  # STARTED (first time), EPOCH_STARTED
d = bridge.step_completed("train", outputs={"loss": loss})   # ITERATION_COMPLETED; control
if d.checkpoint: path = save(); bridge.checkpoint_ready(path, reason="requested")
if d.stop: framework_stops()                          # at the framework's next step boundary
d = bridge.epoch_completed("train", metrics={...})    # EPOCH_COMPLETED; barrier mode waits here
end = bridge.finish()                                 # COMPLETED/TERMINATE, RUN_FINISHED
```

Control is applied only on the primary split ("train"): at each `step_completed` (one attribute
read unless something is pending) and at each `epoch_completed` (there, in barrier mode, after
waiting for the voters' votes on the epoch). With several ranks the agreement is a collective
inside those calls (every `stop_sync_every` steps, and at every epoch end), so every rank must
make them at the same steps. A decided stop is reported by every later decision (`d.stop` stays
True); a checkpoint request once, on every rank at the same step.

Without a bus URL (`bus=None`) the run is the embedded default of `trainer run`: an in-memory
bus of its own, the default workers in this process, and a fresh run directory under `runs/`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bus import DEFAULT_NAMESPACE, new_id
from bus.messages import CHECKPOINT_READY, PRIMARY_SPLIT
from trainer.adapters import embedded
from trainer.adapters.driven import DrivenEngine
from trainer.adapters.plain import plain_config
from trainer.adapters.saves import REASONS, FrameworkSaves, ready_data, stage
from trainer.bridge import BusRun, RunEnd
from trainer.errors import TrainerError
from trainer.events import Events

if TYPE_CHECKING:
    from trainer.cli.embedded import EmbeddedWorkers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepDecision:
    """What the bus asks of the framework at this boundary."""

    stop: bool = False  # stop at this step boundary (stays True once decided)
    checkpoint: bool = False  # save a checkpoint now through the framework's own mechanism
    reason: str | None = None  # why the run stops (the TERMINATE's or the vote's reason)
    by: str | None = None  # the `source` of the envelope that stopped it
    voter: str | None = None  # the voter's name, when a vote stopped it


CONTINUE = StepDecision()


class _Split:
    """One split's DrivenEngine and where the framework is in it."""

    __slots__ = ("engine", "in_epoch", "in_step", "started")

    def __init__(self, engine: DrivenEngine) -> None:
        self.engine = engine
        self.started = False  # STARTED fired, COMPLETED not yet
        self.in_epoch = False  # EPOCH_STARTED fired, EPOCH_COMPLETED not yet
        self.in_step = False  # ITERATION_STARTED fired, ITERATION_COMPLETED not yet


def _default_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """`rank` and `world_size`, each defaulting to the initialised torch.distributed group's."""
    if rank is not None and world_size is not None:
        return rank, world_size
    from trainer import distributed

    group_rank, group_size = distributed.world()
    if rank is None:
        rank = group_rank
    return rank, group_size if world_size is None else world_size


class LoopBridge:
    """One training process's run on the bus, fed from another framework's loop.

    `bus`: a URL (`redis://`, `rediss://`, `memory://NAME`) or None for the embedded default
    (in-memory bus, `workers` in this process: default the config schema's). `framework` and
    `name` go into RUN_STARTED. `policy`, `barrier`, `barrier_timeout`, `heartbeat_timeout`,
    `stop_sync_every`, `publish_every` and `secret` (default: TRAINER_BUS_SECRET) are BusRun's.
    `rank`/`world_size` default to the initialised torch.distributed group's. With
    `serves_checkpoints` False a CHECKPOINT_REQUEST is ignored (and logged) as for a run without
    checkpoints. `checkpoint_dir` is where the checkpoint worker files announced checkpoints.
    """

    def __init__(
        self,
        bus: str | None = None,
        run_id: str | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
        framework: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        publish_every: int = 1,
        policy: str | int = "any",
        barrier: bool = False,
        barrier_timeout: float = 30.0,
        heartbeat_timeout: float = 10.0,
        stop_sync_every: int = 10,
        secret: str | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        serves_checkpoints: bool = True,
        workers: Sequence[str] | None = None,
    ) -> None:
        rank, world_size = _default_world(rank, world_size)
        self.framework = framework
        self.embedded = bus is None
        if bus is not None and not isinstance(bus, str):
            raise TypeError(
                f"LoopBridge bus must be a URL (redis://..., memory://NAME) or None for the "
                f"embedded default, got {bus!r}"
            )
        if self.embedded and run_dir is None and rank == 0:
            run_dir = embedded.fresh_run_dir(name or framework or "run")
        if self.embedded and run_id is None and run_dir is not None:
            run_id = Path(run_dir).name  # as `trainer run` names its runs
        if self.embedded and checkpoint_dir is None and run_dir is not None:
            checkpoint_dir = embedded.checkpoint_dir_of(Path(run_dir))
        run_id = run_id if run_id is not None else new_id()
        url = bus if bus is not None else f"memory://{run_id}"
        info: dict[str, Any] = {}
        if framework is not None:
            info["framework"] = framework
        if name is not None:
            info["name"] = name
        self.run = BusRun(
            url,
            run_id,
            namespace=namespace,
            config=plain_config(config),
            rank=rank,
            world_size=world_size,
            stop_sync_every=stop_sync_every,
            publish_every=publish_every,
            policy=policy,
            barrier=barrier,
            barrier_timeout=barrier_timeout,
            heartbeat_timeout=heartbeat_timeout,
            secret=secret,
            checkpoint_dir=checkpoint_dir,
            run_dir=run_dir,
            run_info=info,
        )
        self._worker_kinds = list(workers) if workers is not None else embedded.default_workers()
        self._workers: EmbeddedWorkers | None = None
        self._saves: FrameworkSaves | None = None
        if serves_checkpoints:
            self._saves = FrameworkSaves()
            self.run.checkpoint_with(self._saves)
        self._primary = _Split(DrivenEngine())
        self._splits: dict[str, _Split] = {PRIMARY_SPLIT: self._primary}
        self.run.attach(self._primary.engine, PRIMARY_SPLIT)  # first: the primary
        self._standing = CONTINUE  # the decision reported until control changes it
        self._end: RunEnd | None = None

    # ---- what the run is ---------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The run's id on the bus."""
        return self.run.run_id

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self.run.rank

    @property
    def world_size(self) -> int:
        """How many ranks the run has."""
        return self.run.world_size

    @property
    def run_dir(self) -> Path | None:
        """The run directory (the embedded default makes one), or None."""
        return self.run.run_dir

    @property
    def checkpoint_dir(self) -> Path | None:
        """Where the checkpoint worker files announced checkpoints (None: beside each file)."""
        return self.run.checkpoint_dir

    @property
    def decision(self) -> StepDecision:
        """The standing decision: CONTINUE, or the stop once one was decided."""
        return self._standing

    def engine(self, split: str = PRIMARY_SPLIT) -> DrivenEngine:
        """The DrivenEngine of `split` (attach our handlers or metrics to it, if you like)."""
        return self._split(split).engine

    # ---- the run's start and end -------------------------------------------------------------

    def start(self) -> None:
        """RUN_STARTED, and obey the control topic from now on (embedded workers first)."""
        if self.embedded and self.rank == 0 and self._workers is None:
            # Before RUN_STARTED, as `trainer run` does: voters count from the first boundary.
            self._workers = embedded.start_workers(self.run, self._worker_kinds)
        self.run.start()

    def finish(self, error: BaseException | None = None) -> RunEnd:
        """End the run: the splits' COMPLETED (TERMINATE if stopped), RUN_FINISHED; close."""
        if self._end is not None:
            return self._end
        try:
            if error is None:
                for split, part in self._splits.items():
                    if part.started:
                        self.split_completed(split)
            self._end = self.run.finish(error)
            if self._workers is not None:
                self._workers.wait()
        finally:
            self.close()
        return self._end

    def close(self) -> None:
        """Finish the run as failed if finish() was not called; stop the workers and threads."""
        try:
            if self._workers is not None:
                self._workers.stop()
        finally:
            self.run.close()

    def __enter__(self) -> LoopBridge:
        self.start()
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.finish(exc)

    # ---- the loop's points -------------------------------------------------------------------

    def split_started(
        self,
        split: str = PRIMARY_SPLIT,
        *,
        max_epochs: int | None = None,
        epoch_length: int | None = None,
    ) -> None:
        """STARTED of `split` (a fresh run of it: an evaluation restarts its counters)."""
        part = self._split(split)
        if part.started:
            self.split_completed(split)  # the framework never said it ended: it did
        state = part.engine.restart(max_epochs, epoch_length)
        if part is not self._primary:
            state.epoch = 0
        part.started, part.in_epoch, part.in_step = True, False, False
        part.engine.fire(Events.STARTED)

    def epoch_started(
        self,
        split: str = PRIMARY_SPLIT,
        epoch: int | None = None,
        *,
        max_epochs: int | None = None,
        epoch_length: int | None = None,
    ) -> None:
        """EPOCH_STARTED of `split`'s 0-based `epoch` (default: the one after the last)."""
        part = self._split(split)
        if not part.started:
            self.split_started(split, max_epochs=max_epochs, epoch_length=epoch_length)
        state = part.engine.state
        if max_epochs is not None:
            state.max_epochs = max_epochs
        if epoch_length is not None:
            state.epoch_length = epoch_length
        state.epoch = part.engine.state_dict()["epochs_completed"] if epoch is None else epoch
        state.epoch_iteration = 0
        part.in_epoch, part.in_step = True, False
        part.engine.fire(Events.EPOCH_STARTED)

    def step_started(self, split: str = PRIMARY_SPLIT, iteration: int | None = None) -> None:
        """ITERATION_STARTED (optional: step_completed fires it when this was not called;
        calling it lets the ranks' agreement run during the step)."""
        part = self._splits.get(split)
        if part is None or not part.in_epoch:
            part = self._open_epoch(split)
        state = part.engine.state
        state.iteration = state.iteration + 1 if iteration is None else iteration
        state.epoch_iteration += 1
        part.in_step = True
        part.engine.fire(Events.ITERATION_STARTED)

    def step_completed(
        self,
        split: str = PRIMARY_SPLIT,
        *,
        outputs: Any = None,
        epoch: int | None = None,
        iteration: int | None = None,
        epoch_iteration: int | None = None,
    ) -> StepDecision:
        """ITERATION_COMPLETED with the step's scalar `outputs`; on the primary, the boundary
        where control applies. Counters not given count on from the last step."""
        part = self._splits.get(split)
        if part is None or not part.in_epoch:
            part = self._open_epoch(split)
        engine = part.engine
        state = engine.state
        if not part.in_step:
            state.iteration = state.iteration + 1 if iteration is None else iteration
            state.epoch_iteration += 1
            engine.fire(Events.ITERATION_STARTED)
        elif iteration is not None:
            state.iteration = iteration
        part.in_step = False
        if epoch_iteration is not None:
            state.epoch_iteration = epoch_iteration
        if epoch is not None:
            state.epoch = epoch
        state.output = outputs
        engine.fire(Events.ITERATION_COMPLETED)
        if part is not self._primary:
            return self._standing
        # The whole per-step cost of control, when nothing is pending: two attribute reads.
        if engine.should_terminate or (self._saves is not None and self._saves.requested):
            return self._decide()
        return self._standing

    def epoch_completed(
        self,
        split: str = PRIMARY_SPLIT,
        *,
        metrics: Mapping[str, Any] | None = None,
        metric_states: Mapping[str, Any] | None = None,
        epoch: int | None = None,
    ) -> StepDecision:
        """EPOCH_COMPLETED with the epoch's `metrics` (name -> number) and `metric_states`
        (name -> our Metric, or its state message); on the primary, a boundary (and the
        barrier). Call it for the primary after the epoch's validation has been published."""
        part = self._splits.get(split)
        if part is None or not part.in_epoch:
            part = self._open_epoch(split)
        engine = part.engine
        if epoch is not None:
            engine.state.epoch = epoch
        engine.epoch_done(metrics or {}, _metric_objects(metric_states, split))
        part.in_epoch = part.in_step = False
        engine.fire(Events.EPOCH_COMPLETED)
        if part is not self._primary:
            return self._standing
        return self._decide()

    def split_completed(
        self, split: str = PRIMARY_SPLIT, *, terminated: bool = False, reason: str | None = None
    ) -> None:
        """COMPLETED of `split`, after TERMINATE when it stopped early (`terminated`, or a stop
        from the bus); an epoch left open gets no EPOCH_COMPLETED, as with our Engine. `reason`:
        why the framework stopped on its own (RUN_FINISHED's reason for the primary)."""
        part = self._split(split)
        if not part.started:
            return
        part.started = part.in_epoch = part.in_step = False
        if terminated and reason and not part.engine.should_terminate:
            part.engine.stop_reason = reason  # the program's stop, with its reason
        if terminated or part.engine.should_terminate:
            part.engine.fire(Events.TERMINATE)
        part.engine.fire(Events.COMPLETED)

    def exception(self, exc: BaseException, split: str = PRIMARY_SPLIT) -> None:
        """EXCEPTION_RAISED for `exc` (the framework raises it on; finish(exc) ends the run)."""
        self._split(split).engine.fire(Events.EXCEPTION_RAISED, exc)

    def checkpoint_ready(
        self,
        path: str | os.PathLike[str],
        *,
        reason: str = "scheduled",
        epoch_end: bool | None = None,
        name: str = "checkpoint",
    ) -> Path | None:
        """CHECKPOINT_READY for a checkpoint file the framework wrote; the checkpoint worker
        files a hard link (or copy) of it, the framework keeps its file. Rank 0 only (None on
        the others); returns the announced path. `epoch_end` defaults to whether the primary is
        between epochs."""
        if reason not in REASONS:
            raise ValueError(f"checkpoint_ready reason must be one of {REASONS}, got {reason!r}")
        if self.rank != 0:
            return None
        engine = self._primary.engine
        state = engine.state
        if epoch_end is None:
            epoch_end = engine.state_dict()["epoch_iteration"] == 0
        announced = stage(path, self.run.checkpoint_dir, name)
        data = ready_data(
            announced,
            epoch=state.epoch,
            iteration=state.iteration,
            name=name,
            epoch_end=epoch_end,
            reason=reason,
            framework=self.framework,
        )
        sender = self.run.sender
        env = sender.envelope(CHECKPOINT_READY, data, (state.epoch, state.iteration))
        sender.publish(sender.events_topic, env)
        return announced.path

    # ---- internals ---------------------------------------------------------------------------

    def _split(self, split: str) -> _Split:
        part = self._splits.get(split)
        if part is not None:
            return part
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be a non-empty str (e.g. 'train', 'val'), got {split!r}")
        part = _Split(DrivenEngine())
        self.run.attach(part.engine, split)
        self._splits[split] = part
        return part

    def _open_epoch(self, split: str) -> _Split:
        """The split, with an epoch open (a framework without epoch hooks for it)."""
        part = self._split(split)
        if not part.in_epoch:
            self.epoch_started(split)
        return part

    def _decide(self) -> StepDecision:
        """The decision at a primary boundary: a new stop, a checkpoint to serve, or as before."""
        standing = self._standing
        if not standing.stop and self._primary.engine.should_terminate:
            cause = self.run.stop_cause
            if cause is not None:
                standing = StepDecision(True, False, cause.reason, cause.by, cause.voter)
            else:  # not ours: the program asked (its framework stops on its own)
                standing = StepDecision(True, False, "terminated by the program")
            self._standing = standing
        if self._saves is not None and self._saves.served():
            return StepDecision(standing.stop, True, standing.reason, standing.by, standing.voter)
        return standing


def _metric_objects(states: Mapping[str, Any] | None, split: str) -> dict[str, Any]:
    """Our Metric objects for `metric_states`: given ones as they are, messages rebuilt."""
    if not states:
        return {}
    from trainer.metrics.registry import metric_from_message

    objects = {}
    for name, value in states.items():
        if isinstance(value, Mapping):
            try:
                value = metric_from_message(value, f"metric_states[{name!r}] of split {split!r}")
            except TrainerError as exc:
                log.warning("metric %r of split %r left out of metric_states: %s", name, split, exc)
                continue
        objects[str(name)] = value
    return objects
