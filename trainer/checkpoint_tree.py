"""Checkpoints that are directories (Hugging Face's `checkpoint-<step>/`): size, digest, links.

A CHECKPOINT_READY's `size` and `sha256` describe what its `path` names. For a file they are
its size and the sha256 of its bytes. For a directory:

- `size` is the sum of the sizes of its regular files (at any depth);
- `sha256` is the sha256 of the lines ``<hex sha256 of the file>  <relative POSIX path>\\n``,
  one per regular file, sorted by relative path (bytewise). That is what `sha256sum` prints for
  the sorted file list, so a client in any language, or a shell, can check it::

      (cd DIR && find . -type f -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum

Torch-free: the checkpoint worker imports it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

from trainer.manifest import file_sha256

# Where a hard link cannot be made, the file is copied instead.
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES)


def tree_files(root: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """The regular files under `root`: (relative POSIX path, path), sorted by the first."""
    base = Path(root)
    found = []
    for folder, dirs, files in os.walk(base):
        dirs.sort()
        for name in files:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                found.append((path.relative_to(base).as_posix(), path))
    # Bytewise, as `LC_ALL=C sort` orders them (UTF-8 keeps code point order).
    found.sort(key=lambda item: item[0].encode("utf-8", "surrogateescape"))
    return found


def checkpoint_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, sha256) of a checkpoint file or directory, as its CHECKPOINT_READY announces them."""
    where = Path(path)
    if not where.is_dir():
        return where.stat().st_size, file_sha256(where)
    size, lines = 0, hashlib.sha256()
    for relative, file in tree_files(where):
        size += file.stat().st_size
        lines.update(f"{file_sha256(file)}  {relative}\n".encode("utf-8", "surrogateescape"))
    return size, lines.hexdigest()


def link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """A hard link of file `source` at `target`; a copy where the file system cannot link."""
    try:
        os.link(source, target)
        return
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
    shutil.copyfile(source, target)


def link_tree(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Make directory `target` hold hard links to `source`'s files (copies where links fail).

    The framework keeps its own directory as it is; the checkpoint worker may move or delete the
    linked one without touching a byte of it.
    """
    target = Path(target)
    target.mkdir(parents=True)
    for relative, file in tree_files(source):
        placed = target / relative
        placed.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(file, placed)


def remove_checkpoint(path: str | os.PathLike[str]) -> None:
    """Delete a checkpoint file or directory; one already gone is fine."""
    where = Path(path)
    if where.is_dir() and not where.is_symlink():
        shutil.rmtree(where, ignore_errors=False)
    else:
        where.unlink(missing_ok=True)
