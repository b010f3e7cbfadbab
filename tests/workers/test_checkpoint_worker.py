"""The checkpoint worker on the real runtime: verify, score, file, retain, prune, report."""

from __future__ import annotations

import argparse
import asyncio
import errno
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fake_trainer import FakeTrainer, read_all
from handlers.toy import make_toy  # the handler tests' tiny model on a real Engine

from bus import Bus, Envelope, Topics
from bus.messages import EVENTS, check_data
from trainer.checkpoint_names import checkpoint_filename, incoming_path
from trainer.checkpoint_store import collect_state, save_atomic
from trainer.events import Events
from trainer.handlers import Checkpoint, DiskSaver
from trainer.manifest import manifest_lock, write_manifest_entries
from trainer.metrics import Average
from trainer.metrics.registry import metric_state_message
from trainer.retention import CheckpointRecord, RetentionPolicy, best, latest
from workers.checkpoint import CheckpointWorker
from workers.checkpoint_files import Ready, file_checkpoint, is_handled
from workers.metrics import MetricsWorker

REPO = Path(__file__).resolve().parents[2]
BATCHES = 4  # iterations per epoch of the toy run: epoch ends at 4, 8, 12, ...


def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:8]}"


def checkpoint_files(directory: Path) -> list[str]:
    """The checkpoint files filed in `directory` (not the manifest, the lock or .incoming)."""
    return sorted(p.name for p in directory.glob("*.pt"))


def manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "manifest.json").read_text())


async def events(bus: Bus, run: str, type: str) -> list[Envelope]:
    return [e for e in await read_all(bus, Topics().events(run)) if e.type == type]


async def dead_letters(bus: Bus) -> list[str]:
    return [d.data["reason"] for d in await read_all(bus, Topics().dead_letter())]


def incoming(directory: Path, iteration: int, epoch: int, content: bytes, **data: Any) -> dict:
    """Write a checkpoint file as the trainer does and return its CHECKPOINT_READY data."""
    path = incoming_path(directory, "checkpoint", iteration)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    ready = {
        "path": str(path),
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "epoch": epoch,
        "iteration": iteration,
        "dir": str(directory),
        "name": "checkpoint",
        "epoch_end": True,
        "reason": "scheduled",
    }
    ready.update(data)
    return ready


async def announce(trainer: FakeTrainer, ready: dict[str, Any]) -> Envelope:
    epoch, iteration = ready.get("epoch", 0), ready.get("iteration", 0)
    env = trainer.envelope("CHECKPOINT_READY", ready, epoch=epoch, iteration=iteration)
    return await trainer.send(env)


# --- the reference: the in-process Checkpoint handler on a real Engine -------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    n_saved: int | None
    n_best: int | None
    score: str | None
    mode: str
    values: tuple[float, ...]  # the score metric's value per epoch

    def config(self) -> dict[str, Any]:
        keys = ("n_saved", "n_best", "score", "mode")
        return {"checkpoint": {key: getattr(self, key) for key in keys}}


SCENARIOS = [
    Scenario("last2-best1-max", 2, 1, "acc", "max", (0.5, 0.9, 0.7, 0.8, 0.6)),
    Scenario("last1-best2-min", 1, 2, "loss", "min", (0.9, 0.4, 0.6, 0.3, 0.5)),
    Scenario("last1-best2-ties", 1, 2, "acc", "max", (0.7, 0.7, 0.6, 0.7, 0.2)),
    Scenario("last1-all-best", 1, None, "acc", "max", (0.1, 0.3, 0.2, 0.5, 0.4)),
    Scenario("last3-best1-unscored-kept", 3, 1, "acc", "max", (0.5, 0.9, 0.7, 0.8, 0.6)),
    Scenario("last3-no-score", 3, 1, None, "max", (0.5, 0.9, 0.7, 0.8, 0.6)),
]


@dataclass
class Reference:
    kept: list[str]
    latest: str
    best: str | None
    readies: list[dict[str, Any]]  # what a bridge would announce for the same checkpoints


def in_process(scenario: Scenario, reference_dir: Path, bus_dir: Path) -> Reference:
    """Train the toy with the in-process handler configured as the job configures it.

    Checkpoints at every epoch end (scored) and every 7 iterations (unscored: no validation
    right before); beside each, the snapshot a bridge would write to `bus_dir/.incoming`.
    """
    toy = make_toy(n_batches=BATCHES)
    to_save = {"model": toy.model, "optimizer": toy.optimizer}
    sign = 1.0 if scenario.mode == "max" else -1.0

    def epoch_end(engine: Any) -> bool:
        return engine.state.iteration % BATCHES == 0

    def score(engine: Any) -> float:
        if not epoch_end(engine):
            return math.nan  # as the job scores a checkpoint not right after a validation
        return sign * scenario.values[engine.state.epoch]

    handler = Checkpoint(
        to_save,
        DiskSaver(reference_dir),
        score_function=score if scenario.score else None,
        score_name=scenario.score,
        global_step_transform=lambda engine: engine.state.iteration,
        retention=RetentionPolicy(
            keep_last=scenario.n_saved, keep_best=scenario.n_best if scenario.score else 0
        ),
    )
    readies: list[dict[str, Any]] = []

    def snapshot(engine: Any) -> None:
        path = incoming_path(bus_dir, "checkpoint", engine.state.iteration)
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = save_atomic(collect_state(to_save), path)
        readies.append(
            {
                "path": str(path),
                "size": saved.size,
                "sha256": saved.sha256,
                "epoch": engine.state.epoch,
                "iteration": engine.state.iteration,
                "dir": str(bus_dir),
                "name": "checkpoint",
                "epoch_end": epoch_end(engine),
                "reason": "scheduled",
            }
        )

    for event in (Events.EPOCH_COMPLETED, Events.ITERATION_COMPLETED(every=7)):
        toy.trainer.add_event_handler(event, handler)
        toy.trainer.add_event_handler(event, snapshot)
    toy.trainer.run(toy.data, max_epochs=len(scenario.values))
    top = best(handler.saved)
    return Reference(
        kept=sorted(r.name for r in handler.saved),
        latest=latest(handler.saved).name,
        best=top.name if top is not None else None,
        readies=readies,
    )


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_the_worker_keeps_what_the_in_process_handler_keeps(
    bus, start_worker, tmp_path: Path, scenario: Scenario
) -> None:
    reference = in_process(scenario, tmp_path / "in-process", tmp_path / "bus")
    run = run_id()
    trainer = FakeTrainer(bus, run, config=scenario.config())
    await trainer.start()
    # The score comes the whole way: val metric states -> metrics worker -> METRICS -> score.
    metrics = await start_worker(MetricsWorker, run_id=run)
    checkpoints = await start_worker(CheckpointWorker, run_id=run)
    for ready in reference.readies:
        if ready["epoch_end"]:
            value = Average()
            value.update(scenario.values[ready["epoch"]])
            data = {
                "split": "val",
                "metrics": {},
                "metric_states": {scenario.score or "acc": metric_state_message(value)},
                "rank": 0,
                "world_size": 1,
            }
            await trainer.send(
                trainer.envelope(
                    "EPOCH_COMPLETED", data, epoch=ready["epoch"], iteration=ready["iteration"]
                )
            )
        await announce(trainer, ready)
    await trainer.finish()
    assert await checkpoints.ended() == 0
    assert await metrics.ended() == 0

    filed = tmp_path / "bus"
    assert checkpoint_files(filed) == reference.kept
    assert checkpoint_files(tmp_path / "in-process") == reference.kept
    listed = manifest(filed)
    assert (listed["latest"], listed["best"]) == (reference.latest, reference.best)
    assert sorted(e["file"] for e in listed["checkpoints"]) == reference.kept
    assert listed["handled"] == [e.id for e in await events(bus, run, "CHECKPOINT_READY")]
    assert list((filed / ".incoming").iterdir()) == []

    saved = await events(bus, run, "CHECKPOINT_SAVED")
    pruned = await events(bus, run, "CHECKPOINT_PRUNED")
    assert len(saved) == len(reference.readies)
    assert len(pruned) == len(reference.readies) - len(reference.kept)
    assert not any(Path(e.data["path"]).exists() for e in pruned)
    for report in saved + pruned:  # the keys bus.messages requires, of the types it requires
        check_data(report.type, report.data, topic=EVENTS)
    assert "latest" in saved[-1].data["aliases"]
    by_file = {Path(e.data["path"]).name: e for e in saved}
    for entry in listed["checkpoints"]:
        report = by_file[entry["file"]]
        assert report.data["sha256"] == entry["sha256"] == report.data["sha256"]
        assert (report.epoch, report.iteration) == (entry["epoch"], entry["step"])
        assert report.data["score"] == entry["score"]


# --- replicas, redelivery, bad files --------------------------------------------------------


async def test_two_replicas_file_every_checkpoint_once(bus, start_worker, tmp_path: Path) -> None:
    run = run_id()
    config = {"checkpoint": {"n_saved": 2, "n_best": 2, "score": "acc", "mode": "max"}}
    trainer = FakeTrainer(bus, run, config=config)
    await trainer.start()
    replicas = [await start_worker(CheckpointWorker, run_id=run) for _ in range(2)]
    values = [0.3, 0.8, 0.5, 0.9, 0.1, 0.6, 0.85, 0.2]
    policy, kept = RetentionPolicy(keep_last=2, keep_best=2), []
    for epoch, value in enumerate(values):
        # METRICS reach one replica through the group; the other reads them from its tail.
        await trainer.metrics(epoch, "val", {"acc": value})
        ready = incoming(tmp_path, 10 * (epoch + 1), epoch, f"weights {epoch}".encode())
        env = await announce(trainer, ready)
        await trainer.send(env)  # delivered twice, as after a reclaim: filed once all the same
        name = checkpoint_filename("checkpoint", ready["iteration"], value, score_name="acc")
        kept = policy.admit(kept, CheckpointRecord(name, ready["iteration"], value)).keep
    await trainer.finish()
    assert [await replica.ended() for replica in replicas] == [0, 0]

    readies = await events(bus, run, "CHECKPOINT_READY")
    saved = await events(bus, run, "CHECKPOINT_SAVED")
    assert sorted(e.data["ready_id"] for e in saved) == sorted({e.id for e in readies})
    assert {e.source for e in saved} <= {r.name for r in replicas}
    assert checkpoint_files(tmp_path) == sorted(r.name for r in kept)
    listed = manifest(tmp_path)
    assert listed["best"] == "checkpoint_40_acc=0.9000.pt"
    assert listed["latest"] == "checkpoint_80_acc=0.2000.pt"
    assert sorted(listed["handled"]) == sorted({e.id for e in readies})
    assert await dead_letters(bus) == []


def saved_report(trainer: FakeTrainer, directory: Path, saved: dict, ready: Envelope) -> Envelope:
    """The CHECKPOINT_SAVED a replica sends for `ready`, filed as `saved` (a manifest entry)."""
    data = {
        "path": str(directory / saved["file"]),
        "sha256": saved["sha256"],
        "size": ready.data["size"],
        "epoch": ready.epoch,
        "iteration": ready.iteration,
        "aliases": ["latest"],
        "score": None,
        "ready_id": ready.id,
    }
    return trainer.envelope("CHECKPOINT_SAVED", data, iteration=ready.iteration)


async def test_a_ready_whose_filer_died_before_reporting_is_reported_once(
    bus, start_worker, tmp_path: Path
) -> None:
    # A replica filed three READYs (the manifest says so) and died: its SAVED of the first
    # was written, those of the other two were not. Their READYs come again, as reclaimed.
    run = run_id()
    trainer = FakeTrainer(bus, run, config={"checkpoint": {"n_saved": 1, "score": None}})
    await trainer.start()
    policy = RetentionPolicy(keep_last=1, keep_best=0)
    readies, filings = [], []
    for step in (10, 20, 30):
        data = incoming(tmp_path, step, 0, f"weights {step}".encode(), epoch_end=False)
        env = trainer.envelope("CHECKPOINT_READY", data, iteration=step)
        ready = Ready(
            env.id, Path(data["path"]), data["size"], data["sha256"], 0, step, "checkpoint"
        )
        filings.append(file_checkpoint(tmp_path, ready, None, policy, None))
        readies.append(env)
    await trainer.send(saved_report(trainer, tmp_path, filings[0].saved, readies[0]))
    worker = await start_worker(CheckpointWorker, run_id=run)
    for env in readies:
        await trainer.send(env)
    await trainer.finish()
    assert await worker.ended() == 0

    saved = await events(bus, run, "CHECKPOINT_SAVED")
    assert [e.data["ready_id"] for e in saved] == [e.id for e in readies]
    assert [e.data["path"] for e in saved] == [
        str(tmp_path / f"checkpoint_{step}.pt") for step in (10, 20, 30)
    ]
    assert [e.data["aliases"] for e in saved[1:]] == [["latest"], ["latest"]]
    assert {e.source for e in saved[1:]} == {worker.name}
    for e in saved:
        check_data("CHECKPOINT_SAVED", e.data, topic=EVENTS)
    pruned = await events(bus, run, "CHECKPOINT_PRUNED")
    assert [(e.data["path"], e.data["pruned_by"]) for e in pruned] == [
        (str(tmp_path / "checkpoint_10.pt"), readies[1].id),
        (str(tmp_path / "checkpoint_20.pt"), readies[2].id),
    ]
    assert checkpoint_files(tmp_path) == ["checkpoint_30.pt"]
    assert await dead_letters(bus) == []


async def test_a_ready_filed_a_moment_ago_is_reported_by_its_filer_alone(
    bus, start_worker, tmp_path: Path
) -> None:
    # A replica has filed a READY and is writing its CHECKPOINT_SAVED when the READY comes to
    # this worker too (sent twice): it waits for that report rather than sending its own.
    run = run_id()
    trainer = FakeTrainer(bus, run, config={"checkpoint": {"n_saved": 1, "score": None}})
    await trainer.start()
    data = incoming(tmp_path, 10, 0, b"weights 10", epoch_end=False)
    env = trainer.envelope("CHECKPOINT_READY", data, iteration=10)
    ready = Ready(env.id, Path(data["path"]), data["size"], data["sha256"], 0, 10, "checkpoint")
    policy = RetentionPolicy(keep_last=1, keep_best=0)
    filing = file_checkpoint(tmp_path, ready, None, policy, None)
    worker = await start_worker(CheckpointWorker, run_id=run)
    await trainer.send(env)
    await asyncio.sleep(0.3)  # the filer's report lands while this worker looks for it
    await trainer.send(saved_report(trainer, tmp_path, filing.saved, env))
    await trainer.finish()
    assert await worker.ended() == 0

    saved = await events(bus, run, "CHECKPOINT_SAVED")
    assert [(e.data["ready_id"], e.source) for e in saved] == [(env.id, trainer.source)]


async def test_a_ready_whose_filer_died_after_moving_the_file_is_filed_in_place(
    bus, start_worker, tmp_path: Path
) -> None:
    # A replica moved the file to its final name and died before listing it in the manifest.
    run = run_id()
    trainer = FakeTrainer(bus, run, config={"checkpoint": {"n_saved": 2, "score": None}})
    await trainer.start()
    data = incoming(tmp_path, 10, 0, b"weights 10", epoch_end=False)
    os.replace(data["path"], tmp_path / "checkpoint_10.pt")
    worker = await start_worker(CheckpointWorker, run_id=run)
    await announce(trainer, data)
    await announce(trainer, incoming(tmp_path, 20, 0, b"weights 20", epoch_end=False))
    await trainer.finish()
    assert await worker.ended() == 0

    saved = await events(bus, run, "CHECKPOINT_SAVED")
    assert [e.data["path"] for e in saved] == [
        str(tmp_path / "checkpoint_10.pt"),
        str(tmp_path / "checkpoint_20.pt"),
    ]
    assert checkpoint_files(tmp_path) == ["checkpoint_10.pt", "checkpoint_20.pt"]
    assert [e["file"] for e in manifest(tmp_path)["checkpoints"]] == checkpoint_files(tmp_path)
    assert (tmp_path / "checkpoint_10.pt").read_bytes() == b"weights 10"
    assert await dead_letters(bus) == []


async def test_a_bad_file_is_dead_lettered_and_the_worker_goes_on(
    bus, start_worker, tmp_path: Path
) -> None:
    run = run_id()
    trainer = FakeTrainer(bus, run, config={"checkpoint": {"n_saved": 5, "score": None}})
    await trainer.start()
    worker = await start_worker(CheckpointWorker, run_id=run)
    corrupt = incoming(tmp_path, 10, 0, b"abc", sha256="0" * 64)
    await announce(trainer, corrupt)
    short = incoming(tmp_path, 20, 1, b"abcdef", size=99)
    await announce(trainer, short)
    missing = incoming(tmp_path, 30, 2, b"x")
    Path(missing["path"]).unlink()
    await announce(trainer, missing)
    await announce(trainer, {"path": "/x.pt", "epoch": 3})
    good = incoming(tmp_path, 50, 4, b"good weights")
    await announce(trainer, good)
    await trainer.finish()
    assert await worker.ended() == 0

    reasons = await dead_letters(bus)
    assert len(reasons) == 4
    actual = hashlib.sha256(b"abc").hexdigest()
    assert corrupt["path"] in reasons[0] and f"sha256 {actual}" in reasons[0]
    assert "0" * 64 in reasons[0]
    assert short["path"] in reasons[1] and "6 bytes" in reasons[1] and "99" in reasons[1]
    assert missing["path"] in reasons[2] and "does not exist" in reasons[2]
    assert "/x.pt" in reasons[3] and "missing keys ['size', 'sha256', 'iteration']" in reasons[3]
    (saved,) = await events(bus, run, "CHECKPOINT_SAVED")
    assert saved.data["path"] == str(tmp_path / "checkpoint_50.pt")
    assert saved.data["aliases"] == ["latest"]
    assert checkpoint_files(tmp_path) == ["checkpoint_50.pt"]
    assert Path(corrupt["path"]).exists()  # left where it was, for a person to look at


async def test_without_metrics_in_time_a_checkpoint_is_filed_unscored(
    bus, start_worker, tmp_path: Path
) -> None:
    run = run_id()
    trainer = FakeTrainer(bus, run)  # no checkpoint section: the options say it all
    await trainer.start()
    options = {"score": "acc", "score_timeout": 0.2, "n_saved": 1, "n_best": 1}
    worker = await start_worker(CheckpointWorker, options, run_id=run)
    await announce(trainer, incoming(tmp_path, 10, 0, b"one"))
    await trainer.metrics(1, "val", {"acc": 0.25})
    await trainer.metrics(1, "train", {"acc": 0.99})  # another split never scores
    await announce(trainer, incoming(tmp_path, 20, 1, b"two"))
    await trainer.finish()
    assert await worker.ended() == 0
    saved = [e.data for e in await events(bus, run, "CHECKPOINT_SAVED")]
    assert [(Path(s["path"]).name, s["score"], s["aliases"]) for s in saved] == [
        ("checkpoint_10.pt", None, ["latest"]),
        ("checkpoint_20_acc=0.2500.pt", 0.25, ["latest", "best"]),
    ]
    assert checkpoint_files(tmp_path) == ["checkpoint_20_acc=0.2500.pt"]


async def test_one_rank_checkpoints_are_scored_from_epoch_completed_and_bad_entries_logged_once(
    bus, start_worker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No metrics worker: in a one-rank run the epoch's own EPOCH_COMPLETED metrics score it, at
    # once (a score timeout of an hour would otherwise hang this test).
    caplog.set_level(logging.INFO)
    run = run_id()
    trainer = FakeTrainer(bus, run, config={"train": {"epochs": 2}})
    await trainer.start()
    options = {"score": "acc", "score_timeout": 3600.0, "n_saved": 1, "n_best": 1}
    worker = await start_worker(CheckpointWorker, options, run_id=run)
    (garbage,) = await bus.append(Topics().events(run), [b"\xc1 not an envelope"])
    await trainer.epoch_completed(0, 10, split="val", metrics={"acc": 0.25, "loss": 1.0})
    await announce(trainer, incoming(tmp_path, 10, 0, b"one"))
    await trainer.epoch_completed(1, 20, split="val", metrics={"acc": 0.5})
    await announce(trainer, incoming(tmp_path, 20, 1, b"two"))
    await trainer.finish()
    assert await worker.ended() == 0
    logged = list(caplog.records)  # the worker's (the test's own reads below log too)

    saved = [e.data for e in await events(bus, run, "CHECKPOINT_SAVED")]
    assert [(Path(s["path"]).name, s["score"]) for s in saved] == [
        ("checkpoint_10_acc=0.2500.pt", 0.25),
        ("checkpoint_20_acc=0.5000.pt", 0.5),
    ]
    # The undecodable entry is dead-lettered once, and said once: by the consumer that did it
    # (the worker's own tail of the run's events reads it too, and keeps quiet about it).
    (reason,) = await dead_letters(bus)
    assert reason.startswith("undecodable")
    about = [r.getMessage() for r in logged if garbage in r.getMessage()]
    assert len(about) == 1, about
    assert "dead-lettering" in about[0]
    assert not [r for r in logged if r.getMessage() == "waiting"]


async def test_dir_names_the_shared_directory_as_this_worker_sees_it(
    bus, start_worker, tmp_path: Path
) -> None:
    run = run_id()
    trainer = FakeTrainer(bus, run, config={"checkpoint": {"score": None}})
    await trainer.start()
    worker = await start_worker(CheckpointWorker, {"dir": str(tmp_path)}, run_id=run)
    ready = incoming(tmp_path, 10, 0, b"weights")
    # The trainer's container mounts the same volume at another path.
    ready["dir"] = "/mnt/trainer/checkpoints"
    ready["path"] = "/mnt/trainer/checkpoints/.incoming/checkpoint_10.pt"
    await announce(trainer, ready)
    await trainer.finish()
    assert await worker.ended() == 0
    assert checkpoint_files(tmp_path) == ["checkpoint_10.pt"]
    assert manifest(tmp_path)["latest"] == "checkpoint_10.pt"


# --- filing, without a bus ------------------------------------------------------------------


def ready_at(directory: Path, iteration: int, content: bytes = b"w") -> Ready:
    data = incoming(directory, iteration, 0, content)
    return Ready(
        id=f"R{iteration}",
        path=Path(data["path"]),
        size=data["size"],
        sha256=data["sha256"],
        epoch=0,
        iteration=iteration,
        name="checkpoint",
    )


def test_filing_a_ready_twice_files_it_once(tmp_path: Path) -> None:
    policy = RetentionPolicy(keep_last=2, keep_best=0)
    ready = ready_at(tmp_path, 10)
    filed = file_checkpoint(tmp_path, ready, None, policy, None)
    assert filed is not None and filed.saved_aliases == ["latest"]
    assert file_checkpoint(tmp_path, ready, None, policy, None) is None
    assert is_handled(tmp_path, "R10") and is_handled(tmp_path, "R10", locked=True)
    assert checkpoint_files(tmp_path) == ["checkpoint_10.pt"]


def test_a_checkpoint_that_does_not_make_the_cut_is_filed_then_pruned(tmp_path: Path) -> None:
    policy = RetentionPolicy(keep_last=0, keep_best=1)
    file_checkpoint(tmp_path, ready_at(tmp_path, 10), 0.9, policy, "acc")
    worse = file_checkpoint(tmp_path, ready_at(tmp_path, 20), 0.5, policy, "acc")
    assert worse is not None and worse.saved_aliases == []
    assert [e["file"] for e in worse.pruned] == ["checkpoint_20_acc=0.5000.pt"]
    assert (worse.latest, worse.best) == ("checkpoint_10_acc=0.9000.pt",) * 2
    assert checkpoint_files(tmp_path) == ["checkpoint_10_acc=0.9000.pt"]


def test_the_locked_check_waits_for_a_filing_in_progress(tmp_path: Path) -> None:
    # Another replica holds the lock, has moved the file and not yet written the manifest.
    holding, answers = threading.Event(), []

    def other_replica() -> None:
        with manifest_lock(tmp_path):
            holding.set()
            time.sleep(0.2)  # long enough for an unlocked read to see no manifest yet
            write_manifest_entries(tmp_path, [], best=None, extra={"handled": ["R1"]})

    filer = threading.Thread(target=other_replica)
    filer.start()
    holding.wait()
    answers.append(is_handled(tmp_path, "R1", locked=True))
    filer.join()
    assert answers == [True]


def test_filing_crosses_file_systems_by_copying(tmp_path: Path, monkeypatch) -> None:
    ready = ready_at(tmp_path / "trainer-side", 10, b"weights")
    real_replace = os.replace

    def no_cross_device_rename(src: Any, dst: Any) -> None:
        if Path(src) == ready.path:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", no_cross_device_rename)
    policy = RetentionPolicy(keep_last=1, keep_best=0)
    file_checkpoint(tmp_path / "worker-side", ready, None, policy, None)
    assert (tmp_path / "worker-side" / "checkpoint_10.pt").read_bytes() == b"weights"
    assert not ready.path.exists()


# --- options and imports --------------------------------------------------------------------


def test_counts_take_integers_or_all() -> None:
    parser = argparse.ArgumentParser()
    CheckpointWorker.add_arguments(parser)
    options = vars(parser.parse_args(["--n-saved", "all", "--n-best", "3", "--mode", "min"]))
    assert (options["n_saved"], options["n_best"], options["mode"]) == ("all", 3, "min")
    assert options["score"] is options["dir"] is options["score_timeout"] is None
    CheckpointWorker.check_options(options)
    with pytest.raises(SystemExit):
        parser.parse_args(["--n-saved", "-1"])


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"n_saved": 0, "n_best": 0}, "keep no checkpoint"),
        ({"n_best": -2}, "--n-best"),
        ({"mode": "up"}, "--mode"),
        ({"score_timeout": -1}, "--score-timeout"),
    ],
)
def test_options_that_can_never_work_are_refused(options: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        CheckpointWorker.check_options(options)


def test_the_checkpoint_worker_does_not_import_torch() -> None:
    code = "import sys, workers.checkpoint; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
