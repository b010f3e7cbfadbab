"""A full disk or a read-only runs directory: `trainer run` exits non-zero with one clear line,
and every file it wrote before is whole (JSON that parses, checkpoints matching the manifest).

The storage is real: a small tmpfs, and a read-only bind mount. Both need the right to mount
(root, as on the CI machines); elsewhere these tests are skipped.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import EXAMPLE, run_main, trainer_cli


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 300 KiB file system: room for the config and a couple of checkpoints, not more."""
    where = tmp_path / "small"
    where.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=300k", "tmpfs", str(where)):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A directory mounted read-only (chmod means nothing to root)."""
    where = tmp_path / "ro"
    where.mkdir()
    if not _mount("--bind", str(where), str(where)):
        pytest.skip("cannot bind-mount here (needs root)")
    if not _mount("-o", "remount,ro,bind", str(where)):
        subprocess.run(["umount", "-l", str(where)], check=False)
        pytest.skip("cannot remount read-only here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def last_line(err: str) -> str:
    return [line for line in err.splitlines() if line.strip()][-1]


def test_a_full_disk_ends_the_run_with_one_line_and_nothing_torn(small_disk: Path, tmp_path):
    done = trainer_cli("run", EXAMPLE, f"run.dir={small_disk}/runs", "train.epochs=4", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    line = last_line(done.stderr)
    assert line.startswith("trainer: error: cannot write ") and "No space left on device" in line
    (run_dir,) = (small_disk / "runs").iterdir()
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())  # whole, or not there at all
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
    manifest = json.loads((run_dir / "checkpoints" / "manifest.json").read_text())
    assert manifest["checkpoints"]
    for entry in manifest["checkpoints"]:
        data = (run_dir / "checkpoints" / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]


def test_a_read_only_runs_directory_is_one_line_and_no_run(read_only: Path, capsys):
    status, _, err = run_main(capsys, "run", EXAMPLE, f"run.dir={read_only}/runs")
    assert status == 1
    assert err.strip().splitlines() == [
        f"trainer: error: cannot write {read_only}/runs: Read-only file system"
    ]
    assert list(read_only.iterdir()) == []
