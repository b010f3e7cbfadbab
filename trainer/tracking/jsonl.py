"""Append-only JSON-lines files: one write() per line, and readers that only take whole lines.

A writer appends under the run's lock, so lines never interleave. A reader without the lock may
catch a line being written: it only takes lines that end in a newline. A line torn by a crash
or a full disk is cut off again (or, if that fails too, ended with a newline and skipped by
readers), so later lines stay readable.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.tracking.appending import append_bytes


def encode_line(row: Mapping[str, Any]) -> bytes:
    """`row` as one JSON line (NaN and infinities written as Python's json writes them)."""
    return (json.dumps(row, separators=(",", ":"), allow_nan=True) + "\n").encode()


def append_line(path: Path, row: Mapping[str, Any]) -> int:
    """Append `row` as one line with one write(); the file is left as it was if that fails.

    The caller holds the run's lock: nothing else appends meanwhile. Returns the file's size.
    """
    return append_bytes(path, encode_line(row), whole_lines=True)


def append_lines(path: Path, rows: Sequence[Mapping[str, Any]]) -> int:
    """Append `rows`, one line each, with one write(): all of them or, if it fails, none.

    The caller holds the run's lock. Returns the file's size.
    """
    return append_bytes(path, b"".join(map(encode_line, rows)), whole_lines=True)


def parse_lines(data: bytes) -> list[dict[str, Any]]:
    """The rows of whole JSON lines in `data` (lines that do not parse are skipped)."""
    rows = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line torn by a crash; the writer that came next ended it
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_from(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The rows of the whole lines after byte `offset`, and the offset just past them."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a line without its newline is still being written
    return parse_lines(data[:end]), offset + end


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every whole row of a JSON-lines file (none if it does not exist)."""
    return read_from(path)[0]


class JsonlFollower:
    """Follows a JSON-lines file: each `read()` returns the rows appended since the last one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._inode: int | None = None

    def read(self) -> tuple[list[dict[str, Any]], bool]:
        """The new rows, and whether the file was replaced (then the rows are all of it)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            restarted = self.offset != 0
            self.offset, self._inode = 0, None
            return [], restarted
        restarted = self._inode is not None and (
            stat.st_ino != self._inode or stat.st_size < self.offset
        )
        if restarted:
            self.offset = 0
        self._inode = stat.st_ino
        if stat.st_size == self.offset:
            return [], restarted
        rows, self.offset = read_from(self.path, self.offset)
        return rows, restarted

    def appended(self, size: int) -> None:
        """This reader's own writer appended, up to `size` bytes, right after a `read()`
        that was up to date (under the run's lock): nothing in between is left to read."""
        self.offset = size
