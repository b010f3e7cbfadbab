"""Where things live in a run directory, the runs root, and reading and writing its JSON files.

Every file a reader may open while a run is live is replaced atomically (`write_json`) or
appended one line per write() (`trainer.tracking.jsonl`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from trainer.atomic_file import atomic_file

RUNS_DIR_ENV = "TRAINER_RUNS_DIR"
DEFAULT_ROOT = "runs"

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MEDIA_DIR = "media"
HISTOGRAMS_FILE = f"{MEDIA_DIR}/histograms.jsonl"
IMAGES_DIR = f"{MEDIA_DIR}/images"
IMAGES_FILE = f"{MEDIA_DIR}/images.jsonl"
ARTIFACTS_DIR = "artifacts"
ARTIFACT_INDEX = "index.json"
# The artifact the tracking worker files the trainer's checkpoints in (metadata: the 0-based
# epoch and the iteration of each, as in the CHECKPOINT_SAVED event).
CHECKPOINTS_ARTIFACT = "checkpoints"
LOCK_FILE = ".lock"
EVENTS_PREFIX = "events.out.tfevents."

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def runs_root(directory: str | os.PathLike[str] | None = None) -> Path:
    """The runs root: `directory`, else env TRAINER_RUNS_DIR, else `runs`."""
    if directory is not None:
        return Path(directory)
    return Path(os.environ.get(RUNS_DIR_ENV) or DEFAULT_ROOT)


def file_part(name: str) -> str:
    """`name` made safe as one path component ("val/confusion" -> "val_confusion")."""
    safe = _UNSAFE.sub("_", name).strip("._") or "_"
    return safe[:100]


def check_name(name: str, what: str) -> str:
    """`name` if it can be a directory name as is (letters, digits, . _ -); ValueError if not."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ValueError(
            f"{what} {name!r} must start with a letter or digit and hold only letters, digits, "
            "'.', '_' and '-'"
        )
    return name


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON in `path`, or `default` if the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return default
    return json.loads(text)


def write_json(path: Path, data: Any, *, durable: bool = True) -> None:
    """Replace `path` atomically with `data` as JSON (key order kept: first logged first).

    `durable=False`: without the fsyncs (`atomic_file`), for a file rebuilt when unreadable.
    """
    text = json.dumps(data, indent=1, allow_nan=True) + "\n"  # one write, not one per token
    with atomic_file(path, "w", durable=durable, encoding="utf-8") as f:
        f.write(text)
