"""A disk cache of the bundled data sets' seeded splits, so a run need not import scikit-learn.

Importing `sklearn.datasets` costs about 1.7 s of CPU here (it pulls in SciPy), more than a
digits run's whole training: every `trainer run`, trial and rank process would pay it. The
split arrays of a (data set, val_fraction, seed, scikit-learn version) are kept as one `.npz`
under the cache directory ($TRAINER_CACHE_DIR, else $XDG_CACHE_HOME/eventbus-trainer, else
~/.cache/eventbus-trainer), as scikit-learn keeps what it fetches under ~/scikit_learn_data.
A cache that cannot be read or written is passed over: the split is computed as without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

CACHE_DIR_ENV = "TRAINER_CACHE_DIR"
Arrays = dict[str, np.ndarray]


def cache_dir() -> Path:
    """Where the splits are kept (see the module's docstring)."""
    chosen = os.environ.get(CACHE_DIR_ENV)
    if chosen:
        return Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "eventbus-trainer"


def _sklearn_version() -> str:
    # From the installed metadata: importing sklearn for its __version__ is what is spared.
    try:
        return metadata.version("scikit-learn")
    except metadata.PackageNotFoundError:
        return "absent"  # the builder raises its own error, naming the package


def cached_split(name: str, val_fraction: float, seed: int, build: Callable[[], Arrays]) -> Arrays:
    """The arrays `build()` returns for data set `name` split by (`val_fraction`, `seed`),
    read from the cache when they are there, else built and stored for the next run."""
    key = {"name": name, "val": val_fraction, "seed": seed, "sklearn": _sklearn_version()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"{name}-split-{digest}.npz"
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {k: stored[k] for k in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile):
        pass  # absent, unreadable or torn: build it
    arrays = build()
    _store(path, arrays)
    return arrays


def _store(path: Path, arrays: Arrays) -> None:
    """Write `arrays` to `path` whole or not at all (processes starting together may write the
    same split at once); a directory that cannot be written is left alone."""
    staged: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as out:
            staged = Path(out.name)
            np.savez(out, **arrays)
        os.replace(staged, path)
    except OSError:
        if staged is not None:
            staged.unlink(missing_ok=True)
