"""Reading runs back: list a runs directory, read one run whole, find a run from what a user typed.

Readers take no lock: every file is replaced atomically or appended a whole line at a time, and
only whole lines are read. A summary.json a little behind metrics.jsonl (a writer that died
between the two) is brought up to date from the rows after the offset it covers.
"""

from __future__ import annotations

import difflib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.tracking.errors import RunNotFound
from trainer.tracking.jsonl import parse_lines, read_jsonl
from trainer.tracking.layout import (
    ARTIFACT_INDEX,
    ARTIFACTS_DIR,
    HISTOGRAMS_FILE,
    IMAGES_FILE,
    METRICS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    read_json,
)
from trainer.tracking.summary import fold, normalized, summarize


@dataclass(frozen=True)
class RunInfo:
    """One line of a runs listing."""

    id: str
    project: str
    name: str
    status: str
    epochs: int | None
    best: tuple[str, Any] | None  # (metric, best value): the first "val/" metric, else the first
    duration_s: float | None
    started_at: float | None
    dir: Path
    max_epochs: int | None = None  # the epochs the config asked for, when it says


@dataclass
class RunRecord:
    """Everything a run directory holds, read back."""

    dir: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    histograms: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        """The run's id."""
        return str(self.meta.get("id") or self.dir.name)

    @property
    def name(self) -> str:
        """The run's display name."""
        return str(self.meta.get("name") or self.id)


def is_run_dir(path: Path) -> bool:
    """Whether `path` is a tracked run's directory (it holds a run.json)."""
    return (path / RUN_FILE).is_file()


def read_meta(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run.json of `run_dir` ({} if absent)."""
    meta = read_json(Path(run_dir) / RUN_FILE)
    return meta if isinstance(meta, dict) else {}


def read_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """summary.json, brought up to date with the rows of metrics.jsonl it does not cover yet."""
    return _rows_and_summary(Path(run_dir))[1]


def _rows_and_summary(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The metrics rows and the summary of exactly those rows (one read of each file)."""
    try:  # read first: it covers no more than the rows read after it
        summary = normalized(read_json(run_dir / SUMMARY_FILE))
    except ValueError:
        summary = normalized(None)
    try:
        data = (run_dir / METRICS_FILE).read_bytes()
    except FileNotFoundError:
        data = b""
    end = data.rfind(b"\n") + 1  # whole lines only: the last one may be being written
    rows = parse_lines(data[:end])
    if summary["offset"] > end:  # metrics.jsonl was replaced since: summarize it again
        summary = summarize(rows, summary["goal"])
    else:
        for row in parse_lines(data[summary["offset"] : end]):
            fold(summary, row)
    summary["offset"] = end
    return rows, summary


def read_artifacts(run_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Each artifact's index.json, by artifact name."""
    found = {}
    for index in sorted((Path(run_dir) / ARTIFACTS_DIR).glob(f"*/{ARTIFACT_INDEX}")):
        data = read_json(index)
        if isinstance(data, dict):
            found[index.parent.name] = data
    return found


def read_run(path: str | os.PathLike[str]) -> RunRecord:
    """The run in directory `path`: meta, metrics rows, summary, artifacts and media rows."""
    run_dir = Path(path)
    if not is_run_dir(run_dir):
        raise RunNotFound(f"{run_dir} is not a run directory (no {RUN_FILE})")
    rows, summary = _rows_and_summary(run_dir)
    return RunRecord(
        dir=run_dir,
        meta=read_meta(run_dir),
        rows=rows,
        summary=summary,
        artifacts=read_artifacts(run_dir),
        histograms=read_jsonl(run_dir / HISTOGRAMS_FILE),
        images=read_jsonl(run_dir / IMAGES_FILE),
    )


def best_metric(
    summary: dict[str, Any], config: dict[str, Any] | None = None
) -> tuple[str, Any] | None:
    """The metric a listing shows: the run's checkpoint score on "val" if the config names one
    (what the run itself ranks by), else the first "val/" metric logged, else the first one."""
    names = [k for k in summary.get("best", {}) if k != "epoch"]
    score = ((config or {}).get("checkpoint") or {}).get("score")
    chosen = f"val/{score}" if f"val/{score}" in names else None
    chosen = chosen or next((k for k in names if k.startswith("val/")), names[0] if names else None)
    return None if chosen is None else (chosen, summary["best"][chosen])


def run_info(run_dir: Path) -> RunInfo:
    """The listing line of one run directory."""
    meta = read_meta(run_dir)
    summary = read_summary(run_dir)
    epochs = epochs_completed(run_dir, meta, summary)
    started = meta.get("started_at")
    duration = meta.get("duration_s")
    if duration is None and meta.get("status") == "running" and isinstance(started, (int, float)):
        updated = meta.get("updated_at")
        until = updated if isinstance(updated, (int, float)) else time.time()
        duration = max(0.0, until - started)
    return RunInfo(
        id=str(meta.get("id") or run_dir.name),
        project=str(meta.get("project") or ""),
        name=str(meta.get("name") or meta.get("id") or run_dir.name),
        status=str(meta.get("status") or "unknown"),
        epochs=epochs,
        best=best_metric(
            summary, meta.get("config") if isinstance(meta.get("config"), dict) else None
        ),
        duration_s=duration,
        started_at=started if isinstance(started, (int, float)) else None,
        dir=run_dir,
        max_epochs=max_epochs(meta),
    )


def max_epochs(meta: dict[str, Any]) -> int | None:
    """The epochs the run's config asks for: `train.epochs` (the trainer's), else `epochs`."""
    config = meta.get("config")
    if not isinstance(config, dict):
        return None
    train = config.get("train")
    for value in (train.get("epochs") if isinstance(train, dict) else None, config.get("epochs")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def epochs_completed(run_dir: Path, meta: dict[str, Any], summary: dict[str, Any]) -> int | None:
    """The epochs the run completed: run.json's "epochs" once it has finished, else the highest
    "epoch" logged.

    Both count epochs as people do (the tracking worker logs `epoch` as the trainer's
    0-based `state.epoch` + 1), so the first epoch's row says 1. A finished run's own count
    wins: a run stopped mid-epoch may have logged rows of the epoch it did not complete.
    """
    finished = meta.get("epochs")
    if isinstance(finished, (int, float)) and not isinstance(finished, bool):
        return int(finished)
    if "epoch" in summary["last"]:
        if summary["goal"].get("epoch") == "max" and "epoch" in summary["best"]:
            highest = summary["best"]["epoch"]  # the summary already knows the maximum
        else:
            epochs = [r["epoch"] for r in read_jsonl(run_dir / METRICS_FILE) if "epoch" in r]
            highest = max(epochs, default=None)
        if isinstance(highest, (int, float)):
            return int(highest)
    return None


def run_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """The run directories directly under `root` (none if it does not exist)."""
    try:
        children = list(Path(root).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [p for p in children if p.is_dir() and is_run_dir(p)]


def list_runs(root: str | os.PathLike[str], project: str | None = None) -> list[RunInfo]:
    """The runs under `root` (of `project` if given), newest first; other directories skipped."""
    infos = []
    for run_dir in run_dirs(root):
        try:
            info = run_info(run_dir)
        except (OSError, ValueError):
            continue  # a run.json being replaced at this instant on some filesystems, or junk
        if project is None or info.project == project:
            infos.append(info)
    return sorted(infos, key=_newest_first)


def _newest_first(info: RunInfo) -> tuple[float, str]:
    started = info.started_at
    if started is None:
        try:
            started = (info.dir / RUN_FILE).stat().st_mtime
        except OSError:
            started = 0.0
    return (-started, info.id)


def find_run(
    root: str | os.PathLike[str],
    ref: str | os.PathLike[str],
    note: Callable[[str], None] | None = None,
) -> Path:
    """The run directory `ref` names: a path or an exact id, else the newest run named `ref`,
    else the newest whose id starts with `ref` (`note` is told which one and which others)."""
    as_path = Path(ref)
    if is_run_dir(as_path):
        return as_path
    ref = str(ref)
    root = Path(root)
    if "/" not in ref and is_run_dir(root / ref):
        return root / ref
    dirs = run_dirs(root)
    metas = {p: _meta_or_empty(p) for p in dirs}
    # An exact id, else a name (`digits` is not `digits-lr0005`, whose id starts with it too),
    # else an id prefix.
    matches = (
        [p for p in dirs if metas[p].get("id") == ref]
        or [p for p in dirs if metas[p].get("name") == ref]
        or [p for p in dirs if p.name.startswith(ref)]
    )
    if matches:
        matches.sort(key=lambda p: _newest_first_dir(p, metas[p]))
        chosen, others = matches[0], matches[1:]
        if others and note is not None:
            shown = ", ".join(p.name for p in others[:5]) + (", ..." if len(others) > 5 else "")
            note(
                f"run {ref!r} matches {len(matches)} runs in {root}: showing the newest, "
                f"{chosen.name} (also: {shown}); give a full id to pick another"
            )
        return chosen
    if not root.is_dir():
        raise RunNotFound(
            f"no run {ref!r}: runs directory {root} does not exist "
            "(pass --dir ROOT or set TRAINER_RUNS_DIR)"
        )
    ids = sorted(p.name for p in dirs)
    if not ids:
        raise RunNotFound(f"no run {ref!r} in {root}: it holds no runs")
    nearest = difflib.get_close_matches(ref, ids, n=3, cutoff=0.0)
    raise RunNotFound(f"no run {ref!r} in {root}; nearest ids: {', '.join(nearest)}")


def _meta_or_empty(run_dir: Path) -> dict[str, Any]:
    try:
        return read_meta(run_dir)
    except (OSError, ValueError):  # junk, or being replaced on some filesystems: no name
        return {}


def _newest_first_dir(run_dir: Path, meta: dict[str, Any]) -> tuple[float, str]:
    started = meta.get("started_at")
    if not isinstance(started, (int, float)):
        try:
            started = (run_dir / RUN_FILE).stat().st_mtime
        except OSError:
            started = 0.0
    return (-started, run_dir.name)
