"""Files replaced atomically: a reader sees the old file or the new one, never a torn one.

The checkpoint store, the manifest and the checkpoint worker all write this way: a temporary
file in the same directory, flushed and fsynced, made readable to other processes, renamed
over the target, and the directory fsynced so that the rename itself survives a crash.
`copy_file` copies a file the same way (the tracking store's artifacts and its exports).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
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
def atomic_file(
    path: str | os.PathLike[str], mode: str = "wb", *, durable: bool = True, **options: Any
) -> Iterator[IO]:
    """Open a temporary file that replaces `path` when the block ends without an exception.

    On any exception the temporary file is removed and an existing `path` is left untouched.
    `options` go to `open` (e.g. `encoding="utf-8"` for a text mode). `durable=False` skips
    the fsyncs: readers still see the old file or the new one, never a torn one, but a power
    loss may leave either (or an empty file): for files rebuilt from others when unreadable.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **options) as f:
            yield f
            if durable:
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
    if durable:
        fsync_dir(path.parent)


def copy_file(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy the bytes of `source` to `target` (replaced atomically), never sharing its inode.

    The copy keeps the bytes `source` has now, whatever happens to `source` afterwards (a hard
    link would follow a rewrite in place). `os.copy_file_range` lets filesystems that can
    (btrfs, XFS, NFS 4.2) share blocks copy-on-write (a reflink) instead of copying them.
    """
    with open(source, "rb") as src, atomic_file(target, "wb") as out:
        _copy_bytes(src, out)


def _copy_bytes(src: IO[bytes], out: IO[bytes]) -> None:
    copy_range = getattr(os, "copy_file_range", None)
    if copy_range is not None:
        try:
            while copy_range(src.fileno(), out.fileno(), 1 << 30):
                pass
        except OSError as exc:  # not offered here (old kernel, another filesystem): copy below
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
        else:
            # Some filesystems (procfs, some FUSE) answer 0 early: trust only a whole copy.
            if os.lseek(out.fileno(), 0, os.SEEK_CUR) == os.fstat(src.fileno()).st_size:
                return
        src.seek(0)
        out.seek(0)
        out.truncate()
    shutil.copyfileobj(src, out, 1 << 20)
