"""tracking: writes a run's directory in the tracking store from the run's events.

What it writes, through the store's own writer (`trainer.tracking.LocalSink`, the one that
`tracking.run(...)` uses in offline mode):
- RUN_STARTED: run.json metadata (project, name, config, host, pid, world size, resumed from,
  and for a sweep's trial its `sweep`: id, trial, params);
- per epoch and split, one metrics row `{"epoch", "<split>/<metric>": value}` at the trainer's
  iteration, from the epoch's figures (`workers.figures`: the aggregator's METRICS or, in a
  one-rank run, EPOCH_COMPLETED's own metrics, which are the same numbers);
- CHECKPOINT_SAVED: a version of the artifact `checkpoints` (type model) referring to the file,
  with the aliases the checkpointer gave it (`latest`, `best`); CHECKPOINT_PRUNED marks that
  version removed, so the artifact's live versions are the files the checkpointer keeps;
- RUN_FINISHED: status, reason, who stopped it (`by`, and `voter` after a vote), timings;
- TRACK: the records of an online `tracking.run(...)`, applied as they are.

Every write carries a key derived from what it records (the split and epoch of a row, the
sha256 of a checkpoint), so redelivery, a restarted worker and a worker back-filling a run
(`--from start`) never duplicate a row. Times come from the envelopes (the trainer's clock), so
two workers that saw the same events write the same directory.

When: the worker reads a run's events every READ_LINGER seconds (sooner once the run ends), and
writes the metrics rows of what it read in one go (`LocalSink.apply_logs`) before acking it,
so the run directory follows a live run within about half a second (summary.json within
`trainer.tracking.local.SUMMARY_EVERY` seconds: readers fold the newer rows themselves).

Where: `--dir ROOT` writes `ROOT/<run id>`. Without it, the trainer's own run directory (from
RUN_STARTED) when this machine sees it, as in the embedded default and a compose stack sharing
a volume; else `$TRAINER_RUNS_DIR/<run id>`, else the run config's `run.dir`, else `runs`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from bus import Envelope, Rejected
from bus.messages import (
    CHECKPOINT_PRUNED,
    CHECKPOINT_SAVED,
    EPOCH_COMPLETED,
    METRICS,
    RUN_FINISHED,
    RUN_STARTED,
    TRACK,
)
from trainer.config_schema import RunSection
from trainer.tracking import LocalSink
from trainer.tracking.local import check_log
from workers.base import Worker
from workers.context import RunContext, config_value
from workers.figures import EpochFigures, epoch_figures

RUNS_DIR_ENV = "TRAINER_RUNS_DIR"
# Where run directories go when neither the environment nor the run's config says: the schema's.
RUNS_DIR = RunSection().dir
CHECKPOINTS_ARTIFACT = "checkpoints"
# What a TRACK envelope may carry: every record kind of the store but "removed", which only the
# tracking worker itself makes (from CHECKPOINT_PRUNED).
TRACK_RECORD_KINDS = ("meta", "log", "histogram", "image", "artifact", "finish")
# Seconds the worker lets a run's events gather between reads: it wakes about twice a second
# while the run streams events, not at every epoch, and the run directory lags by that much.
READ_LINGER = 0.5


class TrackingWorker(Worker):
    """Keep a run's tracking directory: metadata, per-epoch metrics, checkpoints, status."""

    kind: ClassVar[str] = "tracking"
    handles: ClassVar[frozenset[str] | None] = frozenset(
        {
            RUN_STARTED,
            METRICS,
            EPOCH_COMPLETED,
            CHECKPOINT_SAVED,
            CHECKPOINT_PRUNED,
            RUN_FINISHED,
            TRACK,
        }
    )
    read_linger: ClassVar[float | None] = READ_LINGER
    # Entries per read: a run streams hundreds between two reads, and passing over the ones
    # the worker does not handle, or keeping back a row, takes microseconds.
    consumer_batch: ClassVar[int] = 1000

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add --dir and --project."""
        parser.add_argument(
            "--dir",
            metavar="ROOT",
            help="write runs to ROOT/<run id> (default: the trainer's run directory when "
            f"reachable, else ${RUNS_DIR_ENV}, else the run's run.dir)",
        )
        parser.add_argument(
            "--project", help="project of trainer runs (default: tracking.project, else run.name)"
        )

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise ValueError for an empty --dir or --project."""
        for name in ("dir", "project"):
            value = options.get(name)
            if value is not None and not (isinstance(value, str) and value.strip()):
                raise ValueError(f"tracking --{name} {value!r} is not a non-empty string")

    def __init__(self, ctx: RunContext, options: Mapping[str, Any]) -> None:
        self.check_options(options)
        super().__init__(ctx, options)
        self.sink: LocalSink | None = None
        self.run_dir: Path | None = None
        # Log records kept back until `flush` (the end of the batch of deliveries), their keys,
        # and the keys of the rows written: a METRICS after its one-rank EPOCH_COMPLETED (the
        # same row) is passed over here, without a trip to the files.
        self._rows: list[dict[str, Any]] = []
        self._kept: set[str] = set()
        self._written: set[str] = set()

    async def handle(self, env: Envelope) -> None:
        """Turn one event of the run into the tracking records it means."""
        record = self._record(env)
        if record is None:
            return
        sink = self._sink(env)
        if record["kind"] == "log":
            key = record.get("key")
            if key in self._written or key in self._kept:
                return  # that row is written, or will be with this batch
            try:
                check_log(record)
            except ValueError as exc:  # refused now, not when the batch is written
                raise Rejected(f"tracking record refused: {exc}") from exc
            self._rows.append(record)
            if key is not None:
                self._kept.add(key)
            return
        await self.flush()  # the rows before this record are written before it
        try:
            # File writes (with fsync) off the event loop: in the embedded default it is the
            # loop that carries the trainer's publishing and control.
            await asyncio.to_thread(sink.apply, record)
        except ValueError as exc:  # a record the store refuses will never be written
            raise Rejected(f"tracking record refused: {exc}") from exc

    async def flush(self) -> None:
        """Write the rows kept back, in one go (before the batch that brought them is acked)."""
        rows, count = self._rows, len(self._rows)
        if not count or self.sink is None:
            return
        try:
            await asyncio.to_thread(self.sink.apply_logs, rows[:count])
        except ValueError:
            # Checked when kept, so never expected; dropped rather than retried for ever: the
            # batch is delivered again (and its rows checked again) or dead-lettered.
            self._rows, self._kept = [], set()
            raise
        # On a TrackingError (full disk...) they stay kept back: written with the next batch,
        # or when this one comes again (the files skip the rows they have, by key).
        del rows[:count]
        self._written |= self._kept
        self._kept = set()

    async def close(self) -> None:
        """Bring the run's summary.json up to date with the rows written."""
        if self.sink is not None:
            await asyncio.to_thread(self.sink.close)

    # -- events to records ----------------------------------------------------------------

    def _record(self, env: Envelope) -> dict[str, Any] | None:
        kind, data = env.type, env.data
        if kind == RUN_STARTED:
            return self._started(env)
        if kind in (METRICS, EPOCH_COMPLETED):
            figures = epoch_figures(env, self.ctx.world_size)
            return None if figures is None else self._row(env, figures)
        if kind == CHECKPOINT_SAVED:
            return self._checkpoint(env)
        if kind == CHECKPOINT_PRUNED and isinstance(data.get("sha256"), str):
            # The version stays in the artifact's history, marked removed with its file.
            removed = {"kind": "removed", "name": CHECKPOINTS_ARTIFACT, "sha256": data["sha256"]}
            return {**removed, "time": env.ts}
        if kind == RUN_FINISHED:
            return self._finished(env)
        if kind == TRACK:
            return self._track(env)
        return None

    def _started(self, env: Envelope) -> dict[str, Any]:
        data, config = env.data, env.data.get("config") or {}
        name = data.get("name") or config_value(config, "run.name") or env.run_id
        project = (
            self.options.get("project")
            or data.get("project")
            or config_value(config, "tracking.project")
            or name
        )
        fields: dict[str, Any] = {
            "id": env.run_id,
            "project": str(project),
            "name": str(name),
            "config": dict(config),
            "status": "running",
            "host": data.get("host"),
            "pid": data.get("pid"),
            # A rank 0 that speaks for every rank (no shared bus) says how many there are.
            "world_size": data.get("reduced_ranks") or data.get("world_size", 1),
            "resumed_from": data.get("resumed_from"),
            "started_at": env.ts,
            "finished_at": None,
            "duration_s": None,
        }
        if isinstance(data.get("sweep"), Mapping):
            fields["sweep"] = dict(data["sweep"])  # a sweep's trial: `runs ls --sweep` finds it
        tags = data.get("tags") or config_value(config, "tracking.tags")
        if tags:
            fields["tags"] = [str(t) for t in tags]
        if data.get("resumed_from") is not None:
            fields.pop("started_at")  # a resume continues the run's own clock
            fields["resumed_at"] = env.ts
        return {"kind": "meta", "fields": fields, "time": env.ts, "key": f"started:{env.id}"}

    def _row(self, env: Envelope, figures: EpochFigures) -> dict[str, Any] | None:
        split, epoch = figures.split, figures.epoch
        row: dict[str, Any] = {"epoch": epoch + 1}  # epochs completed, as people count
        for name, value in figures.values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[f"{split}/{name}"] = float(value)
        if len(row) == 1:
            return None
        key = f"epoch:{split}:{epoch}"
        return {"kind": "log", "values": row, "step": env.iteration, "time": env.ts, "key": key}

    def _checkpoint(self, env: Envelope) -> dict[str, Any]:
        data = env.data
        path, sha256 = data.get("path"), data.get("sha256")
        if not isinstance(path, str) or not isinstance(sha256, str):
            raise Rejected(f"CHECKPOINT_SAVED {env.id}: needs a path and a sha256")
        # From the event, never from the disk: a tracker back-filling later must write the same
        # record, whether or not the file has been pruned since.
        size = data.get("size")
        return {
            "kind": "artifact",
            "name": CHECKPOINTS_ARTIFACT,
            "type": "model",
            "description": "checkpoints kept by the checkpoint worker",
            "files": [{"name": Path(path).name, "path": path, "sha256": sha256, "size": size}],
            "aliases": [str(a) for a in data.get("aliases") or ()],
            "metadata": {"epoch": data.get("epoch"), "iteration": data.get("iteration")},
            "time": env.ts,
            "key": f"checkpoint:{sha256}",
        }

    def _finished(self, env: Envelope) -> dict[str, Any] | None:
        data = env.data
        if env.source.startswith("trainer:") and env.source != "trainer:0":
            return None  # every rank announces its end; rank 0 speaks for the run
        return {
            "kind": "finish",
            "status": data.get("status", "completed"),
            "reason": str(data.get("reason") or ""),
            "by": data.get("by"),
            # The trainer's count of time training, which leaves out the time a run was down.
            "duration_s": data.get("duration_s"),
            "fields": {
                "epochs": data.get("epochs"),
                "iteration": data.get("iteration"),
                "voter": data.get("voter"),
            },
            "time": env.ts,
            "key": f"finished:{env.id}",
        }

    def _track(self, env: Envelope) -> dict[str, Any]:
        record = dict(env.data)
        if record.get("kind") not in TRACK_RECORD_KINDS:
            raise Rejected(f"TRACK {env.id}: record kind {record.get('kind')!r} is unknown")
        if record.get("kind") == "artifact":
            for entry in record.get("files") or ():
                if isinstance(entry, Mapping) and "source" in entry:
                    # A path on the sender's machine: only inlined bytes may cross the bus.
                    raise Rejected(f"TRACK {env.id}: artifact file names a local source path")
        record.setdefault("key", f"track:{env.id}")
        return record

    # -- where ------------------------------------------------------------------------------

    def _sink(self, env: Envelope) -> LocalSink:
        if self.sink is None:
            self.run_dir = self._where(env)
            self.sink = LocalSink(self.run_dir)
            self.ctx.log.info("tracking", extra={"dir": str(self.run_dir)})
        return self.sink

    def _where(self, env: Envelope) -> Path:
        root = self.options.get("dir")
        if root:
            return Path(root) / env.run_id
        started = self.ctx.started.data if self.ctx.started is not None else {}
        trainer_dir = started.get("run_dir")
        if isinstance(trainer_dir, str) and Path(trainer_dir).is_dir():
            return Path(trainer_dir)
        root = os.environ.get(RUNS_DIR_ENV) or config_value(self.ctx.config, "run.dir") or RUNS_DIR
        return Path(root) / env.run_id
