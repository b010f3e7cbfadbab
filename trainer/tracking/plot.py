"""Plot the metrics of runs: one panel per metric, one line per run and split, x = step.

A logged key "<split>/<metric>" ("train/loss", "val/loss") is drawn in the panel of <metric>,
one line per run and split; a key without a split has a panel of its own. matplotlib is
imported here only, with the Agg backend (no display needed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.tracking.reader import RunRecord
from trainer.tracking.summary import row_values

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
PANEL_WIDTH_PX = 800  # the PNG is 800 pixels wide and 300 pixels high per panel
PANEL_HEIGHT_PX = 300
SKIPPED = ("epoch",)
LINE_STYLES = ("-", "--", ":", "-.")  # a counter, not a metric: left out unless asked for


def split_key(key: str) -> tuple[str, str]:
    """("val", "loss") for "val/loss"; ("", "lr") for "lr"."""
    split, _, metric = key.partition("/")
    return (split, metric) if metric else ("", key)


def logged_keys(records: Sequence[RunRecord]) -> list[str]:
    """Every numeric key the runs logged, in the order first logged."""
    keys: dict[str, None] = {}
    for record in records:
        for row in record.rows:
            for key, value in row_values(row).items():
                if isinstance(value, (int, float)):
                    keys.setdefault(key, None)
    return list(keys)


def select_keys(records: Sequence[RunRecord], metrics: Sequence[str] | None) -> list[str]:
    """The keys to draw: every key but epoch, or those `metrics` name (a key or a metric name).

    A ValueError lists the logged keys when a name matches none.
    """
    available = logged_keys(records)
    if not metrics:
        return [k for k in available if k not in SKIPPED]
    chosen: dict[str, None] = {}
    for wanted in metrics:
        matched = [k for k in available if k == wanted] or [
            k for k in available if split_key(k)[1] == wanted
        ]
        if not matched:
            raise ValueError(
                f"no logged metric {wanted!r} in these runs; they logged: "
                f"{', '.join(available) or 'nothing'}"
            )
        chosen.update(dict.fromkeys(matched))
    return list(chosen)


def build_figure(records: Sequence[RunRecord], metrics: Sequence[str] | None = None) -> Figure:
    """The figure of `records`: a panel per metric, a line per run and split."""
    from matplotlib.figure import Figure

    keys = select_keys(records, metrics)
    if not keys:
        raise ValueError("these runs logged no metrics to plot")
    panels: dict[str, list[str]] = {}
    for key in keys:
        panels.setdefault(split_key(key)[1], []).append(key)
    names = [r.name for r in records]
    labels = [r.id if names.count(r.name) > 1 else r.name for r in records]

    figure = Figure(
        figsize=(PANEL_WIDTH_PX / DPI, PANEL_HEIGHT_PX * len(panels) / DPI),
        dpi=DPI,
        layout="constrained",
    )
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (metric, panel_keys) in zip(axes, panels.items(), strict=True):
        for run_index, (record, label) in enumerate(zip(records, labels, strict=True)):
            for split_index, key in enumerate(panel_keys):
                points = [
                    (row["step"], row[key])
                    for row in record.rows
                    if isinstance(row.get(key), (int, float)) and isinstance(row.get("step"), int)
                ]
                if not points:
                    continue
                steps = [step for step, _ in points]
                values = [value for _, value in points]
                split = split_key(key)[0]
                ax.plot(
                    steps,
                    values,
                    label=f"{label} {split}".strip(),
                    color=f"C{run_index % 10}",  # a colour per run, a line style per split
                    linestyle=LINE_STYLES[split_index % len(LINE_STYLES)],
                    marker=".",
                    markersize=3,
                )
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    return figure


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write `figure` as a PNG at `path` (with the Agg canvas); returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(path)
    if out.parent != Path():
        out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(out, format="png", dpi=DPI)
    return out


def plot_runs(
    records: Sequence[RunRecord], metrics: Sequence[str] | None, path: str | os.PathLike[str]
) -> Path:
    """Plot `records` into the PNG at `path`."""
    return save_figure(build_figure(records, metrics), path)
