"""Several processes writing runs at once: nothing lost, no key twice, no torn file for readers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from trainer import tracking
from trainer.tracking.reader import list_runs, read_run

ROOT = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("writer_process.py")


def start_writer(*args: str | Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(WRITER), *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out


def test_two_processes_creating_runs_in_one_project_lose_nothing(tmp_path: Path) -> None:
    go = tmp_path / "go"
    writers = [start_writer("new", tmp_path / "runs", "digits", 40, go) for _ in range(2)]
    go.touch()
    dirs = {Path(finish(w).strip()) for w in writers}
    assert len(dirs) == 2  # two runs, two directories
    infos = list_runs(tmp_path / "runs", project="digits")
    assert {info.dir for info in infos} == dirs
    for info in infos:
        record = read_run(info.dir)
        assert [r["step"] for r in record.rows] == list(range(40))
        assert record.summary["steps"] == 40 and record.meta["status"] == "completed"
        assert info.epochs == 39 and len(record.histograms) == 1


def test_two_processes_appending_keyed_rows_to_one_run_never_duplicate_a_key(
    tmp_path: Path,
) -> None:
    run = tracking.run("p", id="shared", dir=tmp_path)
    go = tmp_path / "go"
    n = 80
    forward = ",".join(str(i) for i in range(n))
    backward = ",".join(str(i) for i in reversed(range(n)))
    # Both deliver every row (as two replicas handed the same redelivered envelopes would).
    writers = [start_writer("keyed", run.dir, order, go) for order in (forward, backward)]
    go.touch()
    for writer in writers:
        finish(writer)
    run.finish()
    record = read_run(run.dir)
    keys = [row["key"] for row in record.rows]
    assert sorted(keys) == sorted(f"k{i}" for i in range(n))
    assert all(row["step"] == int(row["key"][1:]) for row in record.rows)
    assert record.summary["steps"] == n
    assert record.summary["best"]["value"] == n - 1


def test_a_reader_never_sees_a_torn_run_json_or_summary(tmp_path: Path) -> None:
    run = tracking.run("p", id="live", dir=tmp_path)
    writer = start_writer("loop", run.dir, 80)
    seen = 0
    last_steps = 0
    while writer.poll() is None or seen == 0:
        meta = json.loads((run.dir / "run.json").read_text())  # raises if torn
        assert meta["project"] == "p"
        text = (run.dir / "summary.json").read_text() if (run.dir / "summary.json").exists() else ""
        if text:
            steps = json.loads(text)["steps"]
            assert steps >= last_steps  # never a stale file after a newer one
            last_steps = steps
        record = read_run(run.dir)
        assert record.summary["steps"] == len(record.rows)
        seen += 1
        time.sleep(0.002)  # leave the writer some of the CPU
    finish(writer)
    assert read_run(run.dir).summary["steps"] == 80
    run.finish()
