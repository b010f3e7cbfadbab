"""The supervised classification job the CLI runs: model, data, a trainer and its evaluator.

Per epoch the trainer evaluates on the validation split (Loss and Accuracy). Both engines are
attached to a run on the bus (`trainer.bridge.BusRun`): the workers aggregate the metrics,
keep the checkpoints and vote on stopping, and the run obeys them. The trainer checkpoints
model, optimizer, its own state and the RNG states through the run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainer.checkpoint_store import RNGState, load_checkpoint, restore_state
from trainer.config import Config, ConfigError
from trainer.engine import Engine
from trainer.events import Events
from trainer.handlers import ProgressBar, TerminateOnNan
from trainer.metrics import Accuracy, Loss
from trainer.outcome import RunResult
from trainer.reproducibility import seed_everything, set_threads
from trainer.run_dir import CHECKPOINT_DIR, CONFIG_FILE, ResumePoint
from trainer.tasks import build_data, build_model, build_optimizer

if TYPE_CHECKING:
    from trainer.bridge import BusRun

VAL_METRICS = ("accuracy", "loss")
Printer = Callable[[str], None]


def _check_metric_name(cfg: Config, key: str) -> None:
    name = cfg.get(key)
    if name is not None and name not in VAL_METRICS:
        raise ConfigError(
            f"bad value for {key!r} (set by {cfg.source_of(key)}): {name!r} is not a validation "
            f"metric; use one of {', '.join(VAL_METRICS)}",
            key=key,
        )


class Job:
    """The job `cfg` describes, built and checked; `run(run_dir, link)` trains it.

    Everything that can be refused (names, metrics, the checkpoint to resume from) is checked
    here, before any output directory exists.
    """

    def __init__(self, cfg: Config, resume: ResumePoint | None = None) -> None:
        _check_metric_name(cfg, "checkpoint.score")
        _check_metric_name(cfg, "early_stopping.metric")
        self.cfg, self.resume = cfg, resume
        self.resume_state = _load_resume_state(cfg, resume) if resume is not None else None
        set_threads(cfg.run.threads)
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

    def to_save(self) -> dict[str, Any]:
        """What a checkpoint holds, and what a resume restores."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "trainer": self.trainer,
            "rng": RNGState(),
        }

    def run(self, run_dir: Path, link: BusRun, echo: Printer = print) -> RunResult:
        """Train on `link`'s run, writing the config and checkpoints under `run_dir`."""
        cfg, trainer, evaluator, data = self.cfg, self.trainer, self.evaluator, self.data
        link.attach(trainer, "train")
        link.attach(evaluator, "val")
        trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())
        evaluated_at = {"iteration": -1}

        def validate(engine: Engine) -> None:
            evaluator.run(data.val)
            evaluated_at["iteration"] = engine.state.iteration

        def report(engine: Engine) -> None:
            s, val = engine.state, evaluator.state.metrics
            echo(
                f"epoch {s.epoch + 1}/{s.max_epochs}  train_loss {s.metrics['loss']:.4f}  "
                f"val_loss {val['loss']:.4f}  val_accuracy {val['accuracy']:.4f}"
            )

        # Within EPOCH_COMPLETED: validate, then the run's checkpoint and barrier, then report.
        trainer.add_event_handler(Events.EPOCH_COMPLETED, validate, priority=100)
        to_save = self.to_save()
        if cfg.checkpoint.every is not None:
            link.checkpoint(
                to_save,
                every=cfg.checkpoint.every,
                unit=cfg.checkpoint.unit,
                directory=run_dir / CHECKPOINT_DIR,
            )
        if cfg.train.progress_bar:
            bar = ProgressBar(disable=None, miniters=cfg.train.log_every)
            bar.attach(trainer, output_transform=lambda out: {"loss": out["loss"]})
        trainer.add_event_handler(Events.EPOCH_COMPLETED, report, priority=-100)

        if self.resume_state is not None:
            # State the checkpoint lacks (e.g. saved by an older version) starts fresh.
            present = {k: v for k, v in to_save.items() if k in self.resume_state}
            restore_state(present, self.resume_state)

        cfg.save(run_dir / CONFIG_FILE)
        link.start()
        try:
            trainer.run(
                data.train, max_epochs=cfg.train.epochs, epoch_length=cfg.train.epoch_length
            )
            if evaluated_at["iteration"] != trainer.state.iteration:  # e.g. stopped mid-epoch
                validate(trainer)
        except BaseException as exc:
            link.finish(exc)
            raise
        end = link.finish()
        return RunResult(
            run_dir=run_dir,
            run_id=link.run_id,
            status=end.status,
            reason=end.reason,
            by=end.by,
            epochs=end.epochs,
            iteration=end.iteration,
            val={k: float(evaluator.state.metrics[k]) for k in VAL_METRICS},
            train={"loss": float(trainer.state.metrics["loss"])} if trainer.state.metrics else {},
        )


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
