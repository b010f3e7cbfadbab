"""The schema of the trainer's own config keys: one dataclass per YAML section.

To add a section, write a dataclass whose fields declare their
constraints with `metadata=limits(...)` and add it as a field of `TrainerConfig`; loading,
overrides and validation pick it up without further changes. `None` disables an optional
feature throughout (e.g. `checkpoint.every: null` writes no checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Keys of a field's metadata that `trainer.config` checks after merging.
GT, GE, LT, LE, CHOICES = "gt", "ge", "lt", "le", "choices"


def limits(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Field metadata constraining a value (each item of a list) after all layers are merged."""
    bounds = {GT: gt, GE: ge, LT: lt, LE: le}
    metadata: dict[str, Any] = {k: v for k, v in bounds.items() if v is not None}
    if choices is not None:
        metadata[CHOICES] = tuple(choices)
    return metadata


@dataclass
class RunSection:
    """Identity and reproducibility of a run."""

    name: str = "digits"
    dir: str = "runs"  # run directories go to <dir>/<name>-<timestamp>-<id>/
    seed: int = field(default=0, metadata=limits(ge=0))
    # torch intra-op threads; null keeps torch's default
    threads: int | None = field(default=None, metadata=limits(ge=1))


@dataclass
class DataSection:
    """Which data set to train on and how to batch it."""

    name: str = "digits"  # a registered data set, or "package.module:function"
    batch_size: int = field(default=64, metadata=limits(ge=1))
    val_fraction: float = field(default=0.2, metadata=limits(gt=0.0, lt=1.0))
    shuffle: bool = True  # reshuffled per epoch from run.seed, so resume sees the same order


@dataclass
class ModelSection:
    """Which model to build; input and output sizes come from the data."""

    name: str = "mlp"  # a registered model, or "package.module:function"
    hidden: list[int] = field(default_factory=lambda: [128], metadata=limits(ge=1))


@dataclass
class OptimSection:
    """The optimizer."""

    name: str = field(default="adam", metadata=limits(choices=("adam", "adamw", "sgd")))
    lr: float = field(default=1e-3, metadata=limits(gt=0.0))
    weight_decay: float = field(default=0.0, metadata=limits(ge=0.0))
    momentum: float = field(default=0.0, metadata=limits(ge=0.0))  # sgd only


@dataclass
class TrainSection:
    """Length of training and how often progress is reported."""

    epochs: int = field(default=5, metadata=limits(ge=1))
    # iterations per epoch; null: one pass over the training data
    epoch_length: int | None = field(default=None, metadata=limits(ge=1))
    log_every: int = field(default=10, metadata=limits(ge=1))  # progress bar refresh, in iterations
    progress_bar: bool = True


@dataclass
class CheckpointSection:
    """When to snapshot the run and which snapshots to keep."""

    every: int | None = field(default=1, metadata=limits(ge=1))  # null: no checkpoints
    unit: str = field(default="epoch", metadata=limits(choices=("epoch", "iteration")))
    # copy parameters and optimizer state while the next step runs (up to its optimizer step);
    # false: copy all of it at the boundary, for steps that edit parameters in place themselves
    overlap: bool = True
    n_saved: int | None = field(default=2, metadata=limits(ge=1))  # last n kept; null keeps all
    n_best: int = field(default=1, metadata=limits(ge=0))  # and the best k by `score`
    # validation metric ranking the best (the task's: accuracy, loss; or loss, mse, mae, r2);
    # null: no best
    score: str | None = "accuracy"
    # whether a higher score is better: must agree with the metric (max: accuracy, r2; min: loss,
    # mse, mae); the checkpoint worker reads it as it is
    mode: str = field(default="max", metadata=limits(choices=("max", "min")))


@dataclass
class EarlyStoppingSection:
    """Stop when a validation metric has not improved for `patience` evaluations."""

    patience: int | None = field(default=None, metadata=limits(ge=1))  # null: no early stopping
    metric: str = "accuracy"  # a metric of `split` (train: loss; val: the task's metrics)
    # whether higher is better: must agree with the metric, as checkpoint.mode does
    mode: str = field(default="max", metadata=limits(choices=("max", "min")))
    min_delta: float = field(default=0.0, metadata=limits(ge=0.0))
    cumulative_delta: bool = False
    split: str = "val"  # the attached engine whose metric is watched


@dataclass
class SchedSection:
    """A learning-rate schedule stepped at each epoch's end, after validation."""

    # null: a constant learning rate; plateau: torch's ReduceLROnPlateau on a validation metric
    name: str | None = field(default=None, metadata=limits(choices=("plateau",)))
    # the validation metric followed; which way is better comes from the metric (r2, accuracy:
    # higher; loss, mse, mae: lower)
    metric: str = "loss"
    factor: float = field(default=0.1, metadata=limits(gt=0.0, lt=1.0))  # lr *= factor ...
    # ... once more than `patience` epochs in a row were bad
    patience: int = field(default=10, metadata=limits(ge=0))
    # an epoch is bad unless it beats the best by this fraction of it
    threshold: float = field(default=1e-4, metadata=limits(ge=0.0))
    cooldown: int = field(default=0, metadata=limits(ge=0))  # epochs ignored after a reduction
    min_lr: float = field(default=0.0, metadata=limits(ge=0.0))


@dataclass
class BusSection:
    """How the trainer talks to the bus: what it publishes and how it obeys control."""

    namespace: str = "trainer"  # topics are <namespace>:run:<id>:events, ...
    # ITERATION_COMPLETED is published every n iterations, with the outputs in between averaged
    publish_every: int = field(default=1, metadata=limits(ge=1))
    # how stop votes of the registered voters are tallied: any, majority, all, or a quorum "k"
    policy: str = "any"
    # at each epoch end, wait for every live voter's vote on that epoch (exact early stopping)
    barrier: bool = True
    barrier_timeout: float = field(default=30.0, metadata=limits(gt=0.0))  # seconds
    # a voter silent for this long (no heartbeat) no longer counts
    heartbeat_timeout: float = field(default=10.0, metadata=limits(gt=0.0))
    # "package.module:function" probes: each is called with the engine at every published
    # ITERATION_COMPLETED and returns {name: number}, sent in its outputs as "probe/<name>"
    probes: list[str] = field(default_factory=list)


@dataclass
class DistSection:
    """How the ranks of one job (`trainer run --nproc N`, torchrun) agree and wait for others."""

    # a stop or checkpoint request reaching one rank is agreed on by all every n iterations
    # (and at every epoch end), so every rank stops at the same iteration
    stop_sync_every: int = field(default=10, metadata=limits(ge=1))
    # seconds a collective waits for a rank that is lost before the run fails
    timeout: float = field(default=60.0, metadata=limits(gt=0.0))
    # seconds the metrics worker waits for every rank's metric states of an epoch, then reports
    # with the ranks it has (naming the missing ones)
    rank_timeout: float = field(default=30.0, metadata=limits(gt=0.0))


@dataclass
class TrackingSection:
    """How the run appears in the tracking store (`trainer runs ls`, TensorBoard, MLflow)."""

    project: str | None = None  # null: run.name
    tags: list[str] = field(default_factory=list)


@dataclass
class SweepSection:
    """A hyperparameter sweep (`trainer sweep`): what varies, how many trials, the goal."""

    # config key -> SPEC: choice(a, b, ...), uniform(lo, hi), loguniform(lo, hi), int(lo, hi);
    # a list means choice of its items (`trainer.sweep_spec`)
    params: dict[str, Any] = field(default_factory=dict)
    # how many trials run in all; null: the grid's size (sampler grid), else required
    trials: int | None = field(default=None, metadata=limits(ge=1))
    # trials `trainer sweep` runs at once itself; 0: agents (`trainer agent`) run them all
    parallel: int = field(default=1, metadata=limits(ge=0))
    # how trials are chosen: grid (every point), random, tpe (Optuna's, learning from results)
    sampler: str = field(default="tpe", metadata=limits(choices=("grid", "random", "tpe")))
    seed: int | None = None  # the sampler's seed; null: a different sweep each time
    # what a trial is scored by: the best value of this metric of `split` over its epochs
    metric: str = "accuracy"
    split: str = "val"
    mode: str = field(default="max", metadata=limits(choices=("max", "min")))
    nproc: int = field(default=1, metadata=limits(ge=1))  # ranks per trial (trainer run --nproc)
    # seconds after which a trial whose agent stopped renewing it is taken over by another agent
    reclaim_after: float = field(default=60.0, metadata=limits(gt=0.0))
    # a pruner `trainer sweep` runs itself: its rule and options, as `trainer worker pruner`
    # takes them (e.g. {rule: asha, min_resource: 1}); empty: none (run one with trainer worker)
    pruner: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainerConfig:
    """Every key the trainer reads; `extra` holds free-form keys for your own code."""

    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    early_stopping: EarlyStoppingSection = field(default_factory=EarlyStoppingSection)
    sched: SchedSection = field(default_factory=SchedSection)
    bus: BusSection = field(default_factory=BusSection)
    dist: DistSection = field(default_factory=DistSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    sweep: SweepSection = field(default_factory=SweepSection)
    # the workers `trainer run` runs beside the trainer when no --bus is given: kind names
    # (bus.messages.WORKER_KINDS) or "package.module:Class"
    workers: list[str] = field(
        default_factory=lambda: ["metrics", "checkpoint", "tracking", "early-stop"]
    )
    extra: dict[str, Any] = field(default_factory=dict)
