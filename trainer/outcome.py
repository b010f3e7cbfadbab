"""How a run ended: the result the CLI prints and the run directory's `metrics.json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer.run_dir import METRICS_FILE, write_json_atomic


@dataclass
class RunResult:
    """How a run ended, its final metrics and where its outputs are."""

    run_dir: Path
    run_id: str
    status: str  # "completed", "terminated" or "failed" (as in RUN_FINISHED)
    reason: str  # why it ended, e.g. the vote that stopped it
    by: str | None  # the source of the envelope that stopped it, if one did
    epochs: int  # epochs completed
    iteration: int
    voter: str | None = None  # the voter's name, when a vote stopped it (`by` is its source)
    duration_s: float = 0.0  # seconds of training over every session, not the time it was down
    task: str = "classification"  # the task type the data set declared
    # the task's validation metrics, its headline first (accuracy; r2 for regression)
    val: dict[str, float] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)
    latest_checkpoint: str | None = None
    best_checkpoint: str | None = None

    def val_summary(self) -> str:
        """The validation metrics in one phrase, e.g. "accuracy: 0.9667 (loss 0.1151)"."""
        if not self.val:
            return "no validation metrics"
        (head, value), *rest = self.val.items()
        others = ", ".join(f"{name} {v:.4f}" for name, v in rest)
        return f"{head}: {value:.4f}" + (f" ({others})" if others else "")

    def write(self) -> Path:
        """Write `metrics.json` into the run directory atomically; return its path."""
        data = asdict(self)
        data.pop("run_dir")
        path = self.run_dir / METRICS_FILE
        write_json_atomic(path, data)
        return path
