"""Appending bytes to a file so that a failed append leaves the file as it was (no torn tail)."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def append_bytes(path: Path, data: bytes, *, whole_lines: bool = False) -> int:
    """Append `data` to `path` (created if missing); the file's size after it. On failure, cut
    the file back and raise.

    With `whole_lines`, a last line left without its newline (by a writer that died) is ended
    first, so that `data` starts a line of its own. The caller keeps other appenders out.
    """
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if whole_lines and size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        try:
            _write_all(fd, data)
        except OSError as exc:
            os.ftruncate(fd, size)  # never leave a torn line or record behind
            if exc.filename is None:
                exc.filename = str(path)
            raise
        return size + len(data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        # A write cut short (a file size limit, a nearly full disk) is retried for the rest,
        # which then fails with the real reason.
        written = os.write(fd, view)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]
