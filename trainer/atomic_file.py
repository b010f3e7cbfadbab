"""Files replaced atomically: a reader sees the old file or the new one, never a torn one.

The checkpoint store, the manifest and the checkpoint worker all write this way: a temporary
file in the same directory, flushed and fsynced, made readable to other processes, renamed
over the target, and the directory fsynced so that the rename itself survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (where the platform can open directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "wb", **options: Any) -> Iterator[IO]:
    """Open a temporary file that replaces `path` when the block ends without an exception.

    On any exception the temporary file is removed and an existing `path` is left untouched.
    `options` go to `open` (e.g. `encoding="utf-8"` for a text mode).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **options) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; processes in other containers sharing the directory read it.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a failed write or flush names no file: name the target
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
