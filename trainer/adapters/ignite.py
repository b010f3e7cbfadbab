"""PyTorch Ignite's Engine on the bus: `attach_bus(trainer, ...)`.

```python
from trainer.adapters.ignite import attach_bus

handle = attach_bus(trainer, "redis://localhost:6379/0", evaluator=evaluator, config=cfg)
trainer.run(loader, max_epochs=10)     # RUN_STARTED at its start ... RUN_FINISHED at its end
print(handle.end)                      # how it ended: status, reason, by
```

The trainer is the split "train", each evaluator a split of its own ("val" for a single one),
as with our own bridge. Published: the lifecycle of each, ITERATION_COMPLETED with the step's
scalar outputs (`publish_every`), EPOCH_COMPLETED with `engine.state.metrics`, EXCEPTION_RAISED,
CHECKPOINT_READY for every file a given `Checkpoint` saves, RUN_FINISHED. Control is applied at
the trainer's ITERATION_COMPLETED and at its EPOCH_COMPLETED (after the evaluators' runs, where
barrier mode waits for the votes on the epoch): a stop calls `trainer.terminate()`, a
CHECKPOINT_REQUEST saves through Ignite's `Checkpoint` and the given one's `DiskSaver`.

Our EPOCH_COMPLETED and COMPLETED handlers are moved behind the others when each engine starts,
so the metrics Ignite computes there, the evaluators run there and the checkpoints saved there
come before them, whatever the order the user attached things in (before `run()`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bus.messages import PRIMARY_SPLIT
from trainer.adapters.core import CONTINUE, LoopBridge, StepDecision
from trainer.adapters.extras import require
from trainer.adapters.ignite_checkpoints import IgniteSaves
from trainer.bridge import RunEnd

_engine = require(
    "ignite.engine", adapter="trainer.adapters.ignite", framework="PyTorch Ignite", extra="ignite"
)
_checkpoint = require(
    "ignite.handlers.checkpoint",
    adapter="trainer.adapters.ignite",
    framework="PyTorch Ignite",
    extra="ignite",
)
Engine, Events = _engine.Engine, _engine.Events
CheckpointEvents = _checkpoint.CheckpointEvents

log = logging.getLogger(__name__)

FRAMEWORK = "ignite"
VAL_SPLIT = "val"


def _splits(evaluator: Any) -> dict[str, Any]:
    """{split: evaluator engine} from None, one engine ("val") or a mapping."""
    if evaluator is None:
        return {}
    if isinstance(evaluator, Engine):
        return {VAL_SPLIT: evaluator}
    if not isinstance(evaluator, Mapping):
        raise TypeError(
            f"attach_bus evaluator must be an ignite Engine or a mapping of split name to "
            f"Engine, got {type(evaluator).__name__}"
        )
    for split, engine in evaluator.items():
        if not isinstance(split, str) or not split or split == PRIMARY_SPLIT:
            raise ValueError(
                f"attach_bus evaluator split {split!r} must be a non-empty str other than "
                f"{PRIMARY_SPLIT!r} (the trainer's)"
            )
        if not isinstance(engine, Engine):
            raise TypeError(
                f"attach_bus evaluator[{split!r}] is a {type(engine).__name__}, not an Engine"
            )
    return dict(evaluator)


def _checkpoints(checkpoint: Any) -> list[Any]:
    """The given Checkpoint handler(s) as a list."""
    if checkpoint is None:
        return []
    items = list(checkpoint) if isinstance(checkpoint, Sequence) else [checkpoint]
    for item in items:
        if not isinstance(item, _checkpoint.Checkpoint):
            raise TypeError(
                f"attach_bus checkpoint must be ignite.handlers.Checkpoint (or a list of them), "
                f"got {type(item).__name__}"
            )
    return items


def _last(engine: Any, event: Any, handler: Any) -> None:
    """(Re)attach `handler` to `event` behind every handler attached so far."""
    if engine.has_event_handler(handler, event):
        engine.remove_event_handler(handler, event)
    engine.add_event_handler(event, handler)


class BusHandle:
    """What attach_bus attached: the run on the bus (`bridge`), how it ended (`end`), `detach()`."""

    def __init__(
        self,
        trainer: Any,
        evaluators: dict[str, Any],
        bridge: LoopBridge,
        saves: IgniteSaves,
    ) -> None:
        self.trainer = trainer
        self.evaluators = evaluators
        self.bridge = bridge
        self.saves = saves
        self.end: RunEnd | None = None
        self._started = False
        self._terminated = False
        self._attached: list[tuple[Any, Any, Any]] = []

    @property
    def run_id(self) -> str:
        """The run's id on the bus."""
        return self.bridge.run_id

    def _on(self, engine: Any, event: Any, handler: Any) -> None:
        engine.add_event_handler(event, handler)
        self._attached.append((engine, event, handler))

    def attach(self) -> None:
        """Attach the handlers to the trainer and the evaluators."""
        trainer, bridge = self.trainer, self.bridge
        self._on(trainer, Events.STARTED, self._started_run)
        self._on(trainer, Events.EPOCH_STARTED, self._train_epoch_started)
        if bridge.world_size > 1:
            # The ranks' agreement runs during the step (launched here, settled after it).
            self._on(trainer, Events.ITERATION_STARTED, self._train_step_started)
        self._on(trainer, Events.ITERATION_COMPLETED, self._train_step)
        self._on(trainer, Events.EPOCH_COMPLETED, self._train_epoch_completed)
        self._on(trainer, Events.TERMINATE, self._train_terminated)
        self._on(trainer, Events.COMPLETED, self._train_completed)
        self._on(trainer, Events.EXCEPTION_RAISED, self._exception)
        for split, evaluator in self.evaluators.items():
            self._attach_split(split, evaluator)
        for engine in (trainer, *self.evaluators.values()):
            if not engine.has_registered_events(CheckpointEvents.SAVED_CHECKPOINT):
                engine.register_events(*CheckpointEvents)
            self._on(engine, CheckpointEvents.SAVED_CHECKPOINT, self.saves.announce_new)

    def _attach_split(self, split: str, evaluator: Any) -> None:
        bridge = self.bridge

        def started(engine: Any) -> None:
            _last(engine, Events.EPOCH_COMPLETED, epoch_completed)
            bridge.split_started(split, max_epochs=engine.state.max_epochs)

        def epoch_started(engine: Any) -> None:
            s = engine.state
            bridge.epoch_started(split, s.epoch - 1, epoch_length=s.epoch_length)

        def step(engine: Any) -> None:
            bridge.step_completed(
                split, outputs=engine.state.output, iteration=engine.state.iteration
            )

        def epoch_completed(engine: Any) -> None:
            bridge.epoch_completed(split, metrics=engine.state.metrics)

        terminated: list[bool] = []

        def terminate(engine: Any) -> None:
            terminated.append(True)

        def completed(engine: Any) -> None:
            bridge.split_completed(split, terminated=bool(terminated))
            terminated.clear()

        self._on(evaluator, Events.STARTED, started)
        self._on(evaluator, Events.EPOCH_STARTED, epoch_started)
        self._on(evaluator, Events.ITERATION_COMPLETED, step)
        self._on(evaluator, Events.EPOCH_COMPLETED, epoch_completed)
        self._on(evaluator, Events.TERMINATE, terminate)
        self._on(evaluator, Events.COMPLETED, completed)

    def detach(self) -> None:
        """Remove every handler attach_bus attached (finish the run first, or it is closed as
        failed)."""
        for engine, event, handler in self._attached:
            if engine.has_event_handler(handler, event):
                engine.remove_event_handler(handler, event)
        self._attached.clear()
        if self.end is None:
            self.bridge.close()

    # ---- the trainer's handlers --------------------------------------------------------------

    def _started_run(self, engine: Any) -> None:
        if self._started:
            raise RuntimeError(
                f"run {self.run_id} on the bus has finished: a new trainer.run() needs a new "
                "attach_bus() (one bus run per run)"
                if self.end is not None
                else f"run {self.run_id} on the bus is already running"
            )
        self._started = True
        # Behind the user's handlers: the evaluators' runs, metrics and saves come first.
        _last(engine, Events.EPOCH_COMPLETED, self._train_epoch_completed)
        _last(engine, Events.COMPLETED, self._train_completed)
        self.bridge.start()
        s = engine.state
        self.bridge.split_started(
            PRIMARY_SPLIT, max_epochs=s.max_epochs, epoch_length=s.epoch_length
        )

    def _train_epoch_started(self, engine: Any) -> None:
        s = engine.state
        self.bridge.epoch_started(
            PRIMARY_SPLIT, s.epoch - 1, max_epochs=s.max_epochs, epoch_length=s.epoch_length
        )

    def _train_step_started(self, engine: Any) -> None:
        self.bridge.step_started(PRIMARY_SPLIT, engine.state.iteration)

    def _train_step(self, engine: Any) -> None:
        d = self.bridge.step_completed(
            PRIMARY_SPLIT, outputs=engine.state.output, iteration=engine.state.iteration
        )
        if d is not CONTINUE:
            self._act(engine, d)

    def _train_epoch_completed(self, engine: Any) -> None:
        d = self.bridge.epoch_completed(PRIMARY_SPLIT, metrics=engine.state.metrics)
        if d is not CONTINUE:
            self._act(engine, d)

    def _act(self, engine: Any, d: StepDecision) -> None:
        if d.checkpoint:
            self.saves.save_requested(engine)
        if d.stop and not engine.should_terminate:
            log.info(
                "run %s: stopping Ignite at iteration %d (%s from %r)",
                self.run_id,
                engine.state.iteration,
                d.reason,
                d.by,
            )
            engine.terminate()

    def _train_terminated(self, engine: Any) -> None:
        self._terminated = True
        if engine.should_terminate == "skip_completed":  # no COMPLETED will come
            self._finish(None)

    def _train_completed(self, engine: Any) -> None:
        self._finish(None)

    def _exception(self, engine: Any, exc: BaseException) -> None:
        if self.end is None and self._started:
            self.bridge.exception(exc)
            self._finish(exc)
        # A handler of EXCEPTION_RAISED tells Ignite the exception is handled: unless the user
        # attached handlers of their own, it is not, so it goes on to the caller of run().
        handlers = engine._event_handlers.get(Events.EXCEPTION_RAISED, [])
        if len(handlers) <= 1:
            raise exc

    def _finish(self, error: BaseException | None) -> None:
        if self.end is not None:
            return
        if error is None:
            self.bridge.split_completed(PRIMARY_SPLIT, terminated=self._terminated)
        self.end = self.bridge.finish(error)


def attach_bus(
    engine: Any,
    bus: str | None = None,
    *,
    evaluator: Any = None,
    run_id: str | None = None,
    config: Mapping[str, Any] | None = None,
    name: str | None = None,
    checkpoint: Any = None,
    to_save: Mapping[str, Any] | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    publish_every: int = 1,
    policy: str | int = "any",
    barrier: bool = False,
    barrier_timeout: float = 30.0,
    heartbeat_timeout: float = 10.0,
    stop_sync_every: int = 10,
    secret: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    workers: Sequence[str] | None = None,
) -> BusHandle:
    """Publish an Ignite trainer (and its evaluators) on the bus and obey its control.

    `bus` is a URL, or None for the embedded default (in-memory bus, default workers in this
    process, a run directory under runs/). `evaluator`: an Engine (split "val") or
    {split: Engine}. `checkpoint`: the Checkpoint handler(s) you attached, whose files are
    announced and whose objects and DiskSaver serve CHECKPOINT_REQUESTs (or give `to_save`,
    saved under `checkpoint_dir`/ignite). The rest are LoopBridge's settings.
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"attach_bus needs an ignite.engine.Engine, got {type(engine).__name__}")
    evaluators = _splits(evaluator)
    checkpoints = _checkpoints(checkpoint)
    serves = bool(checkpoints) or to_save is not None
    bridge = LoopBridge(
        bus,
        run_id,
        config=config,
        name=name,
        framework=FRAMEWORK,
        publish_every=publish_every,
        policy=policy,
        barrier=barrier,
        barrier_timeout=barrier_timeout,
        heartbeat_timeout=heartbeat_timeout,
        stop_sync_every=stop_sync_every,
        secret=secret,
        rank=rank,
        world_size=world_size,
        checkpoint_dir=checkpoint_dir,
        run_dir=run_dir,
        serves_checkpoints=serves,
        workers=workers,
    )
    try:
        directory = bridge.checkpoint_dir if checkpoint_dir is None else Path(checkpoint_dir)
        saves = IgniteSaves(bridge, engine, checkpoints, to_save, directory)
        handle = BusHandle(engine, evaluators, bridge, saves)
        handle.attach()
    except BaseException:
        bridge.close()
        raise
    return handle
