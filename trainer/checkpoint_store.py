"""Checkpoint files on disk: atomic writes with a sha256, safe loads, RNG state capture.

Used by the in-process ``Checkpoint`` handler, the trainer bridge and the checkpoint worker.
Everything written here loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import os
import random
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.atomic_file import atomic_file
from trainer.errors import TrainerError

# One hashing rule for writers and verifiers; kept importable from here.
from trainer.manifest import ManifestError, file_sha256, read_manifest

__all__ = [
    "CheckpointError",
    "DamagedCheckpoint",
    "RNGState",
    "SavedFile",
    "capture_rng_state",
    "check_stateful",
    "collect_state",
    "file_sha256",
    "load_checkpoint",
    "restore_rng_state",
    "restore_state",
    "save_atomic",
]


class CheckpointError(TrainerError):
    """A checkpoint could not be written, read or verified; ``path`` names the file."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = Path(path)
        super().__init__(f"checkpoint {self.path}: {message}")


class DamagedCheckpoint(CheckpointError):
    """A checkpoint file is truncated or corrupt; the message names the intact one to use.

    `intact` is the newest other checkpoint of the same directory that verifies (by the
    manifest's sha256, else as a sound archive), or None when there is none.
    """

    def __init__(self, path: str | os.PathLike[str], why: str) -> None:
        path = Path(path)
        self.why = why
        self.intact = newest_intact(path.parent, besides=path)
        if self.intact is not None:
            hint = (
                f"resume from {self.intact} instead (the newest other checkpoint there that "
                "verifies)"
            )
        else:
            hint = f"no other checkpoint in {path.parent} verifies"
        super().__init__(path, f"damaged ({why}); {hint}")


def _sound_archive(path: Path) -> bool:
    """Whether `path` is a zip archive (what torch.save writes) whose every member's CRC holds."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def newest_intact(directory: Path, besides: Path | None = None) -> Path | None:
    """The newest checkpoint of `directory` (other than `besides`) whose bytes verify, or None.

    Newest by the manifest's step when there is a manifest, else by modification time; a file
    verifies by the manifest's sha256 when it has one, else as a sound archive.
    """
    directory = Path(directory)
    skip = besides.name if besides is not None else None
    try:
        entries = read_manifest(directory, missing_ok=True)["checkpoints"]
    except ManifestError:
        entries = []
    listed = sorted(
        (e for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str)),
        key=lambda e: e.get("step") if isinstance(e.get("step"), int) else -1,
        reverse=True,
    )
    candidates: list[tuple[Path, str | None]] = [
        (directory / e["file"], e.get("sha256")) for e in listed if e["file"] != skip
    ]
    if not listed:
        files = [p for p in directory.glob("*.pt") if p.name != skip and p.is_file()]
        files.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
        candidates = [(p, None) for p in files]
    for candidate, sha256 in candidates:
        if not candidate.is_file():
            continue
        if sha256 is not None:
            if file_sha256(candidate) == str(sha256).lower():
                return candidate
        elif _sound_archive(candidate):
            return candidate
    return None


def _first_line(exc: BaseException, limit: int = 120) -> str:
    """`Type: first line of the message`, cut to `limit` characters: error text on one line."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class SavedFile:
    """Where a checkpoint was written and what its bytes are."""

    path: Path
    size: int
    sha256: str


class _HashingWriter:
    """A write-only file wrapper that hashes and counts what passes through it."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += view.nbytes
        return self._raw.write(view)

    def flush(self) -> None:
        self._raw.flush()


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> SavedFile:
    """Write ``obj`` with ``torch.save`` so that ``path`` is either the old file or the new one.

    The bytes go to a temporary file in the same directory, are flushed and fsynced, then
    renamed over ``path`` and the directory is fsynced. On any failure the temporary file is
    removed, an existing ``path`` is untouched, and a ``CheckpointError`` is raised.
    """
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise CheckpointError(path, f"directory {directory} does not exist")
    try:
        with atomic_file(path) as raw:
            writer = _HashingWriter(raw)
            torch.save(obj, writer)
    except Exception as exc:
        raise CheckpointError(path, f"save failed ({type(exc).__name__}: {exc})") from exc
    return SavedFile(path=path, size=writer.size, sha256=writer.digest.hexdigest())


def load_checkpoint(
    path: str | os.PathLike[str],
    sha256: str | None = None,
    map_location: str | torch.device | None = "cpu",
) -> Any:
    """Load a checkpoint with ``weights_only=True``, first checking ``sha256`` if given.

    Raises FileNotFoundError if the file is missing, ``DamagedCheckpoint`` if its bytes are not
    what was written (its hash does not match, or it is not a sound archive: truncated or
    corrupt), naming the newest intact checkpoint beside it, and ``CheckpointError`` if it is
    sound but not a weights-only checkpoint. Every message is one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256.lower():
            raise DamagedCheckpoint(
                path,
                f"truncated or corrupt: its sha256 {actual[:12]}… is not the recorded "
                f"{sha256.lower()[:12]}…",
            )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        if not _sound_archive(path):
            # What torch says of a torn archive (OSError: [Errno 22], an unpickling error
            # suggesting weights_only=False) only misleads: say what is wrong with the file.
            why = "truncated or corrupt: not a sound checkpoint archive"
            raise DamagedCheckpoint(path, why) from exc
        raise CheckpointError(
            path, f"cannot be loaded with weights_only=True ({_first_line(exc)})"
        ) from exc


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states of python ``random``, numpy and torch, weights_only-loadable."""
    version, internal, gauss_next = random.getstate()
    algo, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        # The key array becomes a tensor: weights_only refuses numpy arrays.
        "numpy": {
            "algorithm": algo,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global RNGs back to what ``capture_rng_state`` returned."""
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise KeyError(f"RNG state is missing keys {sorted(missing)}")
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    keys = np.asarray(npy["keys"], dtype=np.int64).astype(np.uint32)
    np.random.set_state(
        (npy["algorithm"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGState:
    """The global RNGs as an object with ``state_dict``/``load_state_dict``, for ``to_save``."""

    def state_dict(self) -> dict[str, Any]:
        """Capture the current global RNG states."""
        return capture_rng_state()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the global RNG states."""
        restore_rng_state(state)


def check_stateful(objects: Mapping[str, Any], *methods: str) -> None:
    """Raise TypeError naming the first object that lacks one of ``methods``."""
    for key, obj in objects.items():
        for method in methods:
            if not callable(getattr(obj, method, None)):
                raise TypeError(f"object {key!r} ({type(obj).__name__}) has no {method}() method")


def collect_state(to_save: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: obj.state_dict()}`` for every object in ``to_save``."""
    check_stateful(to_save, "state_dict")
    return {key: obj.state_dict() for key, obj in to_save.items()}


def restore_state(to_load: Mapping[str, Any], checkpoint: Mapping[str, Any], **kwargs: Any) -> None:
    """Call ``obj.load_state_dict(checkpoint[name])`` for every object in ``to_load``.

    ``kwargs`` (e.g. ``strict=False``) go to ``torch.nn.Module.load_state_dict`` only. If
    ``to_load`` has a single object and ``checkpoint`` lacks its name, ``checkpoint`` is taken
    to be that object's state itself (how single-object checkpoints are saved).
    """
    check_stateful(to_load, "load_state_dict")
    if len(to_load) == 1:
        ((key, obj),) = to_load.items()
        if key not in checkpoint:
            checkpoint = {key: checkpoint}
    missing = [key for key in to_load if key not in checkpoint]
    if missing:
        raise KeyError(f"checkpoint has no state for {missing}; it holds {sorted(checkpoint)}")
    for key, obj in to_load.items():
        if isinstance(obj, torch.nn.Module):
            obj.load_state_dict(checkpoint[key], **kwargs)
        else:
            obj.load_state_dict(checkpoint[key])
