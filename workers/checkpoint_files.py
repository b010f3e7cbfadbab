"""Filing checkpoints into a run's checkpoint directory: verify, move, retain, prune, manifest.

Synchronous and torch-free: the checkpoint worker runs these functions in a thread (hashing
and fsync must not stall its event loop). Every read-modify-write of the manifest happens
under `trainer.manifest.manifest_lock`, so replicas of the worker filing checkpoints of one
run into one directory never lose each other's updates, and the manifest's "handled" list
makes filing a CHECKPOINT_READY that is delivered twice (reclaimed, replayed) a no-op.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trainer.atomic_file import atomic_file
from trainer.checkpoint_names import checkpoint_filename
from trainer.checkpoint_tree import checkpoint_digest, remove_checkpoint
from trainer.manifest import (
    manifest_lock,
    manifest_records,
    read_manifest,
    write_manifest_entries,
)
from trainer.retention import CheckpointRecord, RetentionPolicy, best, latest
from workers.errors import WorkerError

# How many CHECKPOINT_READY ids the manifest remembers; a redelivery comes long before
# thousands of newer checkpoints, and the manifest is rewritten on every filing.
HANDLED_KEPT = 1000
# How many filings' reports (what the SAVED and PRUNED said) the manifest keeps, so that a
# replica reclaiming a READY whose filer died before its reports were written can send them.
REPORTS_KEPT = 100


class VerificationError(WorkerError):
    """A checkpoint file does not match what its CHECKPOINT_READY says; the message says how."""


@dataclass(frozen=True)
class Ready:
    """The parts of a CHECKPOINT_READY that filing needs."""

    id: str
    path: Path  # the file as this worker sees it
    size: int
    sha256: str
    epoch: int
    iteration: int
    name: str  # base name of the checkpoint file, e.g. "checkpoint"


@dataclass(frozen=True)
class Filed:
    """What filing one checkpoint did: the entry saved (maybe already pruned) and the pruned."""

    saved: dict[str, Any]
    saved_aliases: list[str]
    pruned: list[dict[str, Any]]
    latest: str | None
    best: str | None


def verify(ready: Ready) -> None:
    """Raise VerificationError unless `ready.path` exists with the announced size and sha256.

    The path may be a file or a directory (a framework's checkpoint folder); for a directory
    size and sha256 are those of `trainer.checkpoint_tree.checkpoint_digest`.
    """
    where = f"checkpoint {ready.path} (CHECKPOINT_READY {ready.id})"
    if ready.path.is_dir():
        size, actual = checkpoint_digest(ready.path)
    else:
        try:
            size = ready.path.stat().st_size
        except FileNotFoundError:
            raise VerificationError(
                f"{where} does not exist: is the checkpoint directory shared with the trainer "
                "and mounted at the same path? (--dir names it as this worker sees it)"
            ) from None
        actual = None
    if size != ready.size:
        raise VerificationError(
            f"{where} has {size} bytes but the trainer announced {ready.size}: it is "
            "incomplete or was replaced"
        )
    if actual is None:
        actual = checkpoint_digest(ready.path)[1]
    if actual != ready.sha256.lower():
        raise VerificationError(
            f"{where} has sha256 {actual} but the trainer announced {ready.sha256}: it "
            "is corrupt or was replaced"
        )


def is_handled(directory: Path, ready_id: str, *, locked: bool = False) -> bool:
    """Whether the manifest of `directory` records CHECKPOINT_READY `ready_id` as filed.

    With `locked`, wait for the manifest lock first, so that a filing in progress elsewhere
    (the file already moved, the manifest not yet written) has finished when this answers.
    """
    if not locked:
        return ready_id in read_manifest(directory, missing_ok=True).get("handled", [])
    with manifest_lock(directory):
        return is_handled(directory, ready_id)


def _move(source: Path, target: Path) -> None:
    """Move file or directory `source` to `target` atomically, also across file systems."""
    if source == target:
        return  # moved before, by a filer that died before writing the manifest
    if source.is_dir() and target.is_dir():
        remove_checkpoint(target)  # the same step filed again: a rename cannot replace a folder
    try:
        os.replace(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    # --dir on another file system than the trainer's directory: rename cannot cross it.
    if source.is_dir():
        staged = target.with_name(f".{target.name}.partial")
        remove_checkpoint(staged)
        shutil.copytree(source, staged)
        os.replace(staged, target)
        remove_checkpoint(source)
        return
    with atomic_file(target) as out, open(source, "rb") as src:
        shutil.copyfileobj(src, out)
    source.unlink()


def _finite(score: float | None) -> float | None:
    # NaN means "no score" to the retention rule; the manifest (JSON) says null instead.
    return None if score is None or math.isnan(score) else score


def _entry(ready: Ready, filename: str, score: float | None) -> dict[str, Any]:
    """The manifest's entry of checkpoint `ready` filed as `filename`."""
    return {
        "file": filename,
        "step": ready.iteration,
        "score": score,
        "sha256": ready.sha256.lower(),
        "epoch": ready.epoch,
        "iteration": ready.iteration,
        "ready_id": ready.id,
    }


def file_checkpoint(
    directory: Path,
    ready: Ready,
    score: float | None,
    policy: RetentionPolicy,
    score_name: str | None,
) -> Filed | None:
    """File a verified checkpoint into `directory` under the shared name rule; None if done before.

    `score` is higher-is-better (already negated for a "min" metric) or None. Under the
    manifest lock: skip a READY the manifest lists as handled, move the file to its final name,
    let `policy` decide what stays, delete the rest, and write the manifest naming latest and
    best. Files are pruned only after the new one is in place: a crash leaves extra files,
    never fewer.
    """
    score = _finite(score)
    with manifest_lock(directory):
        manifest = read_manifest(directory, missing_ok=True)
        handled = list(manifest.get("handled", []))
        if ready.id in handled:
            return None
        # A directory (a framework's checkpoint folder) is filed under the same name, sans ".pt".
        ext = "" if ready.path.is_dir() else "pt"
        filename = checkpoint_filename(
            ready.name, ready.iteration, score, score_name=score_name, ext=ext
        )
        new = CheckpointRecord(filename, ready.iteration, score)
        decision = policy.admit(manifest_records(manifest), new)
        _move(ready.path, directory / filename)
        entries = {e["file"]: e for e in manifest["checkpoints"]}
        entries[filename] = saved = _entry(ready, filename, score)
        pruned = [entries[rec.name] for rec in decision.prune]
        for entry in pruned:
            with contextlib.suppress(FileNotFoundError):  # already gone is what we want
                remove_checkpoint(directory / entry["file"])
        kept = decision.keep
        newest, top = latest(kept), best(kept)
        aliases = []
        if decision.new_kept:
            aliases += ["latest"] if newest is not None and newest.name == filename else []
            aliases += ["best"] if top is not None and top.name == filename else []
        handled = [*handled, ready.id][-HANDLED_KEPT:]
        report = {"ready_id": ready.id, "file": filename, "score": score, "aliases": aliases}
        reports = [*manifest.get("reports", []), {**report, "pruned": pruned}][-REPORTS_KEPT:]
        extra = {k: v for k, v in manifest.items() if k not in ("latest", "best", "checkpoints")}
        write_manifest_entries(
            directory,
            [entries[rec.name] for rec in kept],
            best=top.name if top is not None else None,
            extra={**extra, "handled": handled, "reports": reports},
        )
    return Filed(
        saved=saved,
        saved_aliases=aliases,
        pruned=pruned,
        latest=newest.name if newest is not None else None,
        best=top.name if top is not None else None,
    )


def moved_before(
    directory: Path, ready: Ready, score: float | None, score_name: str | None
) -> Ready | None:
    """`ready` at its final name in `directory`, if a filer that died between moving it there
    and writing the manifest left it so and it matches the READY; else None."""
    for ext in ("pt", ""):  # a file, or a framework's checkpoint folder
        name = checkpoint_filename(
            ready.name, ready.iteration, _finite(score), score_name=score_name, ext=ext
        )
        candidate = replace(ready, path=directory / name)
        if candidate.path.exists():
            try:
                verify(candidate)
            except VerificationError:
                return None
            return candidate
    return None


def filed_before(directory: Path, ready: Ready) -> Filed | None:
    """What filing `ready` did, as the manifest of `directory` recorded it; None if it has no
    record of it (filed too long ago, or by a version that kept no reports)."""
    manifest = read_manifest(directory, missing_ok=True)
    for report in reversed(manifest.get("reports", [])):
        if report.get("ready_id") == ready.id:
            break
    else:
        return None
    return Filed(
        saved=_entry(ready, report["file"], report["score"]),
        saved_aliases=list(report["aliases"]),
        pruned=list(report["pruned"]),
        latest=manifest.get("latest"),
        best=manifest.get("best"),
    )
