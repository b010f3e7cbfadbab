"""The early-stopping patience rule, shared by the in-process handler and the voter worker."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal


class Patience:
    """Count evaluations without improvement and say when to stop (Ignite's EarlyStopping rule).

    A score improves when it beats the best score by more than ``min_delta`` (higher is better
    in ``mode="max"``, lower in ``mode="min"``). Each non-improving score adds one to the
    counter; an improvement resets it. ``step`` returns True once the counter reaches
    ``patience``; the counter then stays there (never above) until an improvement, so an
    evaluation past the stop (a voter back-filling a long plateau) counts "5 of 5", never
    "20 of 5". With ``cumulative_delta=False`` the best score also follows non-improving scores
    that are better than it (so slow creeping progress never counts); with True the best score
    only moves on an improvement, so small gains add up. A NaN score never improves.
    """

    def __init__(
        self,
        patience: int,
        min_delta: float = 0.0,
        cumulative_delta: bool = False,
        mode: Literal["max", "min"] = "max",
    ) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be a positive int, got {patience!r}")
        if not min_delta >= 0.0:
            raise ValueError(f"min_delta must be a non-negative number, got {min_delta!r}")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.patience = patience
        self.min_delta = float(min_delta)
        self.cumulative_delta = bool(cumulative_delta)
        self.mode = mode
        self.counter = 0
        self.best_score: float | None = None

    def __repr__(self) -> str:
        return (
            f"Patience(patience={self.patience}, min_delta={self.min_delta}, "
            f"cumulative_delta={self.cumulative_delta}, mode={self.mode!r}, "
            f"counter={self.counter}, best_score={self.best_score})"
        )

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` evaluations in a row brought no improvement."""
        return self.counter >= self.patience

    def _better(self, a: float, b: float) -> float:
        return max(a, b) if self.mode == "max" else min(a, b)

    def step(self, score: float) -> bool:
        """Record one evaluation's score; return True if training should stop now."""
        score = float(score)
        if math.isnan(score):
            self._no_improvement()
            return self.should_stop
        if self.best_score is None:
            self.best_score = score
            return self.should_stop
        if self.mode == "max":
            improved = score > self.best_score + self.min_delta
        else:
            improved = score < self.best_score - self.min_delta
        if improved:
            self.best_score = score
            self.counter = 0
        else:
            if not self.cumulative_delta:
                self.best_score = self._better(score, self.best_score)
            self._no_improvement()
        return self.should_stop

    def _no_improvement(self) -> None:
        self.counter = min(self.counter + 1, self.patience)

    def reset(self) -> None:
        """Forget all scores, as before the first evaluation."""
        self.counter = 0
        self.best_score = None

    def state_dict(self) -> dict[str, Any]:
        """The progress so far as plain numbers (weights_only- and msgpack-safe)."""
        return {"counter": self.counter, "best_score": self.best_score}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a ``state_dict()``; the settings (patience, mode...) stay as built."""
        missing = {"counter", "best_score"} - set(state)
        if missing:
            raise KeyError(f"Patience state is missing keys {sorted(missing)}")
        best_score = state["best_score"]
        self.counter = min(int(state["counter"]), self.patience)
        self.best_score = None if best_score is None else float(best_score)
