"""EarlyStopping: terminate the trainer when a score stops improving."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from trainer.patience import Patience

if TYPE_CHECKING:
    from trainer.engine import Engine

logger = logging.getLogger(__name__)


class EarlyStopping:
    """Call ``trainer.terminate()`` after ``patience`` evaluations without improvement.

    Attach it to the engine whose ``score_function(engine)`` is evaluated (often an evaluator's
    COMPLETED, or the trainer's EPOCH_COMPLETED). The rule is ``trainer.patience.Patience``:
    see it for ``min_delta``, ``cumulative_delta`` and ``mode``.
    """

    def __init__(
        self,
        patience: int,
        score_function: Callable[[Engine], float],
        trainer: Engine,
        min_delta: float = 0.0,
        cumulative_delta: bool = False,
        mode: Literal["max", "min"] = "max",
    ) -> None:
        if not callable(score_function):
            raise TypeError(f"score_function must be callable, got {score_function!r}")
        if not callable(getattr(trainer, "terminate", None)):
            raise TypeError(f"trainer must be an Engine (with terminate()), got {trainer!r}")
        self.rule = Patience(patience, min_delta, cumulative_delta, mode)
        self.score_function = score_function
        self.trainer = trainer
        # Our Engine takes the reason (RUN_FINISHED reports it); another trainer may not.
        self._says_why = "reason" in inspect.signature(trainer.terminate).parameters

    @property
    def counter(self) -> int:
        """Evaluations in a row without improvement."""
        return self.rule.counter

    @property
    def best_score(self) -> float | None:
        """The score improvements are measured against."""
        return self.rule.best_score

    def __call__(self, engine: Engine) -> None:
        """Score ``engine`` and stop the trainer if patience has run out."""
        score = self.score_function(engine)
        if self.rule.step(score):
            logger.info(
                "EarlyStopping: no improvement in %d evaluations, stopping", self.rule.counter
            )
            best = self.rule.best_score
            reason = f"EarlyStopping: no improvement in {self.rule.counter} evaluations" + (
                "" if best is None else f" (best score {best:g})"
            )
            if self._says_why:
                self.trainer.terminate(reason)
            else:
                self.trainer.terminate()

    def reset(self) -> None:
        """Forget all scores seen so far."""
        self.rule.reset()

    def state_dict(self) -> dict[str, Any]:
        """Counter and best score, for ``to_save``."""
        return self.rule.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a ``state_dict()``."""
        self.rule.load_state_dict(state)
