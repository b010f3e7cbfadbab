"""The run directory: its layout, the checkpoint manifest, and finding what `--resume` means.

runs/<name>-<YYYYmmdd-HHMMSS>-<4 hex>/
    config.yaml             the resolved config of the latest invocation
    metrics.json            final metrics and status
    checkpoints/*.pt        checkpoints (torch.load(..., weights_only=True))
    checkpoints/manifest.json   {"latest", "best", "checkpoints": [{file, step, score, sha256}]}
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError

# The manifest's format, writes and lock live in trainer.manifest; the names stay importable here.
from trainer.manifest import MANIFEST_FILE, ManifestError, write_json_atomic, write_manifest
from trainer.manifest import read_manifest as _read_manifest

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"


__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "ResumeError",
    "ResumePoint",
    "latest_run_dir",
    "new_run_dir",
    "read_manifest",
    "resolve_resume",
    "write_json_atomic",
    "write_manifest",
]


class ResumeError(TrainerError, ValueError):
    """`--resume` names nothing usable; the message says what was looked for and where."""


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint to resume from and the run directory it belongs to (if any)."""

    checkpoint: Path
    sha256: str | None
    run_dir: Path | None


def new_run_dir(root: str | Path, name: str) -> Path:
    """Create and return a fresh `<root>/<name>-<timestamp>-<random id>` directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        path = Path(root) / f"{name}-{stamp}-{secrets.token_hex(2)}"
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:  # two runs in the same second drew the same id: draw again
            continue


def read_manifest(checkpoint_dir: Path) -> dict[str, Any]:
    """The manifest of a checkpoint directory; ResumeError if there is none."""
    try:
        return _read_manifest(checkpoint_dir)
    except ManifestError as exc:
        # What --resume reports; the manifest's own module stays free of resume concerns.
        raise ResumeError(str(exc)) from None


def latest_run_dir(root: str | Path, name: str) -> Path | None:
    """The most recently checkpointed run directory `<root>/<name>-*`, or None."""
    candidates = [
        p.parent.parent
        for p in Path(root).glob(f"{name}-*/{CHECKPOINT_DIR}/{MANIFEST_FILE}")
        if p.is_file()
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda d: (d / CHECKPOINT_DIR / MANIFEST_FILE).stat().st_mtime_ns)


def resolve_resume(spec: str, run_dir: Path | None, root: str | Path, name: str) -> ResumePoint:
    """What `--resume latest|best|PATH` points at (`run_dir` is `--run-dir`, if given).

    `latest`/`best` read the manifest of `run_dir`, or else of the newest run `<root>/<name>-*`.
    PATH is a checkpoint file, a run directory or a checkpoint directory (its latest checkpoint).
    """
    if spec in ("latest", "best"):
        where = run_dir or latest_run_dir(root, name)
        if where is None:
            raise ResumeError(
                f"--resume {spec}: no run named {name!r} with checkpoints under {root}/; "
                "pass --run-dir DIR or a checkpoint PATH"
            )
        return _from_manifest(where / CHECKPOINT_DIR, spec, where)
    path = Path(spec)
    if path.is_file():
        owner = path.parent.parent if path.parent.name == CHECKPOINT_DIR else None
        if owner is not None and not (owner / CONFIG_FILE).is_file():
            owner = None
        sha = _manifest_sha(path)
        return ResumePoint(path, sha, owner)
    if path.is_dir():
        if (path / CHECKPOINT_DIR).is_dir():
            return _from_manifest(path / CHECKPOINT_DIR, "latest", path)
        if (path / MANIFEST_FILE).is_file():
            owner = path.parent if (path.parent / CONFIG_FILE).is_file() else None
            return _from_manifest(path, "latest", owner)
        raise ResumeError(f"--resume {spec}: directory holds neither checkpoints/ nor a manifest")
    raise ResumeError(f"--resume {spec}: no such checkpoint file or run directory")


def _from_manifest(checkpoint_dir: Path, which: str, owner: Path | None) -> ResumePoint:
    manifest = read_manifest(checkpoint_dir)
    chosen = manifest.get(which)
    if not chosen:
        reason = "no checkpoint has a score" if which == "best" else "no checkpoint is kept"
        path = checkpoint_dir / MANIFEST_FILE
        raise ResumeError(f"--resume {which}: {path} names none ({reason})")
    sha = next((e.get("sha256") for e in manifest["checkpoints"] if e["file"] == chosen), None)
    return ResumePoint(checkpoint_dir / chosen, sha, owner)


def _manifest_sha(checkpoint: Path) -> str | None:
    try:
        manifest = read_manifest(checkpoint.parent)
    except ResumeError:
        return None
    return next(
        (e.get("sha256") for e in manifest["checkpoints"] if e["file"] == checkpoint.name), None
    )
