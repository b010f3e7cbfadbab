"""The supervised classification job the CLI runs: built from config, written to a run directory.

Per epoch the trainer evaluates on the validation split (Loss and Accuracy), may stop early,
and checkpoints model, optimizer, trainer state, early-stopping state and RNG states. The
run directory's layout is described in `trainer.run_dir`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.checkpoint_store import RNGState, load_checkpoint
from trainer.config import Config, ConfigError
from trainer.engine import Engine
from trainer.events import Events
from trainer.handlers import Checkpoint, DiskSaver, EarlyStopping, ProgressBar, TerminateOnNan
from trainer.metrics import Accuracy, Loss
from trainer.retention import RetentionPolicy, best
from trainer.run_dir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    ResumePoint,
    read_manifest,
    write_json_atomic,
    write_manifest,
)
from trainer.tasks import build_data, build_model, build_optimizer

VAL_METRICS = ("accuracy", "loss")
Printer = Callable[[str], None]


@dataclass
class RunResult:
    """How a run ended and where its outputs are."""

    run_dir: Path
    status: str  # "completed", "early_stopped" or "terminated"
    epochs: int  # epochs completed
    iteration: int
    val: dict[str, float] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)
    latest_checkpoint: str | None = None
    best_checkpoint: str | None = None


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_metric_name(cfg: Config, key: str) -> None:
    name = cfg.get(key)
    if name is not None and name not in VAL_METRICS:
        raise ConfigError(
            f"bad value for {key!r} (set by {cfg.source_of(key)}): {name!r} is not a validation "
            f"metric; use one of {', '.join(VAL_METRICS)}",
            key=key,
        )


class Job:
    """The job `cfg` describes, built and checked; `run(run_dir)` trains it.

    Everything that can be refused (names, metrics, the checkpoint to resume from) is checked
    here, before any output directory exists.
    """

    def __init__(self, cfg: Config, resume: ResumePoint | None = None) -> None:
        _check_metric_name(cfg, "checkpoint.score")
        _check_metric_name(cfg, "early_stopping.metric")
        self.cfg, self.resume = cfg, resume
        self.resume_state = _load_resume_state(cfg, resume) if resume is not None else None
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        seed_everything(cfg.run.seed)

        trainer: Engine  # the sampler reads the epoch from it when a pass over the data starts
        self.data = data = build_data(cfg, lambda: trainer.state.epoch)
        self.model = model = build_model(cfg, data.in_features, data.num_classes)
        self.optimizer = optimizer = build_optimizer(cfg, model.parameters())
        loss_fn = nn.CrossEntropyLoss()

        def train_step(engine: Engine, batch: Any) -> dict[str, float]:
            x, y = batch
            model.train()
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
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
        self.evaluator.add_metrics({"loss": Loss(loss_fn), "accuracy": Accuracy()})

    def run(self, run_dir: Path, echo: Printer = print) -> RunResult:
        """Train, writing config, metrics and checkpoints into `run_dir`."""
        cfg, trainer, evaluator, data = self.cfg, self.trainer, self.evaluator, self.data
        trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())
        outcome = {"status": "completed", "evaluated_at": -1}

        def validate(engine: Engine) -> None:
            evaluator.run(data.val)
            outcome["evaluated_at"] = engine.state.iteration

        def report(engine: Engine) -> None:
            s, val = engine.state, evaluator.state.metrics
            echo(
                f"epoch {s.epoch + 1}/{s.max_epochs}  train_loss {s.metrics['loss']:.4f}  "
                f"val_loss {val['loss']:.4f}  val_accuracy {val['accuracy']:.4f}"
            )

        # Order within EPOCH_COMPLETED: validate, early stopping, checkpoint, bar closes, report.
        trainer.add_event_handler(Events.EPOCH_COMPLETED, validate, priority=100)
        to_save: dict[str, Any] = {
            "model": self.model,
            "optimizer": self.optimizer,
            "trainer": trainer,
            "rng": RNGState(),
        }
        es_cfg = cfg.early_stopping
        if es_cfg.patience is not None:
            stopper = EarlyStopping(
                es_cfg.patience,
                lambda _: evaluator.state.metrics[es_cfg.metric],
                trainer,
                min_delta=es_cfg.min_delta,
                cumulative_delta=es_cfg.cumulative_delta,
                mode=es_cfg.mode,
            )

            def stop_early(engine: Engine) -> None:
                stopper(evaluator)
                if engine.should_terminate:
                    outcome["status"] = "early_stopped"

            trainer.add_event_handler(Events.EPOCH_COMPLETED, stop_early, priority=90)
            to_save["early_stopping"] = stopper

        continuing = _same_dir(self.resume.run_dir if self.resume else None, run_dir)
        saver = _Checkpointing(
            cfg, run_dir / CHECKPOINT_DIR, to_save, evaluator, outcome, continuing
        )
        saver.attach(trainer)
        if cfg.train.progress_bar:
            bar = ProgressBar(disable=None, miniters=cfg.train.log_every)
            bar.attach(trainer, output_transform=lambda out: {"loss": out["loss"]})
        trainer.add_event_handler(Events.EPOCH_COMPLETED, report, priority=-100)

        if self.resume_state is not None:
            # State the checkpoint lacks (e.g. early stopping switched on since) starts fresh.
            present = {k: v for k, v in to_save.items() if k in self.resume_state}
            Checkpoint.load_objects(present, self.resume_state)

        cfg.save(run_dir / CONFIG_FILE)
        trainer.run(data.train, max_epochs=cfg.train.epochs, epoch_length=cfg.train.epoch_length)
        if trainer.should_terminate and outcome["status"] == "completed":
            outcome["status"] = "terminated"
        if outcome["evaluated_at"] != trainer.state.iteration:  # e.g. stopped mid-epoch
            validate(trainer)
        saver.finish(trainer)

        result = RunResult(
            run_dir=run_dir,
            status=outcome["status"],
            epochs=trainer.state_dict()["epochs_completed"],
            iteration=trainer.state.iteration,
            val={k: float(evaluator.state.metrics[k]) for k in VAL_METRICS},
            train={"loss": float(trainer.state.metrics["loss"])} if trainer.state.metrics else {},
            latest_checkpoint=saver.latest,
            best_checkpoint=saver.best,
        )
        write_json_atomic(
            run_dir / METRICS_FILE,
            {
                "status": result.status,
                "epochs": result.epochs,
                "iteration": result.iteration,
                "val": result.val,
                "train": result.train,
                "latest_checkpoint": result.latest_checkpoint,
                "best_checkpoint": result.best_checkpoint,
            },
        )
        return result


class _Checkpointing:
    """The Checkpoint handler configured from `checkpoint.*`, plus the run's manifest."""

    def __init__(
        self,
        cfg: Config,
        directory: Path,
        to_save: dict[str, Any],
        evaluator: Engine,
        outcome: dict[str, Any],
        continuing: bool,
    ) -> None:
        self.cfg, self.directory, self.outcome = cfg.checkpoint, directory, outcome
        self.enabled = self.cfg.every is not None
        self.sha256: dict[str, str] = {}
        self.latest: str | None = None
        self.best: str | None = None
        if not self.enabled:
            return
        score_key, sign = self.cfg.score, 1.0 if self.cfg.mode == "max" else -1.0

        def score(engine: Engine) -> float:
            # Only a checkpoint taken right after a validation has a score; others never rank.
            if outcome["evaluated_at"] != engine.state.iteration:
                return math.nan
            return sign * float(evaluator.state.metrics[score_key])

        self.checkpoint = Checkpoint(
            to_save,
            DiskSaver(directory, require_empty=not continuing),
            score_function=score if score_key else None,
            score_name=score_key,
            global_step_transform=lambda engine: engine.state.iteration,
            retention=RetentionPolicy(
                keep_last=self.cfg.n_saved, keep_best=self.cfg.n_best if score_key else 0
            ),
        )
        if continuing:
            self._adopt_manifest()

    def attach(self, trainer: Engine) -> None:
        """Save every `checkpoint.every` epochs or iterations, after validation."""
        if not self.enabled:
            return
        if self.cfg.unit == "epoch":
            trainer.add_event_handler(Events.EPOCH_COMPLETED(every=self.cfg.every), self.save)
        else:
            trainer.add_event_handler(Events.ITERATION_COMPLETED(every=self.cfg.every), self.save)

    def save(self, engine: Engine) -> None:
        """Take a checkpoint now and record it in the manifest."""
        self.checkpoint(engine)
        saved = self.checkpoint.last_saved
        if saved is not None:
            self.sha256[saved.path.name] = saved.sha256
        kept = self.checkpoint.saved
        top = best(kept)
        self.best = top.name if top is not None else None
        self.latest = kept[-1].name if kept else None
        write_manifest(
            self.directory, [(r.name, r.step, r.score) for r in kept], self.sha256, self.best
        )

    def finish(self, trainer: Engine) -> None:
        """Checkpoint the final state unless the last save already did."""
        if not self.enabled:
            return
        steps = [r.step for r in self.checkpoint.saved]
        if trainer.state.iteration not in steps:
            self.save(trainer)

    def _adopt_manifest(self) -> None:
        manifest = read_manifest(self.directory)
        entries = [e for e in manifest["checkpoints"] if (self.directory / e["file"]).is_file()]
        self.checkpoint.load_state_dict(
            {"saved": [[e["file"], e["step"], e["score"]] for e in entries]}
        )
        self.sha256 = {e["file"]: e["sha256"] for e in entries if e.get("sha256")}


def _same_dir(a: Path | None, b: Path) -> bool:
    return a is not None and a.resolve() == b.resolve()


def _load_resume_state(cfg: Config, resume: ResumePoint) -> dict[str, Any]:
    """The checkpoint's content, refused if this config cannot continue from it."""
    state = load_checkpoint(resume.checkpoint, sha256=resume.sha256)
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
