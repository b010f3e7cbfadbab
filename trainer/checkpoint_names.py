"""The one rule naming checkpoint files, shared by the Checkpoint handler and the checkpoint worker.

``[{prefix}_]{name}[_{step}][_{score_name}={score}].{ext}``, as Ignite names them: the score is
shown with 4 decimals (integers as they are), and a NaN score (no evaluation behind the
checkpoint) is left out when the step already makes the name unique.

Torch-free: the checkpoint worker imports it.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

INCOMING_DIR = ".incoming"


def format_score(score: float) -> str:
    """A score as it appears in a file name: integers as they are, else 4 decimals."""
    return str(score) if isinstance(score, numbers.Integral) else f"{score:.4f}"


def checkpoint_filename(
    name: str,
    step: int | None,
    score: float | None,
    *,
    prefix: str = "",
    score_name: str | None = None,
    ext: str = "pt",
) -> str:
    """The file name of a checkpoint of `name` at `step` with `score` (None: no score); an
    empty `ext` names a directory (a framework's checkpoint folder)."""
    parts = [prefix] if prefix else []
    parts.append(name)
    if step is not None:
        parts.append(str(step))
    # A NaN score (no evaluation behind this checkpoint) is left out of a name that the step
    # already makes unique.
    if score is not None and not (step is not None and math.isnan(score)):
        shown = format_score(score)
        parts.append(f"{score_name}={shown}" if score_name else shown)
    return "_".join(parts) + (f".{ext}" if ext else "")


def incoming_path(checkpoint_dir: str | Path, name: str, iteration: int, ext: str = "pt") -> Path:
    """Where the trainer writes a checkpoint for the checkpoint worker to verify and file."""
    return Path(checkpoint_dir) / INCOMING_DIR / f"{name}_{iteration}.{ext}"
