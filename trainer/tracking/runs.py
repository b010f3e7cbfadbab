"""A tracked run: what a user logs, turned into records handed to the run's Sink.

`run()` starts (or, with the id of an existing run of the same project, resumes) a run;
`open_run(dir)` reopens a run directory to append to it (the tracking worker does).
"""

from __future__ import annotations

import atexit
import operator
import os
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from trainer.run_dir import new_run_dir
from trainer.tracking.artifact import Artifact
from trainer.tracking.errors import TrackingError, tracking_error
from trainer.tracking.layout import RUN_FILE, check_name, file_part, read_json, runs_root
from trainer.tracking.local import FINAL_STATUSES, LocalSink
from trainer.tracking.modes import check_mode, get_mode
from trainer.tracking.sink import NullSink, Sink, online_sink
from trainer.tracking.summary import ROW_FIELDS, check_goal
from trainer.tracking.values import histogram, jsonable, png_bytes, to_number

# The reason of a run ended by Ctrl-C in its `with` block: a run killed, not one that finished.
INTERRUPTED = "interrupted (KeyboardInterrupt)"


class Run:
    """One run: `log` metrics, histograms, images and artifacts; `finish` with a status.

    Every method builds a record and hands it to the sink: a LocalSink (offline), the online
    sink (online) or a NullSink (disabled: nothing is converted, nothing written).
    """

    def __init__(
        self,
        *,
        id: str,
        project: str,
        name: str,
        dir: Path | None,
        mode: str,
        config: Mapping[str, Any] | None = None,
        tags: Sequence[str] = (),
        notes: str = "",
        sink: Sink,
    ) -> None:
        self.id = id
        self.project = project
        self.name = name
        self.dir = dir
        self.mode = mode
        self.config: dict[str, Any] = dict(config or {})
        self.tags: list[str] = list(tags)
        self.notes = notes
        self.status = "running"
        self._sink = sink
        self._off = isinstance(sink, NullSink)
        self._finished = False

    @property
    def finished(self) -> bool:
        """Whether `finish` was called."""
        return self._finished

    def log(
        self,
        data: Mapping[str, float | int | bool],
        step: int | None = None,
        *,
        key: str | None = None,
    ) -> None:
        """Log one row of values at `step` (default: one past the highest step so far).

        A `key` makes the row idempotent: a row whose key is already in the run is skipped.
        """
        if self._off:
            return
        self._check_open()
        if not isinstance(data, Mapping):
            raise TypeError(f"log() takes a mapping of names to numbers, not {type(data).__name__}")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"log(): value names must be non-empty strings, not {name!r}")
            if name in ROW_FIELDS:
                raise ValueError(
                    f"log(): {name!r} names a field of every row; pass step=... and key=... "
                    "as arguments"
                )
            values[name] = to_number(name, value)
        self._write({"kind": "log", "step": _step(step), "values": values}, key)

    def log_histogram(
        self,
        name: str,
        values: Any,
        bins: int = 64,
        step: int | None = None,
        *,
        key: str | None = None,
    ) -> None:
        """Log the histogram of `values` (a list, numpy array or tensor) in `bins` equal bins.

        `step` defaults to the step of the latest metrics row (0 before any).
        """
        if self._off:
            return
        self._check_open()
        edges, counts = histogram(name, values, bins)
        record = {"kind": "histogram", "name": _name(name), "step": _step(step)}
        record.update(bins=edges, counts=counts)
        self._write(record, key)

    def log_image(
        self,
        name: str,
        image: str | os.PathLike[str] | Any = None,
        caption: str | None = None,
        step: int | None = None,
        *,
        image_path: str | os.PathLike[str] | None = None,
        key: str | None = None,
    ) -> None:
        """Log an image file or an HxW / HxWx{1,3,4} array (uint8, or floats in [0, 1]) as PNG.

        The file may also be given as `image_path=` (the guide's spelling); `caption` is kept
        with the image. `step` defaults to the step of the latest metrics row (0 before any).
        """
        if (image is None) == (image_path is None):
            given = "both" if image is not None else "neither"
            raise TypeError(
                f"log_image({name!r}): give the image or image_path=, not {given} "
                "(e.g. log_image(name='prediction', image_path='pred.png'))"
            )
        if self._off:
            return
        self._check_open()
        if caption is not None and not isinstance(caption, str):
            raise TypeError(f"log_image({name!r}): caption must be a string, not {caption!r}")
        png, width, height = png_bytes(name, image if image is not None else image_path)
        record = {"kind": "image", "name": _name(name), "step": _step(step), "png": png}
        record.update(caption=caption, width=width, height=height)
        self._write(record, key)

    def log_artifact(
        self, artifact: Artifact, aliases: Sequence[str] = (), *, key: str | None = None
    ) -> str:
        """Log a new version of `artifact`; returns it ("v0", "v1"...; "" if not known here).

        "latest" moves to the new version; each alias in `aliases` moves to it as well.
        """
        if self._off:
            return ""
        self._check_open()
        if not isinstance(artifact, Artifact):
            raise TypeError(f"log_artifact() takes a tracking.Artifact, not {artifact!r}")
        if isinstance(aliases, str):
            aliases = [aliases]
        record = {
            "kind": "artifact",
            "name": artifact.name,
            "type": artifact.type,
            "description": artifact.description,
            "metadata": artifact.metadata,
            "aliases": [check_name(a, "artifact alias") for a in aliases],
            "files": artifact.file_entries(),
        }
        version = self._write(record, key)
        return version if isinstance(version, str) else ""

    def define_metric(self, name: str, goal: str) -> None:
        """Say which way is best for metric `name` ("min" or "max") in the summary."""
        if self._off:
            return
        self._check_open()
        self._write({"kind": "meta", "goals": {_name(name): check_goal(goal, name)}}, None)

    def update_meta(self, **fields: Any) -> None:
        """Set fields of run.json (e.g. epochs, iteration, world_size, resumed_from)."""
        if self._off:
            return
        self._write({"kind": "meta", "fields": jsonable(fields)}, None)

    def set_status(
        self,
        status: str,
        reason: str = "",
        by: str | None = None,
        error: str | None = None,
        summary: Mapping[str, Any] | None = None,
        *,
        key: str | None = None,
    ) -> None:
        """Record how the run ended (completed, terminated or failed) without closing it.

        `summary` values become the final values of those metrics in summary.json.
        """
        if status not in FINAL_STATUSES:
            raise ValueError(f"run status {status!r} is not one of {', '.join(FINAL_STATUSES)}")
        self.status = status
        if self._off:
            return
        record: dict[str, Any] = {"kind": "finish", "status": status, "reason": reason}
        record.update(by=by, error=error)
        if summary:
            record["summary"] = {k: to_number(k, v) for k, v in summary.items()}
        self._write(record, key)

    def finish(
        self,
        status: str = "completed",
        reason: str = "",
        by: str | None = None,
        error: str | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> None:
        """End the run with `status` and close its sink; a second call does nothing."""
        if self._finished:
            return
        self.set_status(status, reason, by, error, summary)
        self._finished = True
        _unfinished.discard(self)
        self._sink.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            self.finish()
        elif isinstance(exc, KeyboardInterrupt):
            self.finish("terminated", reason=INTERRUPTED)
        else:
            self.finish("failed", error=f"{type(exc).__name__}: {exc}")

    def _check_open(self) -> None:
        if self._finished:
            raise TrackingError(
                f"run {self.id!r} is finished ({self.status}); reopen it with "
                "tracking.open_run(dir) or start a new run to log more",
                path=self.dir,
            )

    def _write(self, record: dict[str, Any], key: str | None) -> Any:
        record["time"] = time.time()
        if key is not None:
            record["key"] = str(key)
        return self._sink.write(record)

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, project={self.project!r}, mode={self.mode!r})"


def run(
    project: str,
    name: str | None = None,
    config: Mapping[str, Any] | None = None,
    tags: Sequence[str] = (),
    mode: str | None = None,
    dir: str | os.PathLike[str] | None = None,
    id: str | None = None,
    notes: str = "",
) -> Run:
    """Start a run of `project` in `<dir>/<id>` (dir: env TRAINER_RUNS_DIR, else `runs`).

    With the `id` of an existing run of the same project, that run is resumed: it continues
    in its own directory. `mode` defaults to `get_mode()`.
    """
    mode = check_mode(mode) if mode is not None else get_mode()
    if not isinstance(project, str) or not project:
        raise ValueError(f"tracking.run(): project must be a non-empty string, not {project!r}")
    if isinstance(tags, str):
        tags = [tags]
    tag_list = [str(t) for t in tags]
    settings = jsonable(dict(config or {}))
    prefix = file_part(name or project)
    if id is not None:
        check_name(id, "run id")
    root = runs_root(dir)
    if mode == "disabled":
        run_id = id or _new_id(prefix)
        return Run(
            id=run_id,
            project=project,
            name=name or run_id,
            dir=None,
            mode=mode,
            config=settings,
            tags=tag_list,
            notes=notes,
            sink=NullSink(),
        )
    now = time.time()
    if mode == "online":
        run_dir, previous = root / (id or _new_id(prefix)), None
    else:
        run_dir, previous = _claim_dir(root, id, prefix, project)
    fields: dict[str, Any] = {}
    if previous is None:
        fields.update(
            id=run_dir.name,
            project=project,
            name=name or run_dir.name,
            tags=tag_list,
            notes=notes,
            config=settings,
        )
    fields.update(status="running", reason="", by=None, error=None)
    fields.update(host=socket.gethostname(), pid=os.getpid())
    if previous is None:
        fields.update(started_at=now, finished_at=None, duration_s=None)
    else:  # resumed: it continues its own directory, its earlier ending forgotten
        fields.update(finished_at=None, duration_s=None)
        fields.update(resumed_at=now, resumes=int(previous.get("resumes", 0)) + 1)
        if name is not None:
            fields["name"] = name
        if tags:
            fields["tags"] = tag_list
        if notes:
            fields["notes"] = notes
        if config is not None:
            fields["config"] = settings
    meta = {"kind": "meta", "fields": fields, "time": now}
    sink = online_sink(meta) if mode == "online" else LocalSink(run_dir)
    sink.write(meta)
    known = {**(previous or {}), **fields}
    tracked = Run(
        id=run_dir.name,
        project=project,
        name=known.get("name") or run_dir.name,
        dir=run_dir,
        mode=mode,
        config=known.get("config") or {},
        tags=known.get("tags") or [],
        notes=known.get("notes") or "",
        sink=sink,
    )
    _unfinished.add(tracked)
    return tracked


def open_run(path: str | os.PathLike[str]) -> Run:
    """Reopen an existing run directory to append to it (writes nothing by itself)."""
    run_dir = Path(path)
    try:
        meta = read_json(run_dir / RUN_FILE)
    except ValueError as exc:
        raise TrackingError(
            f"tracking: {run_dir / RUN_FILE} is not valid JSON ({exc})", path=run_dir / RUN_FILE
        ) from None
    except OSError as exc:
        raise tracking_error(exc, "read", run_dir / RUN_FILE) from exc
    if not isinstance(meta, dict):
        raise TrackingError(
            f"tracking: {run_dir} is not a run directory (no {RUN_FILE}); "
            "start a run with tracking.run(project, ...)",
            path=run_dir,
        )
    return Run(
        id=str(meta.get("id") or run_dir.name),
        project=str(meta.get("project") or ""),
        name=str(meta.get("name") or run_dir.name),
        dir=run_dir,
        mode="offline",
        config=meta.get("config") or {},
        tags=meta.get("tags") or [],
        notes=str(meta.get("notes") or ""),
        sink=LocalSink(run_dir),
    )


def _claim_dir(
    root: Path, run_id: str | None, prefix: str, project: str
) -> tuple[Path, dict[str, Any] | None]:
    """A new run directory, or the existing one of `run_id` and its run.json (to resume)."""
    if run_id is None:
        try:
            return new_run_dir(root, prefix), None
        except OSError as exc:
            raise tracking_error(exc, "create a run directory in", root) from exc
    path = root / run_id
    try:
        path.mkdir(parents=True)
        return path, None
    except FileExistsError:
        pass
    except OSError as exc:
        raise tracking_error(exc, "create the run directory", path) from exc
    if not path.is_dir():
        raise TrackingError(f"tracking: run id {run_id!r}: {path} exists and is not a directory")
    try:
        meta = read_json(path / RUN_FILE)
    except ValueError:
        meta = {"project": "?"}
    if meta is None:
        return path, None  # a directory the trainer made for this run: tracking starts in it
    if meta.get("project") != project:
        raise TrackingError(
            f"tracking: run id {run_id!r} is taken in {root} by project "
            f"{meta.get('project')!r}; pass another id, or project={meta.get('project')!r} to "
            "resume that run",
            path=path,
            reason="belongs to another project",
        )
    return path, meta


def _new_id(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _step(step: Any) -> int | None:
    if step is None:
        return None
    if isinstance(step, bool):
        raise TypeError(f"step must be an integer, not {step!r}")
    try:
        return operator.index(step)
    except TypeError:
        raise TypeError(f"step must be an integer, not {step!r}") from None


def _name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"a logged name must be a non-empty string, not {name!r}")
    return name


# Runs started here and not finished yet: finished at exit (failed if an exception ended it).
_unfinished: set[Run] = set()


@atexit.register
def _finish_at_exit() -> None:
    import sys

    error = getattr(sys, "last_value", None)
    for tracked in list(_unfinished):
        try:
            if error is not None:
                tracked.finish("failed", error=f"{type(error).__name__}: {error}")
            else:
                tracked.finish()
        except Exception:  # the interpreter is exiting: there is no one left to tell
            pass
