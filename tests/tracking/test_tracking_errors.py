"""A runs directory that cannot be written: one clear TrackingError, and no torn file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import tracking
from trainer.tracking.reader import read_run

ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("writer_process.py")


@pytest.fixture
def read_only(tmp_path: Path):
    """Make a directory read-only; skip where that does not stop writes (running as root)."""
    changed: list[Path] = []

    def make(path: Path) -> Path:
        path.chmod(0o555)
        changed.append(path)
        if os.access(path, os.W_OK):
            pytest.skip("chmod does not stop this user from writing (root?)")
        return path

    yield make
    for path in changed:
        path.chmod(0o755)


def test_a_read_only_runs_directory_is_one_clear_error(tmp_path: Path, read_only) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    read_only(root)
    with pytest.raises(tracking.TrackingError) as raised:
        tracking.run("p", dir=root)
    message = str(raised.value)
    assert str(root) in message and "Permission denied" in message
    assert raised.value.reason == "Permission denied"


def test_a_run_whose_directory_turns_read_only_fails_without_tearing_files(
    tmp_path: Path, read_only
) -> None:
    run = tracking.run("p", dir=tmp_path)
    run.log({"loss": 1.0})
    read_only(run.dir)
    with pytest.raises(tracking.TrackingError, match="Permission denied") as raised:
        run.log({"loss": 0.5})
    assert str(run.dir) in str(raised.value)
    with pytest.raises(tracking.TrackingError, match="Permission denied"):
        run.update_meta(epochs=1)
    # Whatever got written is whole, and the summary covers exactly the rows there are.
    for name in ("run.json", "summary.json"):
        json.loads((run.dir / name).read_text())
    record = read_run(run.dir)
    assert record.meta["status"] == "running" and "epochs" not in record.meta
    assert record.summary["steps"] == len(record.rows) >= 1
    assert not [p for p in run.dir.iterdir() if p.name.endswith(".tmp")]


def test_a_path_that_is_not_a_directory_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(tracking.TrackingError) as raised:
        tracking.run("p", dir=tmp_path / "file" / "runs")
    assert str(tmp_path / "file") in str(raised.value) and "Not a directory" in str(raised.value)


def test_a_full_disk_stops_tracking_with_one_error_and_whole_files(tmp_path: Path) -> None:
    # A file size limit makes writes fail past a few kilobytes, as a full disk does.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(WRITER), "fsize", str(tmp_path / "runs"), "6000"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    run_dir, message = done.stdout.strip().split("\n", 1)
    assert message.startswith("tracking: cannot write ") and run_dir in message
    assert "File too large" in message

    record = read_run(run_dir)  # every file still parses
    for name in ("run.json", "summary.json"):
        json.loads((Path(run_dir) / name).read_text())
    lines = (Path(run_dir) / "metrics.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])
    assert record.summary["steps"] == len(record.rows) > 0
    assert [r["step"] for r in record.rows] == list(range(len(record.rows)))
