"""The tracking worker: a run's directory in the tracking store, written from the run's events."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from fake_trainer import FakeTrainer, eventually, read_all

from bus import Envelope, Topics
from trainer.tracking import LocalSink, TrackingError
from trainer.tracking.reader import read_run
from workers.tracking import TrackingWorker

# Validation accuracies and losses of a four-epoch run (made up; the worker only copies them).
VAL = [(0.81, 1.34), (0.90, 0.59), (0.92, 0.37), (0.91, 0.30)]
TRAIN_LOSS = [1.90, 0.88, 0.42, 0.28]
TRAIN = {"loss": 0.5, "accuracy": 0.75}
ITERATIONS_PER_EPOCH = 23
CONFIG = {"run": {"name": "digits", "dir": "unused"}, "tracking": {"project": "mnist-ish"}}


def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


def tracked_files(run_dir: Path) -> dict[str, Any]:
    """What the tracking store wrote, wall-clock-free: every file but the TensorBoard one."""
    record = read_run(run_dir)
    meta = {k: v for k, v in record.meta.items() if k not in ("pid",)}
    return {
        "meta": meta,
        "rows": sorted(json.dumps(r, sort_keys=True) for r in record.rows),
        "summary": record.summary,
        "artifacts": record.artifacts,
    }


async def play_epochs(trainer: FakeTrainer, epochs: range, tmp_path: Path) -> None:
    """Each epoch: train and val EPOCH_COMPLETED, the aggregator's METRICS, a checkpoint."""
    for epoch in epochs:
        iteration = (epoch + 1) * ITERATIONS_PER_EPOCH
        acc, loss = VAL[epoch]
        await trainer.epoch_completed(epoch, iteration, metrics={"loss": TRAIN_LOSS[epoch]})
        await trainer.epoch_completed(
            epoch, iteration, split="val", metrics={"accuracy": acc, "loss": loss}
        )
        # The aggregator reports the same numbers again: one row per split and epoch regardless.
        await trainer.send(
            Envelope(
                "METRICS",
                trainer.run_id,
                "metrics-test",
                {"split": "val", "epoch": epoch, "values": {"accuracy": acc, "loss": loss}},
                epoch,
                iteration,
            )
        )
        content = f"weights of epoch {epoch}".encode()
        path = tmp_path / f"checkpoint_{iteration}.pt"
        path.write_bytes(content)
        aliases = ["latest", "best"] if acc == max(a for a, _ in VAL[: epoch + 1]) else ["latest"]
        data = {
            "path": str(path),
            "sha256": hashlib.sha256(content).hexdigest(),
            "epoch": epoch,
            "iteration": iteration,
            "aliases": aliases,
        }
        await trainer.send(trainer.envelope("CHECKPOINT_SAVED", data, epoch=epoch))
        if epoch == 3:  # retention keeps the last one and the best one (epoch 2)
            for old in (0, 1):
                gone = f"weights of epoch {old}".encode()
                pruned = {"path": "x", "sha256": hashlib.sha256(gone).hexdigest(), "aliases": []}
                await trainer.send(trainer.envelope("CHECKPOINT_PRUNED", pruned, epoch=epoch))


async def test_the_worker_writes_metadata_rows_checkpoints_and_status(
    bus, start_worker, tmp_path: Path
) -> None:
    run = run_id()
    trainer = FakeTrainer(bus, run, config=CONFIG)
    started = await trainer.start()
    worker = await start_worker(TrackingWorker, {"dir": str(tmp_path / "store")}, run_id=run)
    await play_epochs(trainer, range(4), tmp_path)
    finished = await trainer.finish("terminated", epochs=4)
    assert await worker.ended() == 0

    record = read_run(tmp_path / "store" / run)
    meta = record.meta
    assert (meta["id"], meta["project"], meta["name"]) == (run, "mnist-ish", "digits")
    assert meta["config"] == CONFIG
    assert (meta["host"], meta["pid"]) == ("test-host", 4242)
    assert meta["status"] == "terminated" and meta["reason"] == "test"
    assert meta["started_at"] == started.ts and meta["finished_at"] == finished.ts
    assert meta["duration_s"] == finished.ts - started.ts

    rows = sorted(record.rows, key=lambda r: (r["step"], sorted(r)))
    expected = []
    for epoch, ((acc, loss), train_loss) in enumerate(zip(VAL, TRAIN_LOSS, strict=True)):
        step = (epoch + 1) * ITERATIONS_PER_EPOCH
        expected.append({"step": step, "epoch": epoch + 1, "train/loss": train_loss})
        expected.append({"step": step, "epoch": epoch + 1, "val/accuracy": acc, "val/loss": loss})
    assert [{k: v for k, v in r.items() if k not in ("time", "key")} for r in rows] == sorted(
        expected, key=lambda r: (r["step"], sorted(r))
    )
    assert record.summary["best"]["val/accuracy"] == 0.92
    assert record.summary["last"]["val/loss"] == 0.30

    checkpoints = record.artifacts["checkpoints"]
    assert [v["version"] for v in checkpoints["versions"]] == ["v0", "v1", "v2", "v3"]
    assert checkpoints["aliases"] == {"latest": "v3", "best": "v2"}
    best = checkpoints["versions"][2]["files"][0]
    assert best["path"] == str(tmp_path / "checkpoint_69.pt")
    assert best["sha256"] == hashlib.sha256(b"weights of epoch 2").hexdigest()
    # The checkpointer pruned epochs 0 and 1 (keeping the last one and the best one).
    assert [v["version"] for v in checkpoints["versions"] if not v.get("removed")] == ["v2", "v3"]


async def test_a_worker_attached_late_writes_the_same_directory(
    bus, start_worker, tmp_path: Path
) -> None:
    run = run_id()
    trainer = FakeTrainer(bus, run, config=CONFIG)
    await trainer.start()
    early = await start_worker(TrackingWorker, {"dir": str(tmp_path / "early")}, run_id=run)
    await play_epochs(trainer, range(2), tmp_path)
    # A second tracker with its own consumer group back-fills the run's history.
    late = await start_worker(
        TrackingWorker, {"dir": str(tmp_path / "late")}, run_id=run, group="tracking-late"
    )
    await play_epochs(trainer, range(2, 4), tmp_path)
    await trainer.finish(epochs=4)
    assert await early.ended() == 0 and await late.ended() == 0
    assert tracked_files(tmp_path / "late" / run) == tracked_files(tmp_path / "early" / run)


async def test_redelivered_and_repeated_events_never_duplicate_a_row(
    bus, start_worker, tmp_path: Path
) -> None:
    run = run_id()
    trainer = FakeTrainer(bus, run, config=CONFIG)
    await trainer.start()
    store = {"dir": str(tmp_path / "store")}
    # Two trackers in different groups writing ONE directory: each sees every event once, so
    # the directory sees each one twice, as after a redelivery.
    one = await start_worker(TrackingWorker, store, run_id=run)
    two = await start_worker(TrackingWorker, store, run_id=run, group="tracking-two")
    await play_epochs(trainer, range(4), tmp_path)
    again = trainer.sent[-1]
    await trainer.send(again)  # the same CHECKPOINT_SAVED envelope, redelivered
    await trainer.finish(epochs=4)
    assert await one.ended() == 0 and await two.ended() == 0
    record = read_run(tmp_path / "store" / run)
    assert len(record.rows) == 8  # 4 epochs x (train, val)
    assert len({r["key"] for r in record.rows}) == 8
    assert len(record.artifacts["checkpoints"]["versions"]) == 4


async def test_a_bad_record_is_dead_lettered_and_tracking_goes_on(
    bus, start_worker, tmp_path: Path
) -> None:
    run = run_id()
    trainer = FakeTrainer(bus, run, config=CONFIG)
    await trainer.start()
    worker = await start_worker(TrackingWorker, {"dir": str(tmp_path / "store")}, run_id=run)
    bogus = await trainer.send(trainer.envelope("TRACK", {"kind": "bogus"}))
    no_split = await trainer.send(trainer.envelope("METRICS", {"values": {"a": 1.0}}))
    await play_epochs(trainer, range(1), tmp_path)
    await trainer.finish(epochs=1)
    assert await worker.ended() == 0

    dead = await eventually(
        lambda: _dead_ids(bus, {bogus.id, no_split.id}), "both bad envelopes dead-lettered"
    )
    assert dead == {bogus.id, no_split.id}
    record = read_run(tmp_path / "store" / run)
    assert len(record.rows) == 2 and record.meta["status"] == "completed"


async def _dead_ids(bus, wanted: set[str]) -> set[str] | None:
    letters = await read_all(bus, Topics().dead_letter())
    found = {i for i in wanted for d in letters if i in d.data["reason"]}
    return found if found == wanted else None


def count_row_writes(monkeypatch: pytest.MonkeyPatch, fail_first: bool = False) -> list[int]:
    """Count LocalSink.apply_logs calls (rows each); with `fail_first`, the first one fails as
    a full disk would, writing nothing."""
    calls: list[int] = []
    apply_logs = LocalSink.apply_logs

    def counted(self: LocalSink, records: list[dict[str, Any]]) -> list[int | None]:
        calls.append(len(records))
        if fail_first and len(calls) == 1:
            raise TrackingError("tracking: cannot write (test): No space left on device")
        return apply_logs(self, records)

    monkeypatch.setattr(LocalSink, "apply_logs", counted)
    return calls


async def test_the_rows_of_what_one_read_brings_are_written_in_one_go(
    bus, start_worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_row_writes(monkeypatch)
    run = run_id()
    trainer = FakeTrainer(bus, run, config=CONFIG)
    await trainer.start()
    for epoch in range(10):
        for i in range(ITERATIONS_PER_EPOCH):
            await trainer.iteration(epoch, epoch * ITERATIONS_PER_EPOCH + i + 1, {"loss": 1.0})
        # The aggregator's METRICS after a one-rank EPOCH_COMPLETED: the same row, kept once.
        await trainer.epoch_completed(epoch, (epoch + 1) * ITERATIONS_PER_EPOCH, metrics=TRAIN)
        await trainer.metrics(epoch, "train", TRAIN)
    # Everything is on the topic before the worker starts: its first read takes it all.
    worker = await start_worker(TrackingWorker, {"dir": str(tmp_path / "store")}, run_id=run)
    await trainer.finish(epochs=10)
    assert await worker.ended() == 0
    assert calls == [10]
    assert len(read_run(tmp_path / "store" / run).rows) == 10


async def test_rows_that_could_not_be_written_are_acked_only_once_written(
    bus, start_worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_row_writes(monkeypatch, fail_first=True)
    run = run_id()
    trainer = FakeTrainer(bus, run, config=CONFIG)
    await trainer.start()
    for epoch in range(3):
        await trainer.epoch_completed(epoch, (epoch + 1) * ITERATIONS_PER_EPOCH, metrics=TRAIN)
    # The failed batch stays pending and is delivered again (claim_idle): no row is lost or
    # written twice.
    worker = await start_worker(
        TrackingWorker, {"dir": str(tmp_path / "store")}, run_id=run, claim_idle=0.2
    )
    await eventually(lambda: len(calls) >= 2, "the rows written after the failure")
    await trainer.finish(epochs=3)
    assert await worker.ended() == 0
    assert calls[:2] == [3, 3]
    rows = read_run(tmp_path / "store" / run).rows
    assert sorted(r["epoch"] for r in rows) == [1, 2, 3]
    group = "tracking"
    topic = Topics().events(run)
    assert await bus.claim_stale(topic, group, "inspector", min_idle=0, count=100) == []
