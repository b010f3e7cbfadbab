"""Artifacts: named, typed, versioned sets of files, copied into the run or referenced in place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from trainer.manifest import file_sha256
from trainer.tracking.layout import check_name
from trainer.tracking.values import jsonable


def check_file_name(name: str, artifact: str) -> str:
    """`name` if it is a relative path that stays inside the artifact; ValueError otherwise."""
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(
            f"artifact {artifact!r}: file name {name!r} must be a relative path without '..'"
        )
    return str(PurePosixPath(*parts))


class Artifact:
    """A set of files logged together as one version of `name` (`run.log_artifact(artifact)`).

    `add_file` copies a file when the artifact is logged (a copy, never a link: the version
    keeps the bytes the file had then); `add_reference` only records where a file is (e.g. a
    big checkpoint kept elsewhere).
    """

    def __init__(
        self,
        name: str,
        type: str,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = check_name(name, "artifact name")
        self.type = str(type)
        self.description = description
        self.metadata: dict[str, Any] = jsonable(dict(metadata or {}))
        self._copies: dict[str, Path] = {}
        self._references: dict[str, dict[str, Any]] = {}

    def add_file(self, path: str | os.PathLike[str], name: str | None = None) -> None:
        """Add a file (or every file under a directory) to copy into the run when logged."""
        source = Path(path)
        if source.is_dir():
            prefix = name or source.name
            for file in sorted(p for p in source.rglob("*") if p.is_file()):
                self._add_copy(f"{prefix}/{file.relative_to(source).as_posix()}", file)
            return
        if not source.is_file():
            raise FileNotFoundError(f"artifact {self.name!r}: no file {source} to add")
        self._add_copy(name or source.name, source)

    def add_reference(
        self,
        path: str | os.PathLike[str],
        *,
        sha256: str | None = None,
        size: int | None = None,
        name: str | None = None,
    ) -> None:
        """Record a file by its path or URI, without copying it; sha256 and size if known."""
        where = os.fspath(path)
        if "://" not in where:
            local = Path(where).absolute()
            where = str(local)
            if size is None and local.is_file():
                size = local.stat().st_size
        entry_name = check_file_name(name or PurePosixPath(where).name, self.name)
        self._check_new(entry_name)
        self._references[entry_name] = {
            "name": entry_name,
            "size": size,
            "sha256": sha256,
            "path": where,
        }

    def file_entries(self) -> list[dict[str, Any]]:
        """The files of the artifact as record entries (copies hashed now, from their source)."""
        entries: list[dict[str, Any]] = []
        for entry_name, source in self._copies.items():
            try:
                size, digest = source.stat().st_size, file_sha256(source)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"artifact {self.name!r}: file {source} was removed before it was logged"
                ) from None
            entries.append(
                {"name": entry_name, "size": size, "sha256": digest, "source": str(source)}
            )
        entries.extend(dict(e) for e in self._references.values())
        return entries

    def _add_copy(self, name: str, source: Path) -> None:
        entry_name = check_file_name(name, self.name)
        self._check_new(entry_name)
        self._copies[entry_name] = source.absolute()

    def _check_new(self, name: str) -> None:
        if name in self._copies or name in self._references:
            raise ValueError(f"artifact {self.name!r} already has a file named {name!r}")

    def __repr__(self) -> str:
        files = len(self._copies) + len(self._references)
        return f"Artifact({self.name!r}, type={self.type!r}, files={files})"
