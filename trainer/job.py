"""The supervised job the CLI runs: model, data, a trainer and its evaluator.

The data builder declares the task type (`DataBundle.task`); its objective
(`trainer.tasks.objectives`) gives the loss and the validation metrics: cross-entropy with loss
and accuracy for classification, MSE with loss, mse, mae and r2 for regression. Per epoch the
trainer evaluates on the validation split, then steps the learning-rate schedule if the config
has one (`sched`). Both engines are attached to a run on the bus (`trainer.bridge.BusRun`): the
workers aggregate the metrics, keep the checkpoints and vote on stopping, and the run obeys
them. The trainer checkpoints model, optimizer, schedule, its own state and the RNG states
through the run.

In a job of several ranks (torchrun, `trainer run --nproc N`), each rank builds the same job on
its share of the data (`trainer.tasks.sharding`), trains the model wrapped in
DistributedDataParallel, checkpoints every rank's RNG state (`DistributedRNGState`) and
publishes its own events as `trainer:<rank>`. Only rank 0 writes the config and reports; the
values it reports are those of every rank's data together (the metric states all-reduced).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.bridge.clock import saved_run_id
from trainer.checkpoint_store import CheckpointError, RNGState, load_checkpoint, restore_state
from trainer.config import Config, ConfigError
from trainer.engine import Engine
from trainer.events import Events
from trainer.handlers import LRScheduler, ProgressBar, TerminateOnNan
from trainer.metrics import Loss
from trainer.outcome import RunResult
from trainer.run_dir import CHECKPOINT_DIR, CONFIG_FILE, ResumePoint
from trainer.tasks import Objective, build_data, build_model, build_optimizer, objective_for
from trainer.tasks.objectives import TRAIN_GOALS
from trainer.tasks.sharding import shard

if TYPE_CHECKING:
    from trainer.bridge import BusRun, RunEnd

Printer = Callable[[str], None]
# Turns the exception that ended a rank's run into the one its RUN_FINISHED reports (e.g. a
# collective's socket error into "rank 1 was lost").
Explain = Callable[[BaseException], BaseException]
# Within the trainer's EPOCH_COMPLETED: validate, step the schedule, report; the bridge's
# checkpoint and barrier come after all three, so an epoch's checkpoint holds the stepped schedule.
VALIDATE_PRIORITY, SCHEDULE_PRIORITY, REPORT_PRIORITY = 100, 50, -100


def _check_metric(
    cfg: Config, key: str, goals: dict[str, str], what: str, mode_key: str | None
) -> None:
    """Refuse a metric `key` that `goals` lacks, or a `mode_key` that disagrees with its goal.

    The goal table (`trainer.tasks.objectives`) is the one rule of which way a metric improves;
    the `mode` keys stay in the config because the workers, which know no task, read them there.
    """
    name = cfg.get(key)
    if name not in goals:
        raise ConfigError(
            f"bad value for {key!r} (set by {cfg.source_of(key)}): {name!r} is not {what}; "
            f"use one of {', '.join(goals)}",
            key=key,
        )
    mode, goal = cfg.get(mode_key) if mode_key else None, goals[name]
    if mode_key is not None and mode != goal:
        better = "higher" if goal == "max" else "lower"
        raise ConfigError(
            f"bad value for {mode_key!r} (set by {cfg.source_of(mode_key)}): {mode!r}, but "
            f"{key} {name!r} is better when {better}; set {mode_key}={goal}",
            key=mode_key,
        )


def _check_metrics(cfg: Config, objective: Objective) -> None:
    """Refuse config keys naming metrics this task's engines do not compute, or a wrong mode."""
    val_goals = dict(objective.goals)
    val_what = f"a validation metric of a {objective.task} task"
    if cfg.checkpoint.every is not None and cfg.checkpoint.score is not None:
        _check_metric(cfg, "checkpoint.score", val_goals, val_what, "checkpoint.mode")
    if cfg.early_stopping.patience is not None:
        split = cfg.early_stopping.split
        splits = {
            "train": (dict(TRAIN_GOALS), "a metric of the trainer"),
            "val": (val_goals, val_what),
        }
        if split not in splits:
            raise ConfigError(
                f"bad value for 'early_stopping.split' (set by "
                f"{cfg.source_of('early_stopping.split')}): {split!r} is not an engine of this "
                "job; use train or val",
                key="early_stopping.split",
            )
        goals, what = splits[split]
        _check_metric(cfg, "early_stopping.metric", goals, what, "early_stopping.mode")
    if cfg.sched.name is not None:
        _check_metric(cfg, "sched.metric", val_goals, val_what, None)


class Job:
    """The job `cfg` describes, built and checked; `run(run_dir, link)` trains it.

    Everything that can be refused (names, metrics, the checkpoint to resume from) is checked
    here, before any output directory exists. Building the model draws from the global RNGs:
    seed them first, and per rank after (`trainer.reproducibility`, as `trainer run` does).
    """

    def __init__(self, cfg: Config, resume: ResumePoint | None = None) -> None:
        self.cfg, self.resume = cfg, resume
        # The process group, if the CLI joined one (torchrun): this rank and the number of ranks.
        self.rank, self.world_size = _world()
        self.resume_state: dict[str, Any] | None = None
        # Set when the checkpoint trained every epoch already: the line that says so.
        self.nothing_to_do: str | None = None
        if resume is not None:
            self.resume_state = _load_resume_state(cfg, resume)
            check_resume_ranks(self.resume_state, resume, self.world_size)
            self.nothing_to_do = nothing_to_do(cfg, self.resume_state, resume)
        # The id the checkpoint's run had (None for a checkpoint of an older version).
        self.resumed_run_id = saved_run_id(self.resume_state) if self.resume_state else None

        trainer: Engine  # the sampler reads the epoch from it when a pass over the data starts
        data = build_data(cfg, lambda: trainer.state.epoch)
        # Each rank its share; the Engine tells the training sampler the epoch, resume included.
        self.data = data = shard(data, self.rank, self.world_size, cfg.run.seed, cfg.data.shuffle)
        self.objective = objective = objective_for(data.task)
        _check_metrics(cfg, objective)
        assert data.num_outputs is not None  # DataBundle fills it in for every task
        self.model = model = build_model(cfg, data.in_features, data.num_outputs)
        # The module itself is what checkpoints hold and what evaluates (its own share, with no
        # collective); the wrapper all-reduces the gradients of every training step.
        network = _parallel(model) if self.world_size > 1 else model
        self.optimizer = optimizer = build_optimizer(cfg, model.parameters())
        loss_fn = objective.loss()

        def train_step(engine: Engine, batch: Any) -> dict[str, float]:
            x, y = batch
            network.train()
            optimizer.zero_grad()
            loss = loss_fn(network(x), y)
            loss.backward()
            optimizer.step()
            return {"loss": loss.item()}

        def eval_step(engine: Engine, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = batch
            model.eval()
            with torch.no_grad():
                return model(x), y

        self.trainer = trainer = Engine(train_step)
        self.evaluator = Engine(eval_step)
        trainer.add_metric(Loss(), "loss")
        self.evaluator.add_metrics(objective.metrics(loss_fn))
        self.scheduler = _scheduler(cfg, objective, optimizer, self.evaluator)

    def to_save(self) -> dict[str, Any]:
        """What a checkpoint holds, and what a resume restores."""
        to_save = {
            "model": self.model,
            "optimizer": self.optimizer,
            "trainer": self.trainer,
            "rng": _distributed_rng() if self.world_size > 1 else RNGState(),
        }
        if self.scheduler is not None:
            to_save["lr_scheduler"] = self.scheduler
        return to_save

    def run(
        self,
        run_dir: Path,
        link: BusRun,
        echo: Printer = print,
        explain: Explain | None = None,
    ) -> RunResult:
        """Train on `link`'s run, writing the config and checkpoints under `run_dir`.

        `explain` may turn the exception that ends the run into the one RUN_FINISHED reports.
        """
        link.attach(self.trainer, "train")
        link.attach(self.evaluator, "val")
        self.trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())
        # Registered in this order: handlers of one priority run in it.
        validation = self._validate_each_epoch()
        to_save = self._checkpoint_through(link, run_dir)
        report = self._report_each_epoch(echo if self.rank == 0 else None)
        self._restore(to_save)
        if self.rank == 0:
            self.cfg.save(run_dir / CONFIG_FILE)
        link.start()
        end = self._train(link, validation, explain)
        return self._result(run_dir, link, end, report.train_metrics)

    def _validate_each_epoch(self) -> Validation:
        """Validate at every epoch's end, then step the schedule (if any) on the result."""
        validation = Validation(self.evaluator, self.data.val, several=self.world_size > 1)
        self.trainer.add_event_handler(
            Events.EPOCH_COMPLETED, validation, priority=VALIDATE_PRIORITY
        )
        if self.scheduler is not None:
            self.trainer.add_event_handler(
                Events.EPOCH_COMPLETED, self.scheduler, priority=SCHEDULE_PRIORITY
            )
        return validation

    def _checkpoint_through(self, link: BusRun, run_dir: Path) -> dict[str, Any]:
        """What the run's checkpoints hold; `link` takes them if the config asks for any."""
        # The run's id and training time go into its checkpoints: a resume counts on from them.
        to_save = {**self.to_save(), "run": link.clock}
        checkpoint = self.cfg.checkpoint
        if checkpoint.every is not None:
            link.checkpoint(
                to_save,
                every=checkpoint.every,
                unit=checkpoint.unit,
                directory=run_dir / CHECKPOINT_DIR,
                overlap=checkpoint.overlap,
            )
        return to_save

    def _report_each_epoch(self, echo: Printer | None) -> Report:
        """The progress bar (rank 0's, if asked for) and the epoch's line, printed with `echo`."""
        if self.cfg.train.progress_bar and self.rank == 0:
            bar = ProgressBar(disable=None, miniters=self.cfg.train.log_every)
            bar.attach(self.trainer, output_transform=lambda out: {"loss": out["loss"]})
        report = Report(
            self.evaluator,
            self.objective.val_metrics,
            self.scheduler,
            several=self.world_size > 1,
            echo=echo,
        )
        self.trainer.add_event_handler(Events.EPOCH_COMPLETED, report, priority=REPORT_PRIORITY)
        return report

    def _restore(self, to_save: Mapping[str, Any]) -> None:
        """Load the resumed checkpoint's states into `to_save`'s objects (none for a new run)."""
        if self.resume_state is None:
            return
        # State the checkpoint lacks (e.g. saved by an older version) starts fresh.
        present = {k: v for k, v in to_save.items() if k in self.resume_state}
        restore_state(present, self.resume_state)

    def _train(self, link: BusRun, validation: Validation, explain: Explain | None) -> RunEnd:
        """Train, validate where the run stopped if no epoch's end did, and end the run."""
        trainer, cfg = self.trainer, self.cfg
        try:
            trainer.run(
                self.data.train, max_epochs=cfg.train.epochs, epoch_length=cfg.train.epoch_length
            )
            validation.catch_up(trainer)  # e.g. stopped mid-epoch
        except BaseException as exc:
            reported = explain(exc) if explain is not None else exc
            link.finish(reported)
            if reported is exc:
                raise
            raise reported from exc
        return link.finish()

    def _result(
        self, run_dir: Path, link: BusRun, end: RunEnd, train_metrics: Mapping[str, Any]
    ) -> RunResult:
        """What the run came to, as `trainer run` reports it."""
        if not train_metrics:
            train_metrics = self.trainer.state.metrics  # stopped before any epoch's report
        val = self.evaluator.state.metrics
        return RunResult(
            run_dir=run_dir,
            run_id=link.run_id,
            status=end.status,
            reason=end.reason,
            by=end.by,
            voter=end.voter,
            duration_s=end.duration_s,
            epochs=end.epochs,
            iteration=end.iteration,
            task=self.objective.task,
            val={k: float(val[k]) for k in self.objective.ranked()},
            train={"loss": float(train_metrics["loss"])} if "loss" in train_metrics else {},
        )


class Validation:
    """The trainer's EPOCH_COMPLETED handler that runs the evaluator on the validation split.

    `evaluated_at` is the trainer's iteration it last validated at, so that a run that stopped
    mid-epoch is validated once more at its end (`catch_up`).
    """

    def __init__(self, evaluator: Engine, data: Any, *, several: bool) -> None:
        self.evaluator = evaluator
        self.data = data
        self.several = several
        self.evaluated_at = -1

    def __call__(self, engine: Engine) -> None:
        """Validate now, at `engine`'s iteration."""
        self.evaluator.run(self.data)
        if self.several:
            # The whole split's values, before the schedule steps on them: every rank then
            # steps alike. The bus got each rank's own states already.
            self.evaluator.state.metrics.update(_global_metrics(self.evaluator))
        self.evaluated_at = engine.state.iteration

    def catch_up(self, engine: Engine) -> None:
        """Validate if the last validation was not at `engine`'s current iteration."""
        if self.evaluated_at != engine.state.iteration:
            self(engine)


class Report:
    """The trainer's EPOCH_COMPLETED handler that keeps the epoch's training metrics (over
    every rank's data) in `train_metrics` and, with `echo`, prints the epoch's line."""

    def __init__(
        self,
        evaluator: Engine,
        val_metrics: tuple[str, ...],
        scheduler: LRScheduler | None,
        *,
        several: bool,
        echo: Printer | None,
    ) -> None:
        self.evaluator = evaluator
        self.val_metrics = val_metrics
        self.scheduler = scheduler
        self.several = several
        self.echo = echo
        self.train_metrics: dict[str, Any] = {}  # the last epoch's

    def __call__(self, engine: Engine) -> None:
        """Take the epoch's metrics (a collective with several ranks) and print its line."""
        self.train_metrics = _global_metrics(engine) if self.several else dict(engine.state.metrics)
        if self.echo is not None:
            self.echo(self.line(engine))

    def line(self, engine: Engine) -> str:
        """The epoch's line: its number, the training loss, validation metrics, the rate."""
        s, val = engine.state, self.evaluator.state.metrics
        parts = [
            f"epoch {s.epoch + 1}/{s.max_epochs}",
            f"train_loss {self.train_metrics['loss']:.4f}",
        ]
        parts += [f"val_{name} {val[name]:.4f}" for name in self.val_metrics]
        if self.scheduler is not None:
            parts.append(f"lr {self.scheduler.lrs[0]:.3g}")
        return "  ".join(parts)


def _world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1  # one process: nothing of torch.distributed is touched
    from trainer.distributed import world

    return world()


def _parallel(model: torch.nn.Module) -> torch.nn.Module:
    """`model` in DistributedDataParallel: its gradients all-reduced at every backward."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def _distributed_rng() -> Any:
    """Every rank's RNG states in one checkpoint entry (collected from all ranks at a save)."""
    from trainer.distributed import DistributedRNGState

    return DistributedRNGState()


def _global_metrics(engine: Engine) -> dict[str, Any]:
    """`engine`'s metric values over every rank's data (a collective: every rank calls it)."""
    from trainer.metrics import Distributed

    values: dict[str, Any] = {}
    for name, metric in engine.metrics.items():
        wrapped = metric if isinstance(metric, Distributed) else Distributed(metric)
        value = wrapped.compute()
        values[name] = value
        if isinstance(value, Mapping):
            values.update(value)  # as the Engine stores a metric computing several values
    return values


def check_resume_ranks(state: Mapping[str, Any], resume: ResumePoint, world_size: int) -> None:
    """Refuse to resume a checkpoint of several ranks with another number of ranks.

    Each rank continues with its own saved RNG states, which another count leaves undefined.
    (A single process's checkpoint continues on any number of ranks: all start from its state.)
    """
    rng = state.get("rng")
    saved = len(rng["ranks"]) if isinstance(rng, Mapping) and "ranks" in rng else 1
    if saved > 1 and saved != world_size:
        how = f"trainer run --nproc {saved}"
        raise CheckpointError(
            resume.checkpoint,
            f"saved by a job of {saved} rank(s), resumed by one of {world_size}: resume it with "
            f"as many ranks ({how})",
        )


def _scheduler(
    cfg: Config, objective: Objective, optimizer: torch.optim.Optimizer, evaluator: Engine
) -> LRScheduler | None:
    """The `sched` section's schedule over `optimizer`, following `evaluator`'s metric; or None."""
    if cfg.sched.name is None:
        return None
    s = cfg.sched
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode=objective.goals[s.metric],  # which way the metric improves: the objective's rule
        factor=s.factor,
        patience=s.patience,
        threshold=s.threshold,
        cooldown=s.cooldown,
        min_lr=s.min_lr,
    )
    return LRScheduler(plateau, metric_name=s.metric, metric_engine=evaluator)


def nothing_to_do(cfg: Config, state: Mapping[str, Any], resume: ResumePoint) -> str | None:
    """The line to print when the checkpoint has trained every epoch of `train.epochs` already.

    None when there is more to train (a raised `train.epochs`, or a checkpoint mid-run).
    """
    engine_state = state.get("trainer") if isinstance(state, Mapping) else None
    if not isinstance(engine_state, Mapping):
        return None
    done, epochs = engine_state.get("epochs_completed"), cfg.train.epochs
    if not isinstance(done, int) or done < epochs or engine_state.get("epoch_iteration", 0):
        return None
    return (
        f"nothing to do: checkpoint {resume.checkpoint} has trained {done}/{epochs} epochs "
        f"(train.epochs={epochs}); to train on, resume with train.epochs={epochs + 1} or more"
    )


def _load_resume_state(cfg: Config, resume: ResumePoint) -> dict[str, Any]:
    """The checkpoint's content, refused if this config cannot continue from it."""
    state = load_checkpoint(resume.checkpoint, sha256=resume.sha256)
    if not isinstance(state, Mapping):
        raise CheckpointError(
            resume.checkpoint,
            f"holds a value of type {type(state).__name__}, not the states of a trainer run "
            "(model, optimizer, trainer): pass a checkpoint `trainer run` wrote",
        )
    missing = [k for k in ("model", "optimizer", "trainer") if k not in state]
    if missing:
        raise ConfigError(f"checkpoint {resume.checkpoint} has no state for {missing}")
    engine_state = state["trainer"]
    done = engine_state["epochs_completed"]
    if cfg.train.epochs < done:
        raise ConfigError(
            f"train.epochs={cfg.train.epochs} but checkpoint {resume.checkpoint} has already "
            f"completed {done} epochs; pass train.epochs={done} or more",
            key="train.epochs",
        )
    saved_length = engine_state["epoch_length"]
    if cfg.train.epoch_length is not None and saved_length not in (None, cfg.train.epoch_length):
        raise ConfigError(
            f"train.epoch_length={cfg.train.epoch_length} differs from the resumed run's "
            f"{saved_length} (checkpoint {resume.checkpoint})",
            key="train.epoch_length",
        )
    return state
