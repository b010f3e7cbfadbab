"""Helpers for sinks that send records elsewhere: records must carry their bytes, not paths.

A Run's artifact record names files to copy by their local path (``"source"``); that is enough
for a LocalSink on this machine. A sink that sends the record to another process (the online
sink) inlines them first, so that the tracking worker stores the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def inline_files(record: Mapping[str, Any]) -> dict[str, Any]:
    """`record` with each artifact file's "source" path replaced by its bytes ("data")."""
    out = dict(record)
    if out.get("kind") != "artifact":
        return out
    files = []
    for entry in out.get("files") or ():
        entry = dict(entry)
        source = entry.pop("source", None)
        if source is not None:
            entry["data"] = Path(source).read_bytes()
        files.append(entry)
    out["files"] = files
    return out
