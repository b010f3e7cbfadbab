"""What the pages receive: a run as JSON, from a MonitorState (live, from the bus) or from its
directory in the tracking store (finished, with no Redis needed), and the runs list merging both.

Epochs are counted from 1 as people count them (the bus carries them from 0); metric curves are
`{split: {metric: [[epoch, value], ...]}}` either way, so a live run and the same run read back
from the store draw the same chart.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainer.tracking.reader import RunInfo, best_metric, read_meta, read_run, run_dirs
from trainer.tracking.summary import default_goal
from workers.monitor.state import MonitorState, WorkerState

CHECKPOINTS_ARTIFACT = "checkpoints"  # the artifact the tracking worker files checkpoints in
# Metrics the runs list ranks a run by, in order of preference, when the config names none.
BEST_SPLIT = "val"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _finish(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if data is None:
        return None
    return {
        "status": _str(data.get("status")) or "finished",
        "reason": _str(data.get("reason")) or "",
        "by": _str(data.get("by")),
        "epochs": _int(data.get("epochs")),
        "iteration": _int(data.get("iteration")),
    }


def _worker(state: MonitorState, worker: WorkerState, now: float) -> dict[str, Any]:
    vote = worker.vote
    return {
        "name": worker.name,
        "kind": worker.kind,
        "votes": worker.votes,
        "state": state.worker_status(worker, now),  # "live", "gone" or "left"
        "last_seen": worker.last_seen,
        "age": worker.age(now),  # seconds since it was last heard of (a heartbeat, a vote)
        "vote": None
        if vote is None
        else {
            "stop": vote.stop,
            "epoch": None if vote.epoch is None else vote.epoch + 1,
            "reason": vote.reason,
        },
    }


def live_series(state: MonitorState) -> tuple[dict[str, Any], dict[str, str]]:
    """The metric curves MonitorState holds, per split, and where each split's values come from."""
    series: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for split, metrics in sorted(state.metrics.items()):
        curves = {
            name: [[epoch + 1, value] for epoch, value in points]
            for name, points in metrics.series().items()
            if points
        }
        if curves:
            series[split] = curves
            sources[split] = metrics.source
    return series, sources


def live_run(state: MonitorState, now: float | None = None) -> dict[str, Any]:
    """Everything MonitorState knows of a run, as the run page shows it (without the curves)."""
    now = time.time() if now is None else now
    finish = _finish(state.finish if state.finished else None)
    ranks = []
    for rank in sorted(state.ranks.values(), key=lambda r: r.rank):
        ranks.append(
            {
                "rank": rank.rank,
                "source": rank.source,
                "host": rank.host,
                "pid": rank.pid,
                "epoch": rank.epoch_shown,  # the one it is or stopped in, from 1
                "iteration": rank.iteration,
                "rate": rank.rate(),
                "eta": state.eta(rank),
                "finished": rank.finish is not None,
                "outputs": rank.outputs,
                "last_ts": rank.last_ts,
                "resumed_from": rank.resumed_from,
            }
        )
    checkpoints = sorted(
        state.checkpoints.values(),
        key=lambda c: (c.iteration if c.iteration is not None else -1, c.ts),
    )
    exception = state.exception
    letters = state.dead_letters
    return {
        "id": state.run_id,
        "name": state.name,
        "namespace": state.namespace,
        "origin": "bus",
        "status": state.status,
        "finish": finish,
        "started_at": state.started.ts if state.started is not None else None,
        "world_size": state.world_size,
        "max_epochs": state.max_epochs,
        "epoch_length": state.epoch_length,
        "total_iterations": state.total_iterations,
        "ranks": ranks,
        "heartbeat_timeout": state.heartbeat_timeout,  # beyond it a silent worker is gone
        "workers": [_worker(state, w, now) for w in state.workers_shown(now)],
        "checkpoints": [
            {
                "name": c.name,
                "path": c.path,
                "epoch": None if c.epoch is None else c.epoch + 1,
                "iteration": c.iteration,
                "score": c.score,
                "aliases": c.aliases,
            }
            for c in checkpoints
        ],
        "being_filed": len(state.pending_ready),
        "dead_letters": {
            "count": letters.count,
            "last_reason": letters.last_reason,
            "last_group": letters.last_group,
            "last_ts": letters.last_ts,
        },
        "undecodable": sum(state.undecodable.values()),
        "terminate_requests": [
            {"source": source, "reason": reason} for source, reason in state.terminate_requests
        ],
        "exception": None
        if exception is None
        else {
            "error_type": _str(exception.get("error_type")) or "?",
            "message": _str(exception.get("message")) or "",
        },
        "best": live_best(state),
        "now": now,
    }


def _score_name(config: Mapping[str, Any]) -> str | None:
    """The metric the run itself ranks by: checkpoint.score, else early_stopping.metric."""
    for section, key in (("checkpoint", "score"), ("early_stopping", "metric")):
        part = config.get(section)
        if isinstance(part, Mapping) and isinstance(part.get(key), str):
            return part[key]
    return None


def live_best(state: MonitorState) -> dict[str, Any] | None:
    """The best value so far of the metric the runs list shows (as `best_metric` chooses)."""
    series, _ = live_series(state)
    keys = [f"{split}/{name}" for split, curves in series.items() for name in curves]
    if not keys:
        return None
    score = _score_name(state.config)
    chosen = f"{BEST_SPLIT}/{score}" if f"{BEST_SPLIT}/{score}" in keys else None
    chosen = chosen or next((k for k in keys if k.startswith(f"{BEST_SPLIT}/")), keys[0])
    split, name = chosen.split("/", 1)
    values = [v for _, v in series[split][name] if math.isfinite(v)]
    if not values:
        return None
    best = min(values) if default_goal(chosen) == "min" else max(values)
    return {"metric": chosen, "value": best}


# -- the tracking store ---------------------------------------------------------------------


def store_dir(root: Path, run_id: str) -> Path | None:
    """The directory of run `run_id` under `root`: named after it, or whose run.json says so."""
    # Only directories listed under `root` are considered: an id from a URL is never joined
    # into a path, so `..` or a slash cannot reach outside the runs directory.
    dirs = run_dirs(root)
    for path in dirs:
        if path.name == run_id:
            return path
    for path in dirs:
        if read_meta(path).get("id") == run_id:
            return path
    return None


def _split_key(key: str) -> tuple[str, str]:
    """ "val/accuracy" -> ("val", "accuracy"); a name without a split goes under ""."""
    split, _, name = key.partition("/")
    return (split, name) if name else ("", key)


def store_series(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Metric curves from metrics.jsonl rows: x is the row's epoch, else its step."""
    series: dict[str, dict[str, dict[int | float, float]]] = {}
    for row in rows:
        x = row.get("epoch", row.get("step"))
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            continue
        for key, value in row.items():
            if key in ("epoch", "step", "time", "key"):
                continue
            number = _finite(value)
            if number is None:
                continue
            split, name = _split_key(key)
            series.setdefault(split, {}).setdefault(name, {})[x] = number
    return {
        split: {
            name: [[x, v] for x, v in sorted(points.items())] for name, points in sorted(c.items())
        }
        for split, c in sorted(series.items())
    }


def _store_checkpoints(artifacts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The checkpoints kept, from the artifact the tracking worker files them in."""
    index = artifacts.get(CHECKPOINTS_ARTIFACT)
    if not isinstance(index, Mapping):
        return []
    aliases = index.get("aliases") if isinstance(index.get("aliases"), Mapping) else {}
    kept = []
    for version in index.get("versions") or []:
        # A version whose file the checkpoint worker pruned stays in the history, marked.
        if not isinstance(version, Mapping) or version.get("removed"):
            continue
        files = version.get("files") or [{}]
        first = files[0] if isinstance(files[0], Mapping) else {}
        path = _str(first.get("path") or first.get("stored")) or "?"
        metadata = version.get("metadata")
        metadata = metadata if isinstance(metadata, Mapping) else {}
        epoch = _int(metadata.get("epoch"))
        kept.append(
            {
                "name": _str(first.get("name")) or Path(path).name,
                "path": path,
                "epoch": None if epoch is None else epoch + 1,
                "iteration": _int(metadata.get("iteration")),
                "score": None,
                "aliases": sorted(
                    str(a) for a, v in aliases.items() if v == version.get("version")
                ),
            }
        )
    return kept


def store_run(path: Path) -> dict[str, Any]:
    """A run read back from its tracking-store directory, as the run page shows it."""
    record = read_run(path)
    meta = record.meta
    config = meta.get("config") if isinstance(meta.get("config"), Mapping) else {}
    series = store_series(record.rows)
    status = _str(meta.get("status")) or "unknown"
    finished = status in ("completed", "terminated", "failed")
    train = config.get("train") if isinstance(config.get("train"), Mapping) else {}
    best = best_metric(record.summary, dict(config))
    return {
        "id": record.id,
        "name": record.name,
        "project": _str(meta.get("project")),
        "namespace": None,
        "origin": "store",
        "dir": str(path),
        "status": status,
        "finish": {
            "status": status,
            "reason": _str(meta.get("reason")) or "",
            "by": _str(meta.get("by")),
            "epochs": _int(meta.get("epochs")),
            "iteration": _int(meta.get("iteration")),
            "error": _str(meta.get("error")),
        }
        if finished
        else None,
        "started_at": _finite(meta.get("started_at")),
        "finished_at": _finite(meta.get("finished_at")),
        "duration_s": _finite(meta.get("duration_s")),
        "world_size": _int(meta.get("world_size")) or 1,
        "max_epochs": _int(train.get("epochs")),
        "epoch_length": _int(train.get("epoch_length")),
        "total_iterations": None,
        "ranks": [],
        "workers": [],
        "checkpoints": _store_checkpoints(record.artifacts),
        "being_filed": 0,
        "dead_letters": None,
        "undecodable": 0,
        "terminate_requests": [],
        "exception": None,
        "best": None if best is None else {"metric": best[0], "value": _finite(best[1])},
        "config": dict(config),
        "series": series,
        "series_source": {split: "store" for split in series},
        "now": time.time(),
    }


def store_listing_row(info: RunInfo, meta: Mapping[str, Any]) -> dict[str, Any]:
    """One runs-list row of a run in the tracking store (`meta`: its run.json)."""
    return {
        "id": info.id,
        "name": info.name,
        "project": info.project,
        "status": info.status,
        "origin": "store",
        "started_at": info.started_at,
        "epochs": info.epochs,
        "max_epochs": None,
        "iteration": None,
        "total_iterations": None,
        "best": None
        if info.best is None
        else {"metric": info.best[0], "value": _finite(info.best[1])},
        "by": _str(meta.get("by")),
        "reason": _str(meta.get("reason")),
        "duration_s": info.duration_s,
    }


def bus_listing_row(state: MonitorState, watched: MonitorState | None) -> dict[str, Any]:
    """One runs-list row of a run the registry announced; `watched` is its full state if read."""
    shown = watched if watched is not None and watched.started is not None else state
    finish = _finish(state.finish if state.finished else None)
    rank0 = min(shown.ranks.values(), key=lambda r: r.rank, default=None)
    # The epoch rank 0 is in, or stopped in (its RUN_FINISHED, on the registry too, says): as
    # the run page shows it. The registry alone has no news of a running run's progress.
    epochs = None
    if rank0 is not None and (watched is not None or finish is not None):
        epochs = rank0.epoch_shown
    return {
        "id": state.run_id,
        "name": state.name,
        "project": None,
        "status": state.status,
        "origin": "bus",
        "started_at": state.started.ts if state.started is not None else None,
        "epochs": epochs,
        "max_epochs": shown.max_epochs,
        "iteration": finish["iteration"] if finish else (rank0.iteration if rank0 else None),
        "total_iterations": shown.total_iterations,
        "best": live_best(watched) if watched is not None else None,
        "by": finish["by"] if finish else None,
        "reason": finish["reason"] if finish else None,
        "duration_s": None,
    }


def merged_listing(
    bus_rows: list[dict[str, Any]], store_rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The runs list: the bus's rows (fresher), filled in from the store's, newest first."""
    by_id = {row["id"]: dict(row) for row in store_rows}
    for row in bus_rows:
        stored = by_id.get(row["id"])
        merged = dict(row)
        if stored is not None:
            merged["origin"] = "bus+store"
            for key, value in stored.items():
                if merged.get(key) is None:
                    merged[key] = value
        by_id[row["id"]] = merged
    return sorted(by_id.values(), key=lambda r: (-(r.get("started_at") or 0.0), r["id"]))
