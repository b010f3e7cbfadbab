"""The checkpoint manifest of a checkpoint directory: format, atomic writes, reads and its lock.

``<dir>/manifest.json`` is::

    {"latest": file | null, "best": file | null,
     "checkpoints": [{"file", "step", "score", "sha256", ...}, ...]   (oldest first)
     ...}                                                            (extra keys allowed)

``latest`` is the kept checkpoint with the highest step and ``best`` the one with the highest
score (the sign already applied: higher is better), as ``trainer.retention`` decides. Writers
replace the file atomically, so a reader never sees a torn manifest; writers that read, modify
and write it from several processes (checkpoint-worker replicas) hold ``manifest_lock``.

Torch-free: the checkpoint worker imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.atomic_file import atomic_file
from trainer.errors import TrainerError
from trainer.retention import CheckpointRecord, latest

MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".manifest.lock"

_HASH_CHUNK = 1 << 20


class ManifestError(TrainerError, ValueError):
    """A manifest is missing or unreadable; the message names the file and what is wrong."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write `data` as JSON so that readers see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def empty_manifest() -> dict[str, Any]:
    """The manifest of a directory where nothing was filed yet."""
    return {"latest": None, "best": None, "checkpoints": []}


def write_manifest_entries(
    checkpoint_dir: Path,
    entries: Sequence[Mapping[str, Any]],
    best: str | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the manifest listing `entries` (dicts with at least file and step); return it.

    `latest` is derived from the entries; `extra` adds top-level keys (e.g. "handled").
    """
    checked = [dict(entry) for entry in entries]
    for entry in checked:
        if "file" not in entry or "step" not in entry:
            raise ValueError(f"manifest entry {entry!r} needs at least 'file' and 'step'")
        entry.setdefault("score", None)
        entry.setdefault("sha256", None)
    newest = latest(CheckpointRecord(e["file"], e["step"]) for e in checked)
    manifest: dict[str, Any] = dict(extra or {})
    manifest.update(
        latest=newest.name if newest is not None else None, best=best, checkpoints=checked
    )
    write_json_atomic(Path(checkpoint_dir) / MANIFEST_FILE, manifest)
    return manifest


def write_manifest(
    checkpoint_dir: Path,
    saved: list[tuple[str, int, float | None]],
    sha256: Mapping[str, str],
    best: str | None,
) -> None:
    """Record the kept checkpoints (name, step, score), the latest and the best."""
    entries = [
        {"file": name, "step": step, "score": score, "sha256": sha256.get(name)}
        for name, step, score in saved
    ]
    write_manifest_entries(Path(checkpoint_dir), entries, best)


def read_manifest(checkpoint_dir: Path, *, missing_ok: bool = False) -> dict[str, Any]:
    """The manifest of a checkpoint directory (empty if absent and `missing_ok`)."""
    path = Path(checkpoint_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return empty_manifest()
        raise ManifestError(f"no checkpoint manifest at {path}: no checkpoint was saved") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"checkpoint manifest {path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("checkpoints"), list):
        raise ManifestError(f"checkpoint manifest {path} has no 'checkpoints' list")
    return manifest


def manifest_records(manifest: Mapping[str, Any]) -> list[CheckpointRecord]:
    """The manifest's checkpoints as retention records, in the manifest's order."""
    return [
        CheckpointRecord(e["file"], int(e["step"]), e.get("score")) for e in manifest["checkpoints"]
    ]


@contextlib.contextmanager
def manifest_lock(checkpoint_dir: Path) -> Iterator[None]:
    """Hold the exclusive lock on `<dir>/.manifest.lock` (blocks until it is free).

    flock locks belong to open file descriptions, so the lock excludes other processes and
    other threads of this process alike; the kernel drops it if the holder dies.
    """
    directory = Path(checkpoint_dir)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
