"""LocalSink: applies tracking records to a run directory; the one writer of every mode.

`LocalSink(run_dir).apply(record)` is all a writer needs: the Run of offline mode calls it, and
the tracking worker turns bus envelopes into the same records and applies them the same way.
Several processes may apply records to one run directory at once (tracking-worker replicas):

- every append and every read-modify-write happens under the flock of ``<run>/.lock``;
- a record's `key`, if it has one, is checked against the keys already in the files, read back
  under that lock, so a record redelivered to another process (or after a restart) is skipped;
- what a process learnt from the files (keys, last step, bytes read) is kept per process and
  per directory and brought up to date from the bytes appended since, so a fresh
  `LocalSink(run_dir)` per record costs no re-reading;
- `apply_logs` writes many log rows with one lock, one append and one TensorBoard write;
- summary.json is rewritten at most every SUMMARY_EVERY seconds while rows come (readers fold
  the rows after the offset it covers themselves, `trainer.tracking.reader`), without fsync:
  it is rebuilt from metrics.jsonl if ever unreadable. Goals and a finished run's summary are
  written at once, durably.

Any OSError (full disk, read-only directory) surfaces as one TrackingError naming the path and
the reason; files are replaced atomically or appended one whole line at a time, never torn.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.atomic_file import atomic_file, copy_file
from trainer.manifest import file_sha256
from trainer.tracking.artifact import check_file_name
from trainer.tracking.errors import TrackingError, tracking_error
from trainer.tracking.jsonl import JsonlFollower, append_line, append_lines, read_from
from trainer.tracking.layout import (
    ARTIFACT_INDEX,
    ARTIFACTS_DIR,
    HISTOGRAMS_FILE,
    IMAGES_DIR,
    IMAGES_FILE,
    LOCK_FILE,
    METRICS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    check_name,
    file_part,
    read_json,
    write_json,
)
from trainer.tracking.summary import (
    ROW_FIELDS,
    check_goal,
    empty_summary,
    fold,
    normalized,
    summarize,
)
from trainer.tracking.tensorboard import EventFileWriter

RECORD_KINDS = ("meta", "log", "histogram", "image", "artifact", "removed", "finish")
# Seconds between rewrites of summary.json while log rows keep coming (see the module's doc).
SUMMARY_EVERY = 5.0
STATUSES = ("running", "completed", "terminated", "failed")
FINAL_STATUSES = ("completed", "terminated", "failed")


class LocalSink:
    """Applies records to the files of `run_dir` (created if missing)."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(run_dir)

    def apply(self, record: Mapping[str, Any]) -> Any:
        """Apply one record; returns the step of a log, the version of an artifact, else None."""
        return _state_for(self.dir).apply(record)

    def apply_logs(self, records: Sequence[Mapping[str, Any]]) -> list[int | None]:
        """Apply several log records at once (one lock, one append); the step of each (None
        for one whose key was written before). ValueError, before anything is written, if
        one of them is not a valid log record."""
        return _state_for(self.dir).apply_logs(records)

    def write(self, record: Mapping[str, Any]) -> Any:
        """The Sink interface: the same as `apply`."""
        return self.apply(record)

    def close(self) -> None:
        """Bring a summary.json left behind by rows logged since up to date (every record is
        on disk when `apply` returns; only the summary is rewritten lazily)."""
        state = _existing_state(self.dir)
        if state is not None:
            state.settle()


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the exclusive flock of `<run_dir>/.lock` (other processes and threads wait)."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class _RunDirState:
    """What this process knows of one run directory, and the handlers of each record kind."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.mutex = threading.Lock()
        self.metrics = JsonlFollower(run_dir / METRICS_FILE)
        self.followers = {
            "histogram": JsonlFollower(run_dir / HISTOGRAMS_FILE),
            "image": JsonlFollower(run_dir / IMAGES_FILE),
        }
        self.keys: dict[str, set[str]] = {"log": set(), "histogram": set(), "image": set()}
        self.last_step: int | None = None
        self.tensorboard: EventFileWriter | None = None
        self.has_run_file = False
        self._summary_due = 0.0  # time.monotonic() from which summary.json may be rewritten
        self._summary_behind = False  # rows were appended that summary.json does not cover
        self._digests: dict[Path, str] = {}  # staged copy -> its sha256 (see _stage_artifact)
        self.handlers: dict[str, Callable[[Mapping[str, Any]], Any]] = {
            "meta": self._meta,
            "log": self._log,
            "histogram": self._histogram,
            "image": self._image,
            "artifact": self._commit_artifact,  # staged first: see apply
            "removed": self._removed,
            "finish": self._finish,
        }

    def apply(self, record: Mapping[str, Any]) -> Any:
        kind = record.get("kind") if isinstance(record, Mapping) else None
        handler = self.handlers.get(kind)  # type: ignore[arg-type]
        if handler is None:
            raise ValueError(
                f"tracking record kind {kind!r} is not one of {', '.join(RECORD_KINDS)}"
            )
        with self.mutex:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                staged = self._stage_artifact(record) if kind == "artifact" else None
                try:
                    with run_lock(self.dir):
                        if staged is not None:
                            return self._commit_artifact(record, staged)
                        return handler(record)
                finally:
                    if staged is not None:
                        self._digests.clear()
                        if staged.exists():
                            shutil.rmtree(staged, ignore_errors=True)
            except OSError as exc:
                raise tracking_error(exc, "write", self.dir) from exc

    def apply_logs(self, records: Sequence[Mapping[str, Any]]) -> list[int | None]:
        for record in records:
            if not isinstance(record, Mapping) or record.get("kind") != "log":
                kind = record.get("kind") if isinstance(record, Mapping) else record
                raise ValueError(f"apply_logs takes log records only, got kind {kind!r}")
        with self.mutex:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                with run_lock(self.dir):
                    return self._log_rows(records)
            except OSError as exc:
                raise tracking_error(exc, "write", self.dir) from exc

    # -- what other processes wrote -----------------------------------------------------------

    def _catch_up_metrics(self) -> None:
        rows, restarted = self.metrics.read()
        if restarted:
            self.keys["log"].clear()
            self.last_step = None
        for row in rows:
            if isinstance(row.get("key"), str):
                self.keys["log"].add(row["key"])
            step = row.get("step")
            if isinstance(step, int) and (self.last_step is None or step > self.last_step):
                self.last_step = step

    def _catch_up(self, kind: str) -> None:
        rows, restarted = self.followers[kind].read()
        if restarted:
            self.keys[kind].clear()
        self.keys[kind].update(row["key"] for row in rows if isinstance(row.get("key"), str))

    def _media_step(self, record: Mapping[str, Any]) -> int:
        step = record.get("step")
        if step is not None:
            return int(step)
        self._catch_up_metrics()
        return 0 if self.last_step is None else self.last_step

    def _ensure_run_file(self) -> None:
        """A run.json, for records that arrive before the run's first meta record."""
        if self.has_run_file:
            return
        path = self.dir / RUN_FILE
        if not path.exists():
            now = time.time()
            write_json(
                path,
                {
                    "id": self.dir.name,
                    "status": "running",
                    "started_at": now,
                    "updated_at": now,
                },
            )
        self.has_run_file = True

    # -- metrics ------------------------------------------------------------------------------

    def _log(self, record: Mapping[str, Any]) -> int | None:
        return self._log_rows([record])[0]

    def _log_rows(self, records: Sequence[Mapping[str, Any]]) -> list[int | None]:
        """Append the rows of log `records` in one write, but those whose key is in already."""
        checked = [_checked_values(record.get("values")) for record in records]  # all, first
        self._ensure_run_file()
        self._catch_up_metrics()
        written = self.keys["log"]
        new_keys: set[str] = set()
        last = self.last_step
        rows: list[dict[str, Any]] = []
        scalars: list[tuple[dict[str, float], int, float]] = []
        steps: list[int | None] = []
        for record, values in zip(records, checked, strict=True):
            key = record.get("key")
            if key is not None and (key in written or key in new_keys):
                steps.append(None)  # already written, by this process or another one
                continue
            step = record.get("step")
            step = (0 if last is None else last + 1) if step is None else int(step)
            now = _time(record)
            row: dict[str, Any] = {"step": step, "time": now}
            if key is not None:
                row["key"] = str(key)
                new_keys.add(row["key"])
            row.update(values)
            rows.append(row)
            steps.append(step)
            if last is None or step > last:
                last = step
            if values:
                scalars.append(({k: float(v) for k, v in values.items()}, step, now))
        if not rows:
            return steps
        # Under the lock and just caught up: the file holds nothing this process has not read.
        self.metrics.appended(append_lines(self.metrics.path, rows))
        written |= new_keys
        self.last_step = last
        if scalars:
            if self.tensorboard is None:
                self.tensorboard = EventFileWriter(self.dir)
            self.tensorboard.add_many(scalars)
        self._update_summary()
        return steps

    def _update_summary(
        self,
        goals: Mapping[str, str] | None = None,
        last: Mapping[str, Any] | None = None,
        *,
        now: bool = False,
    ) -> None:
        """Bring summary.json up to date with metrics.jsonl (and new goals, final values).

        For new rows only: at most every SUMMARY_EVERY seconds, and without fsync. With goals,
        final values or `now`, at once and durably.
        """
        durable = now or bool(goals) or bool(last)
        if not durable and time.monotonic() < self._summary_due:
            self._summary_behind = True
            return  # readers fold the rows it does not cover yet themselves
        path = self.dir / SUMMARY_FILE
        try:
            summary = normalized(read_json(path))
        except ValueError:  # unreadable: rebuilt from the rows (the goals set are lost)
            summary = empty_summary()
        if goals:
            changed = {k: v for k, v in goals.items() if summary["goal"].get(k) != v}
            summary["goal"].update(goals)
            if changed and any(k in summary["last"] for k in changed):
                summary = self._rebuilt_summary(summary)
        size = self.metrics.path.stat().st_size if self.metrics.path.exists() else 0
        if summary["offset"] > size:  # metrics.jsonl was replaced: fold it again
            summary = self._rebuilt_summary(summary)
        rows, offset = read_from(self.metrics.path, summary["offset"])
        for row in rows:
            fold(summary, row)
        summary["offset"] = offset
        if last:
            summary["last"].update(last)
        write_json(path, summary, durable=durable)
        self._summary_due = time.monotonic() + SUMMARY_EVERY
        self._summary_behind = False

    def settle(self) -> None:
        """Write summary.json now if rows were logged that it does not cover yet."""
        with self.mutex:
            if not self._summary_behind:
                return
            try:
                with run_lock(self.dir):
                    self._update_summary(now=True)
            except OSError as exc:
                raise tracking_error(exc, "write", self.dir) from exc

    def _rebuilt_summary(self, old: Mapping[str, Any]) -> dict[str, Any]:
        rows, offset = read_from(self.metrics.path, 0)
        summary = summarize(rows, old["goal"])
        summary["offset"] = offset
        return summary

    # -- media --------------------------------------------------------------------------------

    def _histogram(self, record: Mapping[str, Any]) -> int | None:
        name = _required_str(record, "name")
        bins, counts = record.get("bins"), record.get("counts")
        if not isinstance(bins, list) or not isinstance(counts, list):
            raise ValueError(f"histogram record {name!r} needs 'bins' and 'counts' lists")
        if len(bins) != len(counts) + 1:
            raise ValueError(
                f"histogram record {name!r}: {len(bins)} bin edges for {len(counts)} counts "
                "(edges must be one more than counts)"
            )
        self._ensure_run_file()
        self._catch_up("histogram")
        key = record.get("key")
        if key is not None and key in self.keys["histogram"]:
            return None
        step = self._media_step(record)
        row: dict[str, Any] = {"name": name, "step": step, "time": _time(record)}
        if key is not None:
            row["key"] = str(key)
        row.update(bins=[float(b) for b in bins], counts=[int(c) for c in counts])
        self.followers["histogram"].path.parent.mkdir(exist_ok=True)
        append_line(self.followers["histogram"].path, row)
        self._catch_up("histogram")
        return step

    def _image(self, record: Mapping[str, Any]) -> int | None:
        name = _required_str(record, "name")
        png = record.get("png")
        if not isinstance(png, (bytes, bytearray)):
            raise ValueError(f"image record {name!r} needs its 'png' bytes")
        self._ensure_run_file()
        self._catch_up("image")
        key = record.get("key")
        if key is not None and key in self.keys["image"]:
            return None
        step = self._media_step(record)
        images = self.dir / IMAGES_DIR
        images.mkdir(parents=True, exist_ok=True)
        stem = f"{file_part(name)}-{step}"
        target, n = images / f"{stem}.png", 0
        while target.exists():  # the same name at the same step again: keep both
            n += 1
            target = images / f"{stem}-{n}.png"
        with atomic_file(target, "wb") as f:
            f.write(bytes(png))
        row: dict[str, Any] = {"name": name, "step": step, "time": _time(record)}
        if key is not None:
            row["key"] = str(key)
        row.update(
            file=target.relative_to(self.dir).as_posix(),
            caption=record.get("caption"),
            width=record.get("width"),
            height=record.get("height"),
        )
        append_line(self.followers["image"].path, row)
        self._catch_up("image")
        return step

    # -- artifacts ----------------------------------------------------------------------------

    def _stage_artifact(self, record: Mapping[str, Any]) -> Path:
        """Copy the artifact's files into a staging directory (outside the lock: may be big).

        Each copy's sha256 is taken from the copy, also outside the lock (kept in _digests).
        """
        name = check_name(_required_str(record, "name"), "artifact name")
        files = record.get("files")
        if not isinstance(files, list):
            raise ValueError(f"artifact record {name!r} needs a 'files' list")
        staging = self.dir / ARTIFACTS_DIR / name / f".staging-{secrets.token_hex(4)}"
        staging.mkdir(parents=True)
        try:
            for entry in files:
                self._stage_file(name, entry, staging)
        except BaseException:
            self._digests.clear()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return staging

    def _stage_file(self, name: str, entry: Mapping[str, Any], staging: Path) -> None:
        file_name = check_file_name(str(entry.get("name", "")), name)
        target = staging / file_name
        if "data" in entry:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(bytes(entry["data"]))
        elif "source" in entry:
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_source(Path(entry["source"]), target)
        elif "path" in entry:
            return  # a reference: nothing stored
        else:
            raise ValueError(
                f"artifact {name!r}: file {file_name!r} has neither 'data', 'source' nor 'path'"
            )
        # Of the bytes stored: a source rewritten since it was hashed is told apart.
        self._digests[target] = file_sha256(target)

    def _commit_artifact(self, record: Mapping[str, Any], staging: Path) -> str:
        name = str(record["name"])
        directory = self.dir / ARTIFACTS_DIR / name
        index_path = directory / ARTIFACT_INDEX
        index = read_json(index_path) or {
            "name": name,
            "type": "",
            "description": "",
            "versions": [],
            "aliases": {},
        }
        key = record.get("key")
        if key is not None:
            for version in index["versions"]:
                if version.get("key") == key:
                    return str(version["version"])  # already logged
        version = f"v{len(index['versions'])}"
        stored = directory / version
        if stored.exists():  # left by a writer that died before updating the index
            shutil.rmtree(stored)
        files = []
        for entry in record["files"]:
            file_name = check_file_name(str(entry["name"]), name)
            item: dict[str, Any] = {"name": file_name}
            if "path" in entry and "data" not in entry and "source" not in entry:
                item.update(size=entry.get("size"), sha256=entry.get("sha256"), path=entry["path"])
            else:
                staged = staging / file_name
                item.update(
                    size=staged.stat().st_size,
                    sha256=self._digests.pop(staged, None) or file_sha256(staged),
                    stored=f"{ARTIFACTS_DIR}/{name}/{version}/{file_name}",
                )
            files.append(item)
        if any("stored" in f for f in files):
            os.rename(staging, stored)
        entry_out: dict[str, Any] = {
            "version": version,
            "created": _time(record),
            "metadata": record.get("metadata") or {},
            "files": files,
        }
        if key is not None:
            entry_out["key"] = str(key)
        index["versions"].append(entry_out)
        index["type"] = str(record.get("type", index.get("type", "")))
        index["description"] = str(record.get("description", index.get("description", "")))
        for alias in ["latest", *(str(a) for a in record.get("aliases") or ())]:
            index["aliases"][alias] = version
        _version_aliases(index)
        self._ensure_run_file()
        write_json(index_path, index)
        return version

    def _removed(self, record: Mapping[str, Any]) -> list[str]:
        """Mark the versions of artifact `name` holding a file of `sha256` as removed.

        A reference artifact outlives its file (the checkpoint worker prunes what retention
        drops); the version stays in the history, marked, and keeps no alias but `latest`.
        """
        name = check_name(_required_str(record, "name"), "artifact name")
        sha256 = _required_str(record, "sha256")
        index_path = self.dir / ARTIFACTS_DIR / name / ARTIFACT_INDEX
        index = read_json(index_path)
        if not index:
            return []
        marked = []
        for version in index["versions"]:
            if version.get("removed") or not any(
                f.get("sha256") == sha256 for f in version["files"]
            ):
                continue
            version["removed"] = _time(record)
            marked.append(version["version"])
        if marked:
            index["aliases"] = {
                alias: v
                for alias, v in index["aliases"].items()
                if alias == "latest" or v not in marked
            }
            _version_aliases(index)
            write_json(index_path, index)
        return marked

    # -- run.json ------------------------------------------------------------------------------

    def _update_run_file(
        self, record: Mapping[str, Any], change: Callable[[dict[str, Any]], None]
    ) -> bool:
        """Apply `change` to run.json unless the record's key was applied; False if skipped."""
        path = self.dir / RUN_FILE
        meta = read_json(path) or {"id": self.dir.name}
        key = record.get("key")
        applied = meta.setdefault("record_keys", [])
        if key is not None:
            if key in applied:
                return False
            applied.append(str(key))
        if not applied:
            del meta["record_keys"]
        change(meta)
        meta["updated_at"] = _time(record)
        write_json(path, meta)
        self.has_run_file = True
        return True

    def _meta(self, record: Mapping[str, Any]) -> None:
        fields = record.get("fields") or {}
        goals = record.get("goals") or {}
        if not isinstance(fields, Mapping) or not isinstance(goals, Mapping):
            raise ValueError("meta record: 'fields' and 'goals' must be mappings")
        for metric, goal in goals.items():
            check_goal(goal, metric)
        status = fields.get("status")
        if status is not None and status not in STATUSES:
            raise ValueError(f"meta record: status {status!r} is not one of {STATUSES}")
        applied = self._update_run_file(record, lambda meta: meta.update(fields))
        if applied and goals:
            self._update_summary(goals=goals)

    def _finish(self, record: Mapping[str, Any]) -> None:
        status = record.get("status", "completed")
        if status not in FINAL_STATUSES:
            raise ValueError(
                f"finish record: status {status!r} is not one of {', '.join(FINAL_STATUSES)}"
            )
        finished_at = _time(record)

        def change(meta: dict[str, Any]) -> None:
            meta.update(record.get("fields") or {})
            meta.update(
                status=status,
                reason=str(record.get("reason") or ""),
                by=record.get("by"),
                error=record.get("error"),
                finished_at=finished_at,
            )
            started, duration = meta.get("started_at"), record.get("duration_s")
            if isinstance(duration, (int, float)) and not isinstance(duration, bool):
                meta["duration_s"] = max(0.0, float(duration))  # e.g. a resumed run's training
            elif isinstance(started, (int, float)):
                meta["duration_s"] = max(0.0, finished_at - started)

        if self._update_run_file(record, change):
            self._update_summary(last=record.get("summary") or None, now=True)
        _forget(self.dir)


def _version_aliases(index: dict[str, Any]) -> None:
    """Give each version the `aliases` that name it in the index's map, and no others.

    The map is the truth; the lists repeat it per version, so an alias that moved on is no
    longer listed on the version it left (each alias is on exactly one version).
    """
    named: dict[str, list[str]] = {}
    for alias, version in index["aliases"].items():
        named.setdefault(version, []).append(alias)
    for entry in index["versions"]:
        aliases = named.get(entry["version"])
        if aliases:
            entry["aliases"] = aliases
        else:
            entry.pop("aliases", None)


def _time(record: Mapping[str, Any]) -> float:
    value = record.get("time")
    return float(value) if isinstance(value, (int, float)) else time.time()


def _required_str(record: Mapping[str, Any], field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{record.get('kind')} record needs a non-empty string {field!r}")
    return value


def check_log(record: Mapping[str, Any]) -> None:
    """ValueError naming what makes `record` an invalid log record (its values), else None."""
    _checked_values(record.get("values"))


def _checked_values(values: Any) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise ValueError("log record needs 'values', a mapping of names to numbers")
    for name, value in values.items():
        if not isinstance(name, str) or not name or name in ROW_FIELDS:
            raise ValueError(f"log record: {name!r} cannot name a value ({ROW_FIELDS} are taken)")
        if not isinstance(value, (bool, int, float)):
            raise ValueError(f"log record: value {name!r} = {value!r} is not a number")
    return dict(values)


def _copy_source(source: Path, target: Path) -> None:
    """A copy, never a hard link: the version keeps these bytes if the source is rewritten."""
    try:
        copy_file(source, target)
    except FileNotFoundError as exc:
        if exc.filename is not None and Path(exc.filename) == source:
            raise FileNotFoundError(f"artifact file {source} no longer exists") from None
        raise


# One state per process and run directory, shared by every LocalSink on it.
_states: dict[tuple[int, str], _RunDirState] = {}
_states_lock = threading.Lock()


def _state_for(run_dir: Path) -> _RunDirState:
    where = (os.getpid(), os.path.abspath(run_dir))
    with _states_lock:
        state = _states.get(where)
        if state is None:
            state = _states[where] = _RunDirState(Path(where[1]))
        return state


def _existing_state(run_dir: Path) -> _RunDirState | None:
    with _states_lock:
        return _states.get((os.getpid(), os.path.abspath(run_dir)))


def _forget(run_dir: Path) -> None:
    """Drop what this process keeps about a finished run (rebuilt from the files if needed)."""
    with _states_lock:
        _states.pop((os.getpid(), os.path.abspath(run_dir)), None)


__all__ = [
    "FINAL_STATUSES",
    "RECORD_KINDS",
    "STATUSES",
    "LocalSink",
    "TrackingError",
    "check_log",
    "run_lock",
]
