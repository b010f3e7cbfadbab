"""Writing many log rows at once, and the summary kept up to date lazily (LocalSink)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.tracking import LocalSink
from trainer.tracking import local as local_store
from trainer.tracking.reader import read_run, read_summary


def rows_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def log(values: dict, key: str | None = None, step: int | None = None) -> dict:
    record: dict = {"kind": "log", "values": values, "time": 1.0}
    if key is not None:
        record["key"] = key
    if step is not None:
        record["step"] = step
    return record


def test_apply_logs_writes_each_new_row_once_in_order(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path / "run")
    assert sink.apply(log({"loss": 3.0}, key="e0")) == 0
    steps = sink.apply_logs(
        [
            log({"loss": 2.0}, key="e1"),
            log({"loss": 9.0}, key="e0"),  # written before: skipped
            log({"loss": 1.0}, key="e2", step=10),
            log({"loss": 8.0}, key="e1"),  # earlier in this batch: skipped
            log({"acc": 0.5}),  # no key, no step: one past the highest
        ]
    )
    assert steps == [1, None, 10, None, 11]
    rows = rows_of(tmp_path / "run")
    assert [(r["step"], r.get("key")) for r in rows] == [
        (0, "e0"),
        (1, "e1"),
        (10, "e2"),
        (11, None),
    ]
    assert read_summary(tmp_path / "run")["last"] == {"loss": 1.0, "acc": 0.5}


def test_apply_logs_refuses_a_bad_record_before_writing_any(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path / "run")
    sink.apply(log({"loss": 3.0}))
    with pytest.raises(ValueError, match="'step'"):
        sink.apply_logs([log({"loss": 2.0}), log({"step": 1.0})])
    with pytest.raises(ValueError, match="log records only"):
        sink.apply_logs([log({"loss": 2.0}), {"kind": "finish"}])
    assert len(rows_of(tmp_path / "run")) == 1


def test_the_summary_is_rewritten_lazily_and_readers_see_every_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever the time between rows: only the first rewrites summary.json before close().
    monkeypatch.setattr(local_store, "SUMMARY_EVERY", 1e9)
    run_dir = tmp_path / "run"
    sink = LocalSink(run_dir)
    for i in range(3):
        sink.apply(log({"loss": 3.0 - i}))
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["steps"] == 1
    # Readers fold the rows after the offset it covers: they see all three, at once.
    summary = read_run(run_dir).summary
    assert summary["steps"] == 3 and summary["best"]["loss"] == 1.0
    sink.close()  # a writer that stops brings it up to date
    assert json.loads((run_dir / "summary.json").read_text()) == {**summary}


def test_a_finished_run_has_its_summary_written_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_store, "SUMMARY_EVERY", 1e9)
    run_dir = tmp_path / "run"
    sink = LocalSink(run_dir)
    sink.apply_logs([log({"loss": 2.0}), log({"loss": 1.0})])
    sink.apply(log({"loss": 0.5}))
    sink.apply({"kind": "finish", "status": "completed", "summary": {"loss": 0.25}})
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["steps"] == 3 and on_disk["last"]["loss"] == 0.25
