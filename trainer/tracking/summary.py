"""The run summary: each metric's last value, its best value and step, and which way is best.

``summary.json`` is ``{"last": {k: v}, "best": {k: v}, "best_step": {k: step},
"goal": {k: "min"|"max"}, "steps": rows folded, "last_step": step of the last row,
"offset": bytes of metrics.jsonl folded}``. Because it records how much of metrics.jsonl it
covers, anyone can bring a stale summary up to date by folding the rows after `offset`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

GOALS = ("min", "max")
# Parts of a key's last component that make lower better.
_LOWER_IS_BETTER = ("loss", "error", "mse", "mae", "rmse", "nll")
# Fields of a metrics row that are not logged values.
ROW_FIELDS = ("step", "time", "key")


def default_goal(key: str) -> str:
    """The goal of a metric not defined: "min" if its last part names a loss or an error."""
    last = re.split(r"[./_]", key)[-1].lower()
    return "min" if any(word in last for word in _LOWER_IS_BETTER) else "max"


def check_goal(goal: str, name: str) -> str:
    """`goal` if it is "min" or "max"; ValueError naming the metric otherwise."""
    if goal not in GOALS:
        raise ValueError(f"define_metric({name!r}): goal {goal!r} must be 'min' or 'max'")
    return goal


def empty_summary() -> dict[str, Any]:
    """The summary of a run with no rows."""
    return {
        "last": {},
        "best": {},
        "best_step": {},
        "goal": {},
        "steps": 0,
        "last_step": None,
        "offset": 0,
    }


def normalized(summary: Mapping[str, Any] | None) -> dict[str, Any]:
    """`summary` with every field present (a missing or partial one filled in)."""
    full = empty_summary()
    if summary:
        full.update(summary)
    return full


def row_values(row: Mapping[str, Any]) -> dict[str, Any]:
    """The logged values of a metrics row (without step, time and key)."""
    return {k: v for k, v in row.items() if k not in ROW_FIELDS}


def _better(value: float, best: Any, goal: str) -> bool:
    if not isinstance(best, (int, float)) or (isinstance(best, float) and math.isnan(best)):
        return True
    return value < best if goal == "min" else value > best


def fold(summary: dict[str, Any], row: Mapping[str, Any]) -> None:
    """Add one metrics row to `summary` (in place)."""
    step = row.get("step")
    summary["steps"] += 1
    summary["last_step"] = step
    for key, value in row_values(row).items():
        summary["last"][key] = value
        goal = summary["goal"].setdefault(key, default_goal(key))
        if not isinstance(value, (int, float)) or (isinstance(value, float) and math.isnan(value)):
            continue  # not comparable: kept as the last value only
        if key not in summary["best"] or _better(value, summary["best"][key], goal):
            summary["best"][key] = value
            summary["best_step"][key] = step


def summarize(
    rows: Iterable[Mapping[str, Any]], goals: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The summary of `rows` from scratch, with `goals` where set (defaults elsewhere)."""
    summary = empty_summary()
    summary["goal"].update(goals or {})
    for row in rows:
        fold(summary, row)
    return summary
