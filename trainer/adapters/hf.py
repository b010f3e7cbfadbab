"""A Hugging Face `Trainer`'s run on the bus: `BusTrainerCallback`, a `TrainerCallback`.

```python
from trainer.adapters.hf import BusTrainerCallback

trainer = Trainer(model=model, args=args, train_dataset=..., eval_dataset=...,
                  callbacks=[BusTrainerCallback("redis://localhost:6379/0")])
trainer.train()
```

Every `trainer.train()` is one run, published through `trainer.adapters.core.LoopBridge` (so the
envelopes, signing, the vote tally, barrier mode and the ranks' agreement are the bridge's own):

- on_train_begin: RUN_STARTED (`framework` "hf"), its `config` the TrainingArguments
  (`training_args`, HF's `to_dict()`, tokens masked) and the model's config (`model`, its
  `config.to_dict()`), plus what `config=` adds; STARTED of split "train".
- on_epoch_begin: EPOCH_STARTED of the 0-based epoch.
- each optimizer step: ITERATION_COMPLETED (every `publish_every`, coalescing the others) whose
  `outputs` are the scalars HF logged at that step (loss, grad_norm, learning_rate; none on a
  step that does not log). The step's boundary is after its on_log when it logs, else its
  on_step_end: always before HF evaluates, saves or checks its stop flag for that step.
- on_evaluate: EPOCH_COMPLETED of split "val" (`eval_<name>` datasets: "val_<name>"; another
  `metric_key_prefix` is the split) with the metrics less the prefix, less HF's speed figures.
- the end of a complete epoch, after its log and evaluation: EPOCH_COMPLETED of "train" with the
  step-weighted mean of each scalar HF logged in the epoch; the epoch boundary (barrier mode
  waits there for the votes on the epoch). An epoch cut short (a stop, `max_steps`) has none.
- on_save: CHECKPOINT_READY for `<output_dir>/checkpoint-<step>` (rank 0): a folder of hard links
  to HF's files under `<checkpoint_dir>/.incoming/`, its size and sha256 those of
  `trainer.checkpoint_tree`; the checkpoint worker files it and HF keeps its own folder.
- on_train_end: COMPLETED (TERMINATE first when stopped), RUN_FINISHED.

Control lands at the next step boundary: a stop (TERMINATE, the vote tally) sets
`control.should_training_stop` and `control.should_save`, so HF writes a checkpoint of that step
before it stops (`save_on_stop=False`: no checkpoint); a CHECKPOINT_REQUEST sets
`control.should_save`. Under torchrun every rank makes the same bridge calls at the same steps,
so the ranks agree on each stop (every `stop_sync_every` steps and at each epoch end) and all
stop at the same step. HF has no hook for exceptions: use the callback as a context manager
around `trainer.train()` to publish EXCEPTION_RAISED and a failed RUN_FINISHED; without it, a
process that dies in training still publishes RUN_FINISHED "failed" when it exits.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.adapters.extras import require

require("transformers", adapter="trainer.adapters.hf", framework="Hugging Face", extra="hf")

from transformers import TrainerCallback  # noqa: E402

from bus import DEFAULT_NAMESPACE  # noqa: E402
from bus.messages import PRIMARY_SPLIT  # noqa: E402
from trainer.adapters.core import LoopBridge, StepDecision  # noqa: E402
from trainer.bridge import RunEnd  # noqa: E402
from trainer.bridge.outputs import scalar  # noqa: E402
from trainer.run_dir import CHECKPOINT_DIR  # noqa: E402

log = logging.getLogger(__name__)

FRAMEWORK = "hf"
EVAL_PREFIX = "eval"  # HF's default metric_key_prefix of an evaluation
VAL = "val"  # the split its metrics go to
# HF's speed figures, in every evaluation and in the end-of-training summary: not metrics.
SPEED_FIGURES = ("runtime", "samples_per_second", "steps_per_second")
CHECKPOINT_FOLDER = "checkpoint-{step}"  # transformers' PREFIX_CHECKPOINT_DIR-<global_step>


def eval_split(metrics: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """The split of an evaluation's `metrics` and its scalar metrics named without the prefix."""
    # Every evaluation reports `<prefix>_runtime`; the prefix is HF's metric_key_prefix.
    suffix = "_" + SPEED_FIGURES[0]
    prefix = next((k[: -len(suffix)] for k in metrics if k.endswith(suffix)), EVAL_PREFIX)
    if prefix == EVAL_PREFIX or prefix.startswith(EVAL_PREFIX + "_"):
        split = VAL + prefix[len(EVAL_PREFIX) :]
    else:
        split = prefix
    values = {}
    for key, value in metrics.items():
        if not key.startswith(prefix + "_"):
            continue  # "epoch", and anything not of this evaluation
        name = key[len(prefix) + 1 :]
        number = scalar(value)
        if name not in SPEED_FIGURES and number is not None:
            values[name] = number
    return split, values


def is_step_log(logs: Mapping[str, Any]) -> bool:
    """Whether `logs` are a training step's (not an evaluation's, not the end-of-run summary)."""
    return not any(key.endswith("_" + SPEED_FIGURES[0]) for key in logs)


def step_scalars(logs: Mapping[str, Any]) -> dict[str, float]:
    """The scalar values of a training step's logs, without HF's fractional `epoch`."""
    found = {}
    for key, value in logs.items():
        number = scalar(value)
        if key != "epoch" and number is not None:
            found[str(key)] = number
    return found


def _epoch_length(train_dataloader: Any, accumulation: int) -> int | None:
    """Optimizer steps per epoch (HF's num_update_steps_per_epoch), or None without a length."""
    try:
        batches = len(train_dataloader)
    except TypeError:
        return None
    return max(math.ceil(batches / max(accumulation, 1)), 1)


def _model_config(model: Any) -> dict[str, Any]:
    """The model's config as a map (`config.to_dict()`), or its class when it has none."""
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    return {"class": type(model).__qualname__} if model is not None else {}


class BusTrainerCallback(TrainerCallback):
    """Publish a Hugging Face Trainer's runs on a bus and obey the bus's control (see module).

    `bus`: a URL (`redis://...`, `memory://NAME`) or None for the embedded default (in-memory bus,
    the default workers in this process, a run directory under `runs/`). `run_id`: the first
    run's id (default: a new one; each later `train()` gets a new one). `config` joins
    RUN_STARTED's config (e.g. an `early_stopping` section for the early-stop worker). `name`
    (default: TrainingArguments.run_name), `publish_every`, `policy`, `barrier`,
    `barrier_timeout`, `heartbeat_timeout`, `stop_sync_every`, `secret` (default: the environment
    variable TRAINER_BUS_SECRET), `run_dir` and `workers` are LoopBridge's. `checkpoint_dir`:
    where the checkpoint worker files HF's checkpoints (default `<output_dir>/checkpoints`).
    `save_on_stop`: save a checkpoint at the step a stop from the bus lands at.
    """

    def __init__(
        self,
        bus: str | None = None,
        run_id: str | None = None,
        *,
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        publish_every: int = 1,
        policy: str | int = "any",
        barrier: bool = False,
        barrier_timeout: float = 30.0,
        heartbeat_timeout: float = 10.0,
        stop_sync_every: int = 10,
        secret: str | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        workers: Sequence[str] | None = None,
        save_on_stop: bool = True,
    ) -> None:
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(
                f"BusTrainerCallback config must be a mapping, got {type(config).__name__}"
            )
        self.bus = bus
        self._run_id = run_id
        self._config = dict(config or {})
        self._options: dict[str, Any] = {
            "namespace": namespace,
            "publish_every": publish_every,
            "policy": policy,
            "barrier": barrier,
            "barrier_timeout": barrier_timeout,
            "heartbeat_timeout": heartbeat_timeout,
            "stop_sync_every": stop_sync_every,
            "secret": secret,
            "run_dir": run_dir,
            "workers": workers,
        }
        self._name = name
        self._checkpoint_dir = checkpoint_dir
        self.save_on_stop = save_on_stop
        self.bridge: LoopBridge | None = None  # the current (or last) run's
        self.end: RunEnd | None = None  # how the last run ended
        self._exit_hook = False
        self._reset(0)

    # ---- the run -------------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        """The current (or last) run's id; None before the first train()."""
        return self.bridge.run_id if self.bridge is not None else self._run_id

    @property
    def active(self) -> bool:
        """Whether a run is under way (between on_train_begin and on_train_end)."""
        return self.bridge is not None and self.end is None

    def _reset(self, step: int) -> None:
        """Where the loop is, as the hooks see it."""
        self._epoch = 0
        self._epoch_first_step = step
        self._epoch_length: int | None = None
        self._max_epochs: int | None = None
        self._logged_step = step  # the last step HF logged training scalars at
        self._sums: dict[str, float] = {}  # step-weighted sums of this epoch's logged scalars
        self._weights: dict[str, int] = {}
        self._open_step: int | None = None  # a step whose boundary waits for its on_log
        self._epoch_waits: str | None = None  # a closed epoch's boundary waits for: log, evaluate
        self._closed_epoch_at: int | None = None  # the step of the last epoch boundary
        self._stopped_at: int | None = None  # the step a stop from the bus landed at
        self._requested = False  # a CHECKPOINT_REQUEST's save is under way
        self._saved_at: int | None = None  # the step of HF's last checkpoint

    def _config_of(self, args: Any, model: Any) -> dict[str, Any]:
        return {"training_args": args.to_dict(), "model": _model_config(model), **self._config}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """RUN_STARTED and STARTED of "train"; from now on the control topic is obeyed."""
        if self.active:
            # The last train() never reached on_train_end (it raised, in a notebook, say).
            self._fail(None, "a new trainer.train() began before this run had ended")
        run_id, self._run_id = self._run_id, None  # the given id names the first run only
        checkpoint_dir = self._checkpoint_dir
        if checkpoint_dir is None and self.bus is not None:
            checkpoint_dir = Path(args.output_dir) / CHECKPOINT_DIR
        self.end = None
        self.bridge = LoopBridge(
            self.bus,
            run_id,
            config=self._config_of(args, kwargs.get("model")),
            # Before transformers 5, run_name defaults to output_dir: not a name.
            name=self._name or (args.run_name if args.run_name != args.output_dir else None),
            framework=FRAMEWORK,
            rank=args.process_index,
            world_size=args.world_size,
            checkpoint_dir=checkpoint_dir,
            **self._options,
        )
        self._reset(state.global_step)
        self._epoch_length = _epoch_length(
            kwargs.get("train_dataloader"), args.gradient_accumulation_steps
        )
        self._max_epochs = state.num_train_epochs or math.ceil(args.num_train_epochs)
        if not self._exit_hook:
            atexit.register(self._at_exit)
            self._exit_hook = True
        try:
            self.bridge.start()
        except BaseException:
            bridge, self.bridge = self.bridge, None  # no run began: nothing to finish at exit
            bridge.close()
            raise
        self.bridge.split_started(
            PRIMARY_SPLIT, max_epochs=self._max_epochs, epoch_length=self._epoch_length
        )
        self.bridge.engine(PRIMARY_SPLIT).state.iteration = state.global_step  # a resumed run

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """EPOCH_STARTED of the 0-based epoch HF starts."""
        if not self.active:
            return
        self._settle(state, control)
        self._epoch = math.floor(state.epoch + 1e-9)
        self._epoch_first_step = state.global_step
        self._sums.clear()
        self._weights.clear()
        self._bridge.epoch_started(
            PRIMARY_SPLIT,
            self._epoch,
            max_epochs=self._max_epochs,
            epoch_length=self._epoch_length,
        )

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """ITERATION_STARTED: with several ranks, their agreement runs during the step."""
        if self.active:
            self._bridge.step_started(PRIMARY_SPLIT, state.global_step + 1)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The step's boundary now, or after its on_log when HF logs at this step."""
        if not self.active:
            return
        if control.should_log and state.global_step > self._logged_step:
            self._open_step = state.global_step
        else:
            self._step_boundary(state, control, {})

    def on_log(
        self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kw: Any
    ) -> None:
        """A training step's scalars: its ITERATION_COMPLETED's outputs, and the epoch's mean."""
        if not self.active or logs is None or not is_step_log(logs):
            return
        values = step_scalars(logs)
        steps = max(state.global_step - self._logged_step, 1)
        self._logged_step = state.global_step
        for key, value in values.items():
            self._sums[key] = self._sums.get(key, 0.0) + value * steps
            self._weights[key] = self._weights.get(key, 0) + steps
        if self._open_step is not None:
            self._step_boundary(state, control, values)
        elif self._epoch_waits == "log":
            self._epoch_boundary(state, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A complete epoch's boundary: now, or after the epoch's log and evaluation."""
        if not self.active:
            return
        if self._open_step is not None:
            self._step_boundary(state, control, {})
        if control.should_save and self._saved_at == state.global_step:
            # Already saved at this step (a stop or a request): HF would write the same folder
            # again, over the files the announced checkpoint links to.
            control.should_save = False
        if not math.isclose(state.epoch, self._epoch + 1, abs_tol=1e-9):
            return  # cut short (a stop, max_steps): no EPOCH_COMPLETED, as with our Engine
        if control.should_evaluate:
            self._epoch_waits = "evaluate"
        elif control.should_log and state.global_step > self._logged_step:
            self._epoch_waits = "log"
        else:
            self._epoch_boundary(state, control)

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """EPOCH_COMPLETED of the evaluation's split; then the epoch's boundary, if it waits."""
        if not self.active:
            return
        split, values = eval_split(metrics or {})
        bridge = self._bridge
        bridge.split_started(split)
        bridge.epoch_started(split, 0)
        bridge.epoch_completed(split, metrics=values)
        bridge.split_completed(split)
        if self._epoch_waits == "evaluate":
            self._epoch_boundary(state, control)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """CHECKPOINT_READY for the checkpoint-<step> folder HF has just written (rank 0)."""
        if not self.active:
            return
        step = state.global_step
        if self._requested:
            reason = "requested"
        elif self._stopped_at == step:
            reason = "final"
        else:
            reason = "scheduled"
        self._requested = False
        self._saved_at = step
        if self._bridge.rank != 0:
            return
        folder = Path(args.output_dir) / CHECKPOINT_FOLDER.format(step=step)
        if not folder.is_dir():
            log.warning(
                "run %s: HF saved at step %d but %s is not a folder (a hyperparameter search "
                "trial?); no CHECKPOINT_READY for it",
                self.run_id,
                step,
                folder,
            )
            return
        self._bridge.checkpoint_ready(
            folder, reason=reason, epoch_end=self._closed_epoch_at == step
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """COMPLETED (after TERMINATE when stopped) and RUN_FINISHED."""
        if not self.active:
            return
        self._settle(state, control)
        self.end = self._bridge.finish()

    # ---- a run that HF's hooks do not end --------------------------------------------------------

    def __enter__(self) -> BusTrainerCallback:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        """End a run that an exception broke off: EXCEPTION_RAISED, RUN_FINISHED "failed"."""
        self._fail(exc)

    def _fail(self, exc: BaseException | None, why: str = "") -> None:
        """End the run under way as failed: by `exc` (published as EXCEPTION_RAISED), or `why`."""
        if not self.active:
            return
        bridge = self._bridge
        if exc is None:
            exc = RuntimeError(why or "training ended without HF's on_train_end")
        else:
            bridge.exception(exc)
        self.end = bridge.finish(exc)

    def _at_exit(self) -> None:
        """At interpreter exit: a run still under way failed (with the uncaught exception)."""
        if self.active:
            self._fail(getattr(sys, "last_value", None))

    # ---- boundaries ------------------------------------------------------------------------------

    @property
    def _bridge(self) -> LoopBridge:
        assert self.bridge is not None
        return self.bridge

    def _settle(self, state: Any, control: Any) -> None:
        """Close a step or an epoch whose boundary still waits for a hook that did not come."""
        if self._open_step is not None:
            self._step_boundary(state, control, {})
        if self._epoch_waits is not None:
            self._epoch_boundary(state, control)

    def _step_boundary(self, state: Any, control: Any, outputs: Mapping[str, float]) -> None:
        self._open_step = None
        decision = self._bridge.step_completed(
            PRIMARY_SPLIT,
            outputs=outputs,
            epoch=self._epoch,
            iteration=state.global_step,
            epoch_iteration=state.global_step - self._epoch_first_step,
        )
        self._apply(decision, state, control)

    def _epoch_boundary(self, state: Any, control: Any) -> None:
        self._epoch_waits = None
        metrics = {key: total / self._weights[key] for key, total in self._sums.items()}
        decision = self._bridge.epoch_completed(PRIMARY_SPLIT, metrics=metrics, epoch=self._epoch)
        self._closed_epoch_at = state.global_step
        self._apply(decision, state, control)

    def _apply(self, decision: StepDecision, state: Any, control: Any) -> None:
        """The bus's decision as HF's control flags, read by HF right after this step."""
        if decision.checkpoint:
            control.should_save = True
            self._requested = True
        if decision.stop:
            control.should_training_stop = True
            if self._stopped_at is None:
                self._stopped_at = state.global_step
                if self.save_on_stop:
                    control.should_save = True
                log.info(
                    "run %s: HF stops after step %d (%s, by %s)",
                    self.run_id,
                    state.global_step,
                    decision.reason,
                    decision.by,
                )
