"""Checkpoint: save ``to_save`` objects at events, keep the last n or the best k, resume."""

from __future__ import annotations

import inspect
import numbers
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from trainer.checkpoint_names import checkpoint_filename
from trainer.checkpoint_store import (
    SavedFile,
    check_stateful,
    collect_state,
    load_checkpoint,
    restore_state,
    save_atomic,
)
from trainer.events import EventEnum, Events
from trainer.retention import CheckpointRecord, RetentionPolicy, latest

if TYPE_CHECKING:
    from trainer.engine import Engine


class SaveHandler(Protocol):
    """Where checkpoints go: write one under a file name, delete one by file name."""

    def __call__(self, checkpoint: Mapping[str, Any], filename: str) -> SavedFile: ...

    def remove(self, filename: str) -> None: ...


class DiskSaver:
    """Writes checkpoints atomically into a directory (see ``checkpoint_store.save_atomic``).

    With ``require_empty`` (the default, as in Ignite) a directory that already holds ``.pt``
    files is refused, so a new run cannot silently mix with an old one; pass False to resume.
    """

    def __init__(
        self, dirname: str | os.PathLike[str], create_dir: bool = True, require_empty: bool = True
    ) -> None:
        self.dirname = Path(dirname).expanduser()
        if create_dir:
            self.dirname.mkdir(parents=True, exist_ok=True)
        if not self.dirname.is_dir():
            raise FileNotFoundError(f"checkpoint directory {self.dirname} does not exist")
        if require_empty:
            present = sorted(p.name for p in self.dirname.glob("*.pt"))
            if present:
                raise ValueError(
                    f"checkpoint directory {self.dirname} already holds {present}; "
                    "pass require_empty=False to use it anyway"
                )

    def __repr__(self) -> str:
        return f"DiskSaver({str(self.dirname)!r})"

    def __call__(self, checkpoint: Mapping[str, Any], filename: str) -> SavedFile:
        """Write ``checkpoint`` to ``dirname/filename`` atomically."""
        return save_atomic(checkpoint, self.dirname / filename)

    def remove(self, filename: str) -> None:
        """Delete ``dirname/filename``; an already missing file is not an error."""
        (self.dirname / filename).unlink(missing_ok=True)


def global_step_from_engine(
    engine: Engine, event: EventEnum = Events.EPOCH_COMPLETED
) -> Callable[[Engine], int]:
    """A ``global_step_transform`` reading another engine's progress (e.g. the trainer's).

    For an epoch event it gives the 1-based number of the epoch (Ignite's ``state.epoch``),
    for an iteration event the global iteration.
    """
    if event in (Events.ITERATION_STARTED, Events.ITERATION_COMPLETED):
        return lambda _: engine.state.iteration
    return lambda _: engine.state.epoch + 1


class Checkpoint:
    """Saves the state of ``to_save`` objects when called as a handler, keeping a few files.

    ``to_save`` maps names to objects with ``state_dict``/``load_state_dict`` (models,
    optimizers, schedulers, the Engine, ``RNGState()``...). Files are named like Ignite's:
    ``{prefix}_{name}_{step}.pt``; with a score ``{prefix}_{name}_{step}_{score_name}={score}.pt``,
    where the step appears only if ``global_step_transform`` is given. ``name`` is the single
    key of ``to_save``, else ``checkpoint``; a single object is saved as its bare state dict.

    Without ``score_function`` the ``n_saved`` most recent checkpoints are kept; with one, the
    ``n_saved`` best (higher is better; on ties the newer wins). ``n_saved=None`` keeps all.
    ``retention`` overrides both with any ``RetentionPolicy`` (e.g. last 2 and best 3).
    ``global_step_transform(engine) -> int`` gives the step (default: ``state.iteration``).
    """

    def __init__(
        self,
        to_save: Mapping[str, Any],
        save_handler: SaveHandler | str | os.PathLike[str],
        filename_prefix: str = "",
        score_function: Callable[[Engine], float] | None = None,
        score_name: str | None = None,
        n_saved: int | None = 1,
        global_step_transform: Callable[[Engine], int] | None = None,
        retention: RetentionPolicy | None = None,
        ext: str = "pt",
    ) -> None:
        if not isinstance(to_save, Mapping) or not to_save:
            raise TypeError(
                f"to_save must be a non-empty mapping of name -> object, got {to_save!r}"
            )
        check_stateful(to_save, "state_dict", "load_state_dict")
        if isinstance(save_handler, (str, os.PathLike)):
            save_handler = DiskSaver(save_handler)
        if not callable(save_handler) or not callable(getattr(save_handler, "remove", None)):
            raise TypeError(
                f"save_handler must be a directory or have __call__(checkpoint, filename) and "
                f"remove(filename), got {save_handler!r}"
            )
        if score_function is None and score_name is not None:
            score_function = self.get_default_score_fn(score_name)
        if score_function is not None and not callable(score_function):
            raise TypeError(f"score_function must be callable, got {score_function!r}")
        if global_step_transform is not None:
            self._check_one_argument(global_step_transform)
        if n_saved is not None and (
            isinstance(n_saved, bool) or not isinstance(n_saved, int) or n_saved < 1
        ):
            raise ValueError(f"n_saved must be a positive int or None (keep all), got {n_saved!r}")
        if retention is None:
            if score_function is None:
                retention = RetentionPolicy(keep_last=n_saved, keep_best=0)
            else:
                retention = RetentionPolicy(keep_last=0, keep_best=n_saved)
        if retention.keep_last == 0 and retention.keep_best == 0:
            raise ValueError(f"{retention} keeps no checkpoint at all")
        self.to_save = dict(to_save)
        self.save_handler = save_handler
        self.filename_prefix = filename_prefix
        self.score_function = score_function
        self.score_name = score_name
        self.global_step_transform = global_step_transform
        self.retention = retention
        self.ext = ext
        self.saved: list[CheckpointRecord] = []
        self.last_saved: SavedFile | None = None

    @staticmethod
    def _check_one_argument(fn: Callable[..., Any]) -> None:
        try:
            inspect.signature(fn).bind(None)
        except TypeError:
            raise TypeError(
                f"global_step_transform {fn!r} must take one argument, the engine "
                "(Ignite's second argument, the event name, is not passed)"
            ) from None
        except ValueError:  # no signature to check
            pass

    @property
    def last_checkpoint(self) -> Path | str | None:
        """The newest kept checkpoint (a Path with a DiskSaver, else its file name), or None."""
        newest = latest(self.saved)
        if newest is None:
            return None
        if isinstance(self.save_handler, DiskSaver):
            return self.save_handler.dirname / newest.name
        return newest.name

    def _filename(self, name: str, step: int | None, score: float | None) -> str:
        return checkpoint_filename(
            name, step, score, prefix=self.filename_prefix, score_name=self.score_name, ext=self.ext
        )

    def __call__(self, engine: Engine) -> None:
        """Save a checkpoint now if the retention rule keeps it, then prune what it drops."""
        step = None
        if self.global_step_transform is not None:
            step = self.global_step_transform(engine)
        score = None
        if self.score_function is not None:
            score = self.score_function(engine)
            if isinstance(score, bool) or not isinstance(score, numbers.Real):
                raise TypeError(f"score_function must return a number, got {score!r}")
        elif step is None:
            step = engine.state.iteration
        name = next(iter(self.to_save)) if len(self.to_save) == 1 else "checkpoint"
        filename = self._filename(name, step, score)
        recency = engine.state.iteration if step is None else step
        new = CheckpointRecord(filename, recency, None if score is None else float(score))
        decision = self.retention.admit(self.saved, new)
        if not decision.new_kept:
            return
        state = collect_state(self.to_save)
        # A single object is saved bare, as Ignite does; load_objects knows the convention.
        self.last_saved = self.save_handler(state[name] if len(state) == 1 else state, filename)
        # Prune only after the new file is safely written: a crash leaves extra files, not fewer.
        for record in decision.prune:
            self.save_handler.remove(record.name)
        self.saved = decision.keep

    def reset(self) -> None:
        """Forget the saved checkpoints (files stay on disk), e.g. for a new run."""
        self.saved = []
        self.last_saved = None

    def state_dict(self) -> dict[str, Any]:
        """The checkpoints kept so far, so that retention carries on after a resume."""
        return {"saved": [[r.name, r.step, r.score] for r in self.saved]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take over the kept checkpoints of ``state_dict()``."""
        if "saved" not in state:
            raise KeyError(f"Checkpoint state has no 'saved' key, got keys {sorted(state)}")
        self.saved = [CheckpointRecord(name, step, score) for name, step, score in state["saved"]]

    @staticmethod
    def load_objects(
        to_load: Mapping[str, Any],
        checkpoint: str | os.PathLike[str] | Mapping[str, Any],
        **kwargs: Any,
    ) -> None:
        """Restore each object of ``to_load`` from a checkpoint file (weights_only) or dict.

        ``kwargs`` (e.g. ``strict=False``) go to ``torch.nn.Module.load_state_dict``.
        """
        if isinstance(checkpoint, (str, os.PathLike)):
            checkpoint = load_checkpoint(checkpoint)
        if not isinstance(checkpoint, Mapping):
            raise TypeError(f"checkpoint must be a path or a mapping, got {type(checkpoint)}")
        restore_state(to_load, checkpoint, **kwargs)

    @staticmethod
    def get_default_score_fn(
        metric_name: str, score_sign: float = 1.0
    ) -> Callable[[Engine], float]:
        """A score function reading ``engine.state.metrics[metric_name]`` (times ``score_sign``)."""
        if score_sign not in (1.0, -1.0):
            raise ValueError(f"score_sign must be 1.0 or -1.0, got {score_sign!r}")

        def score(engine: Engine) -> float:
            metrics = engine.state.metrics
            if metric_name not in metrics:
                raise KeyError(
                    f"metric {metric_name!r} is not in engine.state.metrics {sorted(metrics)}"
                )
            return score_sign * metrics[metric_name]

        return score
