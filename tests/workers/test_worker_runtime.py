"""The worker runtime as a worker's user sees it: joining, handling, leaving, over both buses."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from typing import Any, ClassVar

import pytest
from fake_trainer import FakeTrainer, control, eventually, read_all

from bus import Bus, Envelope, Rejected, Topics, encode, verify
from workers.base import Worker
from workers.registry import RegisteredRun
from workers.runtime import RuntimeOptions, run_worker

CONFIG = {"train": {"epochs": 3}, "early_stopping": {"patience": 2}}


class Recorder(Worker):
    """Records, per worker name, each envelope handled and the config the context held then."""

    kind: ClassVar[str] = "recorder"
    seen: ClassVar[dict[str, list[tuple[Envelope, dict[str, Any]]]]] = defaultdict(list)

    async def handle(self, env: Envelope) -> None:
        if env.data.get("reject"):
            raise Rejected("asked to by the test")
        self.seen[self.ctx.name].append((env, dict(self.ctx.config)))


class OtherRecorder(Recorder):
    """Another kind, so another consumer group on the same run."""

    kind: ClassVar[str] = "other-recorder"


class EpochRecorder(Recorder):
    """A kind acting on epoch ends only: it says so, and is handed nothing else."""

    kind: ClassVar[str] = "epoch-recorder"
    handles: ClassVar[frozenset[str] | None] = frozenset({"EPOCH_COMPLETED"})


def run_id() -> str:
    return f"run-{uuid.uuid4().hex[:10]}"


def types_seen(name: str) -> list[str]:
    return [env.type for env, _ in Recorder.seen[name]]


async def test_worker_joins_heartbeats_handles_the_run_and_leaves_after_it_finished(
    bus: Bus, start_worker: Any
) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid, config=CONFIG)
    worker = await start_worker(Recorder, run_id=rid)
    await trainer.start()
    await trainer.epoch_completed(0, 10)
    await eventually(lambda: control(bus, rid, "HEARTBEAT"), "a heartbeat")
    await trainer.finish(epochs=1)

    assert await worker.ended() == 0
    ctl = await control(bus, rid)
    assert ctl[0].type == "WORKER_JOINED"
    joined = {"kind": "recorder", "name": worker.name, "votes": False, "heartbeat": 0.05}
    assert ctl[0].data == joined
    assert ctl[-1].type == "WORKER_LEFT"
    assert ctl[-1].data == {"kind": "recorder", "name": worker.name}
    assert {env.type for env in ctl[1:-1]} == {"HEARTBEAT"}
    assert all(env.source == worker.name and env.sig is None for env in ctl)
    # Everything the trainer sent, in order; the config known from the first envelope on.
    assert [env.id for env, _ in Recorder.seen[worker.name]] == [env.id for env in trainer.sent]
    assert all(config == CONFIG for _, config in Recorder.seen[worker.name])


async def test_from_start_back_fills_and_from_now_only_takes_what_comes_next(
    bus: Bus, start_worker: Any
) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid, config=CONFIG)
    await trainer.start()
    await trainer.iteration(0, 1, {"loss": 1.0})
    before = len(trainer.sent)

    from_start = await start_worker(Recorder, run_id=rid, start="start")
    from_now = await start_worker(OtherRecorder, run_id=rid, start="now")
    await trainer.iteration(0, 2, {"loss": 0.5})
    await trainer.epoch_completed(0, 2)
    await trainer.finish(epochs=1)
    assert await from_start.ended() == 0
    assert await from_now.ended() == 0

    assert [env.id for env, _ in Recorder.seen[from_start.name]] == [e.id for e in trainer.sent]
    later = trainer.sent[before:]
    assert [env.id for env, _ in Recorder.seen[from_now.name]] == [e.id for e in later]
    # It never saw RUN_STARTED, yet knew the run's config (from the registry) from the start.
    assert all(config == CONFIG for _, config in Recorder.seen[from_now.name])


async def test_replicas_of_a_kind_share_the_deliveries(bus: Bus, start_worker: Any) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid, config=CONFIG)
    first = await start_worker(Recorder, run_id=rid)
    second = await start_worker(Recorder, run_id=rid)
    await trainer.start()
    for i in range(1, 301):
        await trainer.iteration(0, i, {"loss": 1.0 / i})
    await trainer.finish()
    assert await first.ended() == 0
    assert await second.ended() == 0

    handled = Counter(
        env.id for name in (first.name, second.name) for env, _ in Recorder.seen[name]
    )
    assert set(handled) == {env.id for env in trainer.sent}
    assert set(handled.values()) == {1}, "an envelope was handled by both replicas"
    # Whichever replica got RUN_STARTED, both knew the config before handling anything.
    for name in (first.name, second.name):
        assert all(config == CONFIG for _, config in Recorder.seen[name])


async def test_bad_entries_are_dead_lettered_and_the_worker_goes_on(
    bus: Bus, start_worker: Any
) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid, config=CONFIG)
    worker = await start_worker(Recorder, run_id=rid)
    await trainer.start()
    events = Topics().events(rid)
    await bus.append(events, [b"\xc1 not an envelope"])
    rejected = await trainer.send(trainer.envelope("CUSTOM", {"split": "train", "reject": True}))
    await trainer.epoch_completed(0, 1)
    await trainer.finish()
    assert await worker.ended() == 0

    handled = [env.id for env, _ in Recorder.seen[worker.name]]
    assert handled == [env.id for env in trainer.sent if env.id != rejected.id]
    dead = [e for e in await read_all(bus, Topics().dead_letter()) if e.data["topic"] == events]
    reasons = sorted(env.data["reason"] for env in dead)
    assert len(dead) == 2
    assert reasons[0] == "rejected by the handler: asked to by the test"
    assert reasons[1].startswith("undecodable")
    assert all(env.data["group"] == "recorder" for env in dead)
    assert {env.data["payload"] for env in dead} == {b"\xc1 not an envelope", encode(rejected)}


@pytest.mark.parametrize("from_env", [False, True])
async def test_control_envelopes_are_signed_with_the_shared_secret(
    bus: Bus, start_worker: Any, monkeypatch: pytest.MonkeyPatch, from_env: bool
) -> None:
    rid = run_id()
    secret = f"s3cret-{uuid.uuid4().hex}"
    if from_env:
        monkeypatch.setenv("TRAINER_BUS_SECRET", secret)
        worker = await start_worker(Recorder, run_id=rid)
    else:
        monkeypatch.delenv("TRAINER_BUS_SECRET", raising=False)
        worker = await start_worker(Recorder, run_id=rid, secret=secret)
    trainer = FakeTrainer(bus, rid, config=CONFIG)
    await trainer.start()
    await eventually(lambda: control(bus, rid, "HEARTBEAT"), "a heartbeat")
    await trainer.finish()
    assert await worker.ended() == 0

    ctl = await control(bus, rid)
    assert {env.type for env in ctl} == {"WORKER_JOINED", "HEARTBEAT", "WORKER_LEFT"}
    assert all(verify(env, secret) for env in ctl)
    assert not any(verify(env, secret + "x") for env in ctl)


async def test_stopping_a_worker_ends_it_with_status_0_after_leaving(
    bus: Bus, start_worker: Any
) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid, config=CONFIG)
    await trainer.start()
    worker = await start_worker(Recorder, run_id=rid)
    await eventually(lambda: len(Recorder.seen[worker.name]) == 2, "the history handled")

    assert await worker.stop() == 0
    ctl = await control(bus, rid)
    assert [env.type for env in ctl][-1] == "WORKER_LEFT"
    # What it handled was acked: a replica starting later takes over from there.
    await trainer.finish()
    successor = await start_worker(Recorder, run_id=rid)
    assert await successor.ended() == 0
    assert types_seen(successor.name) == ["COMPLETED", "RUN_FINISHED"]


async def test_a_worker_that_joins_a_finished_run_back_fills_it_and_ends(
    bus: Bus, start_worker: Any
) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid, config=CONFIG)
    await trainer.start()
    await trainer.epoch_completed(0, 5)
    await trainer.finish(epochs=1)

    worker = await start_worker(Recorder, run_id=rid)
    assert await worker.ended() == 0
    assert [env.id for env, _ in Recorder.seen[worker.name]] == [e.id for e in trainer.sent]


async def test_a_run_of_two_ranks_ends_for_the_worker_after_both_finished(
    bus: Bus, start_worker: Any
) -> None:
    rid = run_id()
    ranks = [FakeTrainer(bus, rid, config=CONFIG, rank=r, world_size=2) for r in (0, 1)]
    worker = await start_worker(Recorder, run_id=rid, linger=0.0)
    for rank in ranks:
        await rank.start()
    first_done = await ranks[0].finish()
    await eventually(lambda: first_done.id in handled_ids(worker.name), "rank 0's RUN_FINISHED")
    # A worker that ended now (linger 0) would stop heartbeating and announce leaving.
    beats = len(await control(bus, rid, "HEARTBEAT"))
    await eventually(
        lambda: _more_heartbeats(bus, rid, beats + 3), "heartbeats after rank 0 finished"
    )
    assert await control(bus, rid, "WORKER_LEFT") == []
    late = await ranks[1].epoch_completed(0, 3)
    await ranks[1].finish()
    assert await worker.ended() == 0
    assert late.id in handled_ids(worker.name)


async def _more_heartbeats(bus: Bus, rid: str, count: int) -> bool:
    return len(await control(bus, rid, "HEARTBEAT")) >= count


def handled_ids(name: str) -> set[str]:
    return {env.id for env, _ in Recorder.seen[name]}


def test_a_registered_run_waits_for_every_rank() -> None:
    info = RegisteredRun("r")

    def env(type: str, rank: int) -> Envelope:
        data = {"world_size": 2} if type == "RUN_STARTED" else {}
        return Envelope(type, "r", f"trainer:{rank}", data)

    info.observe(env("RUN_STARTED", 0))
    info.observe(env("RUN_STARTED", 1))
    info.observe(env("RUN_FINISHED", 0))
    assert not info.finished
    info.observe(env("RUN_FINISHED", 0))  # a duplicate counts once
    assert not info.finished
    info.observe(env("RUN_FINISHED", 1))
    assert info.finished
    info.observe(env("RUN_STARTED", 1))  # resumed under the same id: live again
    assert not info.finished


async def test_follow_joins_live_and_new_runs_and_skips_finished_ones(
    bus: Bus, start_worker: Any
) -> None:
    done, live, new = run_id(), run_id(), run_id()
    finished = FakeTrainer(bus, done, config=CONFIG)
    await finished.start()
    await finished.finish()
    running = FakeTrainer(bus, live, config=CONFIG)
    await running.start()
    await running.iteration(0, 1, {"loss": 1.0})

    # From now: the live run's history is skipped, but a run started later is all new.
    worker = await start_worker(Recorder, follow=True, start="now")
    assert await control(bus, done) == []
    assert [env.type for env in await control(bus, live)] == ["WORKER_JOINED"]

    later = FakeTrainer(bus, new, config={"other": True})
    await later.start()
    await later.iteration(0, 1, {"loss": 2.0})
    await running.finish()
    await eventually(lambda: control(bus, live, "WORKER_LEFT"), "leaving the finished run")
    await eventually(lambda: control(bus, new, "WORKER_JOINED"), "joining the new run")

    assert await worker.stop() == 0
    assert [env.type for env in await control(bus, new)][-1] == "WORKER_LEFT"
    seen = {(env.run_id, env.type): config for env, config in Recorder.seen[worker.name]}
    assert (live, "RUN_STARTED") not in seen
    assert seen[(live, "RUN_FINISHED")] == CONFIG
    assert seen[(new, "RUN_STARTED")] == {"other": True}
    assert seen[(new, "ITERATION_COMPLETED")] == {"other": True}
    assert not any(run == done for run, _ in seen)


async def test_a_kind_is_handed_only_the_types_it_handles_and_run_started(
    bus: Bus, start_worker: Any
) -> None:
    rid = run_id()
    trainer = FakeTrainer(bus, rid, config=CONFIG)
    worker = await start_worker(EpochRecorder, run_id=rid, read_linger=0.05)
    await trainer.start()
    for epoch in range(2):
        for i in range(5):
            await trainer.iteration(epoch, epoch * 5 + i + 1, {"loss": 0.5})
        await trainer.epoch_completed(epoch, 5 * (epoch + 1))
    await trainer.finish(epochs=2)

    assert await worker.ended() == 0
    assert types_seen(worker.name) == ["RUN_STARTED", "EPOCH_COMPLETED", "EPOCH_COMPLETED"]
    # What it was not handed was acked all the same: nothing is left for a replica.
    group = "epoch-recorder"
    topic = trainer.topics.events(rid)
    assert await bus.claim_stale(topic, group, "inspector", min_idle=0, count=100) == []


async def test_bad_runtime_options_are_refused_naming_the_option() -> None:
    url = "memory://unused"
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "exactly one of them"),
        ({"run_id": "r", "follow": True}, "exactly one of them"),
        ({"run_id": "r", "start": "beginning"}, "start='beginning'"),
        ({"run_id": "bad id"}, "run id 'bad id'"),
        ({"run_id": "r", "heartbeat": 0}, "heartbeat=0"),
        ({"run_id": "r", "linger": -1}, "linger=-1"),
        ({"run_id": "r", "read_linger": -0.5}, "read_linger=-0.5"),
    ]
    for fields, message in cases:
        with pytest.raises(ValueError, match=message):
            await run_worker(Recorder, RuntimeOptions(bus_url=url, **fields), {})


async def test_a_failing_handler_is_retried_and_then_dead_lettered(
    bus: Bus, start_worker: Any
) -> None:
    rid = run_id()

    class Flaky(Recorder):
        kind: ClassVar[str] = "flaky"
        failures: ClassVar[Counter[str]] = Counter()

        async def handle(self, env: Envelope) -> None:
            if env.type == "BOOM":
                self.failures[env.id] += 1
                raise RuntimeError("boom")
            await super().handle(env)

    trainer = FakeTrainer(bus, rid, config=CONFIG)
    worker = await start_worker(Flaky, run_id=rid, claim_idle=0.0, max_deliveries=3)
    await trainer.start()
    boom = await trainer.send(trainer.envelope("BOOM", {"split": "train"}))
    await eventually(
        lambda: _dead_letters_of(bus, boom), "the failing envelope in the dead letters"
    )
    await trainer.finish()
    assert await worker.ended() == 0
    assert Flaky.failures[boom.id] == 3
    assert "RUN_FINISHED" in types_seen(worker.name)


async def _dead_letters_of(bus: Bus, env: Envelope) -> list[Envelope]:
    dead = await read_all(bus, Topics().dead_letter())
    return [d for d in dead if d.data["payload"] == encode(env)]
