"""Export a run to an MLflow file store (the ``mlruns`` layout), without importing MLflow.

    <dest>/<experiment id>/meta.yaml              the experiment, named after the project
    <dest>/<experiment id>/<run uuid>/meta.yaml   run name, status, start and end times
        metrics/<key>    one line per logged value: "<ms timestamp> <value> <step>"
        params/<key>     the flattened config ("optimizer.lr" -> "0.1")
        tags/<key>       mlflow.runName, mlflow.note.content, trainer.* (id, project, tags...)
        artifacts/       copies of the run's stored artifact files (never links: see copy_file)

This is the layout mlflow.store.tracking.file_store.FileStore reads. Exports into one `dest`
share the experiment of their project; the run uuid is derived from the run id, so exporting a
run again replaces its earlier export.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from trainer.atomic_file import copy_file
from trainer.tracking.layout import RUN_FILE, SUMMARY_FILE
from trainer.tracking.reader import read_run
from trainer.tracking.summary import row_values

META_FILE = "meta.yaml"
DEFAULT_EXPERIMENT = ("0", "Default")
# MLflow's RunStatus numbers (mlflow/protos/service.proto).
RUNNING, FINISHED, FAILED, KILLED = 1, 3, 4, 5
# A run stopped on purpose (an early-stop vote, a TERMINATE) is a run that finished: its
# trainer.stopped_by and trainer.stop_reason tags say who stopped it and why. Only a run
# interrupted in the middle (Ctrl-C) is KILLED, and only a failed one FAILED.
STATUS = {"running": RUNNING, "completed": FINISHED, "failed": FAILED, "terminated": FINISHED}
SOURCE_TYPE_LOCAL = 4
MAX_PARAM_LENGTH = 6000  # MLflow rejects longer param values
MAX_TAG_LENGTH = 8000
_RUN_NAMESPACE = uuid.UUID("6f1d6a52-3c1e-4b7e-9d64-7c1b2f0e5a10")


def export_mlflow(run_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Write the run in `run_dir` into the MLflow file store `dest`; returns its MLflow dir."""
    record = read_run(run_dir)
    dest = Path(dest).absolute()
    dest.mkdir(parents=True, exist_ok=True)
    if not any(dest.glob(f"*/{META_FILE}")):
        _write_experiment(dest, *DEFAULT_EXPERIMENT)  # what MLflow creates in a new store
    project = str(record.meta.get("project") or "Default")
    experiment = _experiment_id(dest, project)
    run_uuid = uuid.uuid5(_RUN_NAMESPACE, f"{project}/{record.id}").hex

    staging = dest / experiment / f".{run_uuid}.{secrets.token_hex(4)}"
    staging.mkdir(parents=True)
    try:
        final = dest / experiment / run_uuid
        _write_run(record, staging, experiment, run_uuid, final)
        if final.exists():
            shutil.rmtree(final)  # an earlier export of this run: replaced
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def mlflow_status(meta: Mapping[str, Any]) -> int:
    """MLflow's RunStatus for a run.json: terminated is FINISHED unless it was interrupted."""
    status = str(meta.get("status"))
    # "interrupted (KeyboardInterrupt)": trainer.tracking.runs.INTERRUPTED, and its kin.
    if status == "terminated" and str(meta.get("reason") or "").startswith("interrupted"):
        return KILLED
    return STATUS.get(status, RUNNING)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys ({"opt": {"lr": 1}} -> {"opt.lr": 1})."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def mlflow_key(name: str) -> str:
    """`name` as MLflow accepts a metric, param or tag key (letters, digits, _ - . / space)."""
    cleaned = "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)
    parts = [p for p in cleaned.split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "_"


def _ms(seconds: Any) -> int | None:
    return round(seconds * 1000) if isinstance(seconds, (int, float)) else None


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, (bool, int, float)):
        text = str(value)
    else:
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    return text[:MAX_PARAM_LENGTH]


def _write_experiment(dest: Path, experiment_id: str, name: str) -> None:
    now = int(time.time() * 1000)
    directory = dest / experiment_id
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "artifact_location": directory.as_uri(),
        "creation_time": now,
        "experiment_id": experiment_id,
        "last_update_time": now,
        "lifecycle_stage": "active",
        "name": name,
    }
    _write_yaml(directory / META_FILE, meta)


def _experiment_id(dest: Path, name: str) -> str:
    """The id of experiment `name` in `dest`, created if there is none."""
    for meta_file in sorted(dest.glob(f"*/{META_FILE}")):
        meta = yaml.safe_load(meta_file.read_text(encoding="utf-8")) or {}
        if meta.get("name") == name and meta.get("lifecycle_stage", "active") == "active":
            return str(meta.get("experiment_id", meta_file.parent.name))
    while True:  # MLflow's own ids are random 18-digit integers too
        experiment_id = str(secrets.randbelow(9 * 10**17) + 10**17)
        if not (dest / experiment_id).exists():
            break
    _write_experiment(dest, experiment_id, name)
    return experiment_id


def _write_run(record: Any, directory: Path, experiment: str, run_uuid: str, final: Path) -> None:
    meta = record.meta
    status = mlflow_status(meta)
    start = _ms(meta.get("started_at"))
    end = _ms(meta.get("finished_at")) if status != RUNNING else None
    _write_yaml(
        directory / META_FILE,
        {
            "artifact_uri": (final / "artifacts").as_uri(),
            "end_time": end,
            "entry_point_name": "",
            "experiment_id": experiment,
            "lifecycle_stage": "active",
            "run_id": run_uuid,
            "run_name": record.name,
            "source_name": "",
            "source_type": SOURCE_TYPE_LOCAL,
            "source_version": "",
            "start_time": start,
            "status": status,
            "tags": [],
            "user_id": str(meta.get("user") or os.environ.get("USER") or "unknown"),
            "deleted_time": None,
        },
    )
    for sub in ("metrics", "params", "tags", "artifacts"):
        (directory / sub).mkdir()

    lines: dict[str, list[str]] = {}
    for row in record.rows:
        stamp = _ms(row.get("time")) or 0
        step = int(row.get("step") or 0)
        for key, value in row_values(row).items():
            if isinstance(value, (bool, int, float)):
                number = float(value)
                text = repr(number) if math.isfinite(number) else str(number)
                lines.setdefault(mlflow_key(key), []).append(f"{stamp} {text} {step}\n")
    for key, metric_lines in lines.items():
        _write_text(directory / "metrics" / key, "".join(metric_lines))

    for key, value in flatten(meta.get("config") or {}).items():
        _write_text(directory / "params" / mlflow_key(key), _param_value(value))

    tags = {
        "mlflow.runName": record.name,
        "mlflow.note.content": meta.get("notes") or "",
        "mlflow.source.type": "LOCAL",
        "trainer.id": record.id,
        "trainer.project": meta.get("project") or "",
        "trainer.tags": ", ".join(meta.get("tags") or []),
        "trainer.status": meta.get("status") or "",
        "trainer.reason": meta.get("reason") or "",
        "trainer.by": meta.get("by") or "",
        "trainer.error": meta.get("error") or "",
        "trainer.host": meta.get("host") or "",
        "trainer.dir": str(Path(record.dir).absolute()),
    }
    if meta.get("status") == "terminated":
        tags["trainer.stopped_by"] = meta.get("by") or ""
        tags["trainer.stop_reason"] = meta.get("reason") or ""
    for key, value in tags.items():
        if value or key in ("mlflow.runName",):
            _write_text(directory / "tags" / key, str(value)[:MAX_TAG_LENGTH])

    _copy_artifacts(record.dir, record.artifacts, directory / "artifacts")


def _copy_artifacts(run_dir: Path, artifacts: Mapping[str, Any], target: Path) -> None:
    """The stored copies of every artifact version, at artifacts/<name>/<version>/<file>."""
    for name, index in artifacts.items():
        for version in index.get("versions", []):
            for entry in version.get("files", []):
                stored = entry.get("stored")
                if not stored or not (run_dir / stored).is_file():
                    continue
                out = target / name / version["version"] / entry["name"]
                out.parent.mkdir(parents=True, exist_ok=True)
                # A copy: a link would let an edit of the export rewrite the run's version.
                copy_file(run_dir / stored, out)
    for name in (RUN_FILE, SUMMARY_FILE):  # the run's own record, for the curious
        if (run_dir / name).is_file():
            copy_file(run_dir / name, target / f"trainer-{name}")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_yaml(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(yaml.safe_dump(dict(data), default_flow_style=False), encoding="utf-8")
