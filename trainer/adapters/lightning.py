"""BusCallback: a PyTorch Lightning run on the bus, obeying its control at step boundaries.

```python
trainer = L.Trainer(max_epochs=10, callbacks=[BusCallback("redis://localhost:6379/0")])
trainer.fit(model, train_loader, val_loader)
```

Every message is the bridge's (`trainer.adapters.core.LoopBridge`): RUN_STARTED with the
LightningModule's hyperparameters and the Trainer's settings as `config`; the `train` split's
epochs and steps (ITERATION_COMPLETED with `training_step`'s scalar outputs) and a `val` split
per validation run (the sanity check is not published); EPOCH_COMPLETED with the epoch's logged
metrics (`trainer.adapters.lightning_metrics`); CHECKPOINT_READY for every checkpoint Lightning
writes (announced by a wrapper around the strategy's CheckpointIO, after the file is written);
EXCEPTION_RAISED; RUN_FINISHED.

Control: a stop (TERMINATE, the vote tally, barrier mode at each epoch's end) sets
`trainer.should_stop` at the next `on_train_batch_end` or `on_train_epoch_end`, and Lightning ends
the epoch there (running validation first, as it does for its own EarlyStopping). A
CHECKPOINT_REQUEST is served by `trainer.save_checkpoint`. Under DDP every rank decides at the
same steps (the bridge's agreement, every `stop_sync_every` steps and at every epoch's end); a
`should_stop` that the program sets on one rank only (in `training_step` or a callback) is held
back and agreed the same way, so that no rank leaves the others waiting in a collective.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.adapters.extras import require

_pl = require(
    "lightning.pytorch",
    adapter="trainer.adapters.lightning",
    framework="Lightning",
    extra="lightning",
)

from lightning.pytorch import Callback  # noqa: E402
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping  # noqa: E402
from lightning.pytorch.plugins.io import CheckpointIO  # noqa: E402

from trainer.adapters import lightning_metrics as lm  # noqa: E402
from trainer.adapters.core import LoopBridge, StepDecision  # noqa: E402
from trainer.adapters.plain import plain_value  # noqa: E402
from trainer.bridge import RunEnd  # noqa: E402

log = logging.getLogger(__name__)

FRAMEWORK = "lightning"
TRAIN, VAL = lm.TRAIN, lm.VAL
# The Trainer's settings that go into RUN_STARTED's config (those that exist in this version).
TRAINER_SETTINGS = (
    "max_epochs",
    "min_epochs",
    "max_steps",
    "min_steps",
    "accumulate_grad_batches",
    "gradient_clip_val",
    "precision",
    "check_val_every_n_epoch",
    "val_check_interval",
    "limit_train_batches",
    "limit_val_batches",
    "log_every_n_steps",
    "num_devices",
    "num_nodes",
    "world_size",
    "default_root_dir",
)


def trainer_settings(trainer: Any) -> dict[str, Any]:
    """The Trainer's settings a person would compare between runs, as plain values."""
    found: dict[str, Any] = {
        "strategy": type(trainer.strategy).__name__,
        "accelerator": type(trainer.accelerator).__name__,
        "lightning_version": getattr(_pl, "__version__", None),
    }
    for name in TRAINER_SETTINGS:
        try:
            found[name] = plain_value(getattr(trainer, name))
        except Exception:  # a property that needs a stage this Trainer is not in
            continue
    return found


def _count(value: Any) -> int | None:
    """A Lightning batch count as an int (None for an unsized loader's infinity)."""
    try:
        return int(value)
    except (OverflowError, TypeError, ValueError):
        return None


class _AnnouncingIO(CheckpointIO):
    """The strategy's CheckpointIO, announcing each file once it is written."""

    def __init__(self, inner: CheckpointIO, written: Any) -> None:
        super().__init__()
        self.inner = inner
        self._written = written

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        """Write through the wrapped CheckpointIO, then announce the file."""
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)
        self._written(path)

    def load_checkpoint(self, path: Any, map_location: Any = None, **kwargs: Any) -> Any:
        """The wrapped CheckpointIO's load."""
        return self.inner.load_checkpoint(path, map_location=map_location, **kwargs)

    def remove_checkpoint(self, path: Any) -> None:
        """The wrapped CheckpointIO's remove (the filed link stays the worker's)."""
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        """The wrapped CheckpointIO's teardown."""
        self.inner.teardown()


class BusCallback(Callback):
    """Publishes a Lightning `fit` as a run on the bus and obeys the run's control.

    `bus`: a Redis URL (`redis://`, `rediss://`), `memory://NAME`, or None for the embedded
    default (an in-memory bus with `trainer run`'s default workers in this process, writing
    `runs/<name>-...`). `config` is merged over RUN_STARTED's config (`hparams`, `trainer`),
    e.g. `{"early_stopping": {"metric": "loss", "mode": "min"}}` for the workers that read their
    settings from the run's config. The other options are the bridge's: `publish_every`,
    `policy`, `barrier`, `barrier_timeout`, `heartbeat_timeout`, `stop_sync_every`, `secret`
    (default TRAINER_BUS_SECRET), `checkpoint_dir`, `run_dir`, `workers`. After `fit`, `end`
    says how the run ended and `run_id` names it.
    """

    def __init__(
        self,
        bus: str | None = None,
        run_id: str | None = None,
        *,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        publish_every: int = 1,
        policy: str | int = "any",
        barrier: bool = False,
        barrier_timeout: float = 30.0,
        heartbeat_timeout: float = 10.0,
        stop_sync_every: int = 10,
        secret: str | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        workers: list[str] | None = None,
    ) -> None:
        super().__init__()
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"BusCallback config must be a mapping, got {type(config).__name__}")
        self.bus = bus
        self._given_run_id = run_id  # None: each fit is a new run with an id of its own
        self.run_id = run_id
        self.name = name
        self.config = dict(config or {})
        self.options: dict[str, Any] = {
            "publish_every": publish_every,
            "policy": policy,
            "barrier": barrier,
            "barrier_timeout": barrier_timeout,
            "heartbeat_timeout": heartbeat_timeout,
            "stop_sync_every": stop_sync_every,
            "secret": secret,
            "checkpoint_dir": checkpoint_dir,
            "run_dir": run_dir,
            "workers": workers,
        }
        self.bridge: LoopBridge | None = None
        self.end: RunEnd | None = None
        self._io: _AnnouncingIO | None = None
        self._save_reason = "scheduled"
        self._stopping = False  # a stop was decided: this rank set should_stop
        self._cut_short = False  # ... before the epoch's last batch: no EPOCH_COMPLETED
        self._epoch_iteration = 0
        self._epoch_length: int | None = None
        self._ranks = 1

    # ---- the run's start and end -------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """RUN_STARTED: the module's hyperparameters and the Trainer's settings as config."""
        config = {
            "hparams": plain_value(dict(getattr(pl_module, "hparams", {}) or {})),
            "trainer": trainer_settings(trainer),
            "module": type(pl_module).__name__,
            **self.config,
        }
        if trainer.max_epochs and trainer.max_epochs > 0 and "train" not in self.config:
            # Where `trainer monitor` and `trainer web` read the planned epochs (progress, ETA).
            config["train"] = {"epochs": trainer.max_epochs}
        self._ranks = trainer.world_size
        bridge = LoopBridge(
            self.bus,
            self._given_run_id,
            config=config,
            name=self.name or type(pl_module).__name__.lower(),
            framework=FRAMEWORK,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            **self.options,
        )
        try:
            bridge.start()
        except BaseException:
            bridge.close()  # nothing of this fit is on the bus: Lightning raises the error on
            raise
        self.bridge, self.run_id, self.end = bridge, bridge.run_id, None
        self._stopping = self._cut_short = False
        self._last_after_others(trainer)
        strategy = trainer.strategy
        self._io = _AnnouncingIO(strategy.checkpoint_io, self._written)
        strategy.checkpoint_io = self._io

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """RUN_FINISHED: completed, or terminated (by the bus, or by the program's should_stop)."""
        bridge = self.bridge
        if bridge is None or self.end is not None:
            return
        if trainer.should_stop and not self._stopping:
            # Lightning's own EarlyStopping (or the program) ended it, on every rank alike.
            bridge.engine(TRAIN).terminate(_program_reason(trainer))
        self.end = bridge.finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """EXCEPTION_RAISED, then RUN_FINISHED as failed (Lightning raises the exception on)."""
        bridge = self.bridge
        if bridge is None or self.end is not None:
            return
        try:
            bridge.exception(exception)
        finally:
            self.end = bridge.finish(exception)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Give the strategy its CheckpointIO back; end a run that neither ended nor failed."""
        if self._io is not None and trainer.strategy.checkpoint_io is self._io:
            trainer.strategy.checkpoint_io = self._io.inner
        self._io = None
        if self.bridge is not None and self.end is None:
            self.end = self.bridge.finish(
                RuntimeError("Lightning tore the fit down before its end")
            )

    # ---- training ----------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """EPOCH_STARTED of `train` (STARTED before the first)."""
        if self.bridge is None:
            return
        self._epoch_iteration = 0
        self._epoch_length = _count(trainer.num_training_batches)
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        self.bridge.epoch_started(
            TRAIN,
            trainer.current_epoch,
            max_epochs=max_epochs,
            epoch_length=self._epoch_length,
        )

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        """With several ranks: the step's start, where an agreement may begin."""
        if self.bridge is not None and self._ranks > 1:
            self._hold_program_stop(trainer)
            self.bridge.step_started(TRAIN, _batches(trainer))

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """ITERATION_COMPLETED with the step's scalar outputs; control applies here."""
        bridge = self.bridge
        if bridge is None:
            return
        self._hold_program_stop(trainer)
        self._epoch_iteration = batch_idx + 1
        # The epoch and the step within it count on from epoch_started; the iteration is
        # Lightning's own count, which a resumed fit continues.
        decision = bridge.step_completed(TRAIN, outputs=outputs, iteration=_batches(trainer))
        if decision.stop or decision.checkpoint:
            self._apply(trainer, decision, epoch_end=False)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """EPOCH_COMPLETED of `train` with its metrics (not for an epoch a stop cut short)."""
        bridge = self.bridge
        if bridge is None:
            return
        self._hold_program_stop(trainer)
        if self._cut_short:
            return  # as our Engine: the interrupted epoch's EPOCH_COMPLETED does not fire
        metrics = trainer.callback_metrics
        val_records = lm.loop_records(_val_loop(trainer))
        values = lm.epoch_metrics(metrics, TRAIN, lm.record_names(val_records))
        records = lm.loop_records(trainer.fit_loop.epoch_loop)
        decision = bridge.epoch_completed(
            TRAIN,
            metrics=values,
            metric_states=lm.metric_states(records, TRAIN, values),
            epoch=trainer.current_epoch,
        )
        if decision.stop or decision.checkpoint:
            self._apply(trainer, decision, epoch_end=True)

    # ---- validation --------------------------------------------------------------------------

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """STARTED and EPOCH_STARTED of `val` (a validation run; not the sanity check)."""
        if self.bridge is None or trainer.sanity_checking or self.end is not None:
            return
        batches = [_count(n) for n in (trainer.num_val_batches or [])]
        length = sum(batches) if batches and None not in batches else None
        self.bridge.split_started(VAL, max_epochs=1, epoch_length=length)
        self.bridge.epoch_started(VAL, 0)

    def on_validation_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """ITERATION_COMPLETED of `val` with the step's scalar outputs, if any."""
        if self.bridge is None or trainer.sanity_checking or self.end is not None:
            return
        self.bridge.step_completed(VAL, outputs=outputs)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """EPOCH_COMPLETED of `val` with the validation's metrics, then its COMPLETED."""
        if self.bridge is None or trainer.sanity_checking or self.end is not None:
            return
        records = lm.loop_records(_val_loop(trainer))
        values = lm.epoch_metrics(trainer.callback_metrics, VAL, lm.record_names(records))
        self.bridge.epoch_completed(
            VAL, metrics=values, metric_states=lm.metric_states(records, VAL, values)
        )
        self.bridge.split_completed(VAL)

    # ---- internals ---------------------------------------------------------------------------

    def _last_after_others(self, trainer: Any) -> None:
        """Run after the other callbacks (a should_stop they set is seen in the same hook),
        before the checkpoint callbacks (a file saved at validation's end comes after its
        metrics). A new list: Lightning is iterating over the current one."""
        others = [c for c in trainer.callbacks if c is not self]
        checkpoints = [c for c in others if isinstance(c, Checkpoint)]
        rest = [c for c in others if not isinstance(c, Checkpoint)]
        trainer.callbacks = [*rest, self, *checkpoints]

    def _hold_program_stop(self, trainer: Any) -> None:
        """A should_stop the program set is the program's stop request: with several ranks it
        waits for the ranks' agreement (held back: not every rank may have asked)."""
        if not trainer.should_stop or self._stopping:
            return
        assert self.bridge is not None
        self.bridge.engine(TRAIN).terminate(_program_reason(trainer))
        if self._ranks > 1:
            trainer.should_stop = False

    def _apply(self, trainer: Any, decision: StepDecision, *, epoch_end: bool) -> None:
        """Serve a checkpoint request, then stop (checkpoint first: the stop may be the end)."""
        if decision.checkpoint:
            self._save_requested(trainer)
        if decision.stop and not self._stopping:
            self._stopping = True
            last = self._epoch_length
            self._cut_short = not epoch_end and (last is None or self._epoch_iteration < last)
            trainer.should_stop = True
            log.info(
                "run %s: stopping at step %d (%s from %r)",
                self.run_id,
                _batches(trainer),
                decision.reason,
                decision.by,
            )

    def _save_requested(self, trainer: Any) -> None:
        """A CHECKPOINT_REQUEST, served by Lightning's own save (every rank calls it)."""
        directory = _checkpoint_directory(trainer)
        path = (
            directory / f"requested-epoch={trainer.current_epoch}-step={trainer.global_step}.ckpt"
        )
        self._save_reason = "requested"
        try:
            trainer.save_checkpoint(path)
        finally:
            self._save_reason = "scheduled"

    def _written(self, path: Any) -> None:
        """CHECKPOINT_READY for a file Lightning wrote (rank 0 writes and announces)."""
        bridge = self.bridge
        if bridge is None or self.end is not None:
            return
        file = Path(os.fspath(path))
        if not file.is_file():  # an asynchronous CheckpointIO writes it later
            log.warning(
                "run %s: checkpoint %s not on disk once saved: not announced", self.run_id, file
            )
            return
        # At an epoch's end when every batch of the epoch is done (validation's end included).
        last = self._epoch_length
        at_epoch_end = last is not None and self._epoch_iteration == last
        bridge.checkpoint_ready(file, reason=self._save_reason, epoch_end=at_epoch_end)


def _program_reason(trainer: Any) -> str:
    """Why the program set should_stop, as far as Lightning says (its EarlyStopping does)."""
    for callback in trainer.callbacks:
        message = getattr(callback, "stopping_reason_message", None)
        if isinstance(callback, EarlyStopping) and message:
            return f"Lightning's EarlyStopping: {message}"
    return "trainer.should_stop set by the program"


def _batches(trainer: Any) -> int:
    """The global 1-based count of training batches started, over every epoch (our iteration)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)


def _val_loop(trainer: Any) -> Any:
    return getattr(trainer.fit_loop.epoch_loop, "val_loop", None)


def _checkpoint_directory(trainer: Any) -> Path:
    """Where a requested checkpoint goes: the ModelCheckpoint's directory, else Lightning's."""
    callback = trainer.checkpoint_callback
    directory = getattr(callback, "dirpath", None)
    if directory is None:
        directory = os.path.join(trainer.default_root_dir, "checkpoints")
    return Path(directory)
