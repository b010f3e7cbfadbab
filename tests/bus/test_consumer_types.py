"""A consumer told the types its handler acts on, and to let entries gather: both buses."""

from __future__ import annotations

from typing import Any

import msgpack

from bus import BEGINNING, Bus, Entry, Envelope, encode
from bus.codec import decode, peek_type
from tests.bus.test_contract import (
    TOPIC,
    consumer,
    dead_letters,
    env,
    eventually,
    nothing_pending,
)


def epoch_env(i: int) -> Envelope:
    """The i-th EPOCH_COMPLETED of run1."""
    return Envelope("EPOCH_COMPLETED", "run1", "trainer:0", {"i": i}, epoch=i)


async def test_entries_of_other_types_are_acked_unhandled(bus: Bus) -> None:
    # An epoch-level worker must not be handed (nor decode) every iteration of a run.
    payloads = []
    for i in range(6):
        payloads += [encode(env(10 * i + k)) for k in range(5)] + [encode(epoch_env(i))]
    await bus.append(TOPIC, payloads)
    got: list[Envelope] = []
    c = consumer(bus, "epochs", got.append, types={"EPOCH_COMPLETED"})
    async with c:
        await eventually(lambda: c.stats.handled + c.stats.skipped == 36)
    assert [(e.type, e.epoch) for e in got] == [("EPOCH_COMPLETED", i) for i in range(6)]
    assert c.stats.skipped == 30 and c.stats.dead_lettered == 0
    assert await nothing_pending(bus, "epochs")


async def test_an_entry_whose_type_cannot_be_read_is_still_dead_lettered(bus: Bus) -> None:
    # Garbage, and a map whose "type" is no string: what they are only decode can tell.
    bad = [b"\x00garbage", msgpack.packb({"v": 1, "type": 5})]
    await bus.append(TOPIC, [*bad, encode(epoch_env(0)), encode(env(1))])
    got: list[Envelope] = []
    c = consumer(bus, "epochs", got.append, types={"EPOCH_COMPLETED"})
    async with c:
        await eventually(lambda: c.stats.dead_lettered == 2 and c.stats.skipped == 1)
    assert [e.type for e in got] == ["EPOCH_COMPLETED"]
    assert len(await dead_letters(bus)) == 2
    assert await nothing_pending(bus, "epochs")


class CountedReads:
    """A bus wrapper counting the consumer's reads that brought entries, and how many."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.reads: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bus, name)

    def _count(self, entries: list[Entry]) -> list[Entry]:
        if entries:
            self.reads.append(len(entries))
        return entries

    async def read_group(self, *args: Any, **kwargs: Any) -> list[Entry]:
        return self._count(await self.bus.read_group(*args, **kwargs))

    async def ack_and_read_group(self, *args: Any, **kwargs: Any) -> list[Entry]:
        return self._count(await self.bus.ack_and_read_group(*args, **kwargs))  # type: ignore[attr-defined]


async def test_a_lingering_consumer_reads_entries_arriving_one_by_one_in_a_batch(
    bus: Bus,
) -> None:
    counted = CountedReads(bus)
    got: list[Envelope] = []
    # A linger far longer than appending takes: what comes meanwhile is read at once after it.
    c = consumer(counted, "lingers", got.append, linger=2.0)  # type: ignore[arg-type]
    async with c:
        await bus.append(TOPIC, [encode(env(0))])
        await eventually(lambda: len(got) == 1)
        for i in range(1, 10):
            await bus.append(TOPIC, [encode(env(i))])
        await eventually(lambda: len(got) == 10)
    assert [e.data["i"] for e in got] == list(range(10))
    assert counted.reads == [1, 9]
    assert await nothing_pending(bus, "lingers")


async def test_stopping_does_not_wait_out_the_linger(bus: Bus) -> None:
    got: list[Envelope] = []
    c = consumer(bus, "lingers", got.append, linger=600.0)
    await c.start()
    await bus.append(TOPIC, [encode(env(0))])
    await eventually(lambda: len(got) == 1)
    await c.stop()  # would hang for 10 minutes if the linger held it
    assert await nothing_pending(bus, "lingers")


def test_peek_type_reads_the_type_of_an_encoded_envelope_only() -> None:
    for e in (env(1), epoch_env(2), Envelope("X" * 40, "r" * 100, "s", {"a": [1, 2]})):
        raw = encode(e)
        assert peek_type(raw) == decode(raw).type
    # Other layouts and bytes that are no envelope: only decode can tell.
    assert peek_type(msgpack.packb({"type": "ITERATION_COMPLETED", "v": 1})) is None
    assert peek_type(encode(env(1))[:40]) is None
    assert peek_type(b"") is None
    assert peek_type(BEGINNING.encode()) is None


async def test_a_batch_hook_runs_after_the_handler_and_before_the_batch_is_acked(
    bus: Bus,
) -> None:
    # A handler may keep back what it makes of each envelope and finish the lot in the hook:
    # nothing it took is acked before the hook returned.
    await bus.append(TOPIC, [encode(env(i)) for i in range(5)])
    got: list[Envelope] = []
    pending_in_hook: list[int] = []
    finished: list[list[int]] = []

    async def hook() -> None:
        # Claimed by the same consumer, so the claim leaves it owning them: still pending.
        stale = await bus.claim_stale(TOPIC, "kept", c.name, min_idle=0, count=100)
        pending_in_hook.append(len(stale))
        finished.append([e.data["i"] for e in got])

    c = consumer(bus, "kept", got.append, after_batch=hook)
    async with c:
        await eventually(lambda: len(finished) == 1)
    assert finished == [[0, 1, 2, 3, 4]] and pending_in_hook == [5]
    assert await nothing_pending(bus, "kept")


async def test_a_failing_batch_hook_leaves_the_batch_to_be_handled_again(bus: Bus) -> None:
    await bus.append(TOPIC, [encode(env(i)) for i in range(3)])
    got: list[int] = []
    calls: list[list[int]] = []

    async def hook() -> None:
        calls.append(list(got))
        if len(calls) == 1:
            raise OSError("disk full")

    # Reclaimed soon after the failure: the same envelopes reach the handler again (they were
    # forgotten by the dedup), and are acked once the hook succeeds.
    c = consumer(
        bus, "retried", lambda e: got.append(e.data["i"]), after_batch=hook, claim_idle=0.1
    )
    async with c:
        await eventually(lambda: len(calls) == 2)
    assert calls == [[0, 1, 2], [0, 1, 2, 0, 1, 2]]
    assert c.stats.failures == 1 and c.stats.duplicates == 0
    assert await nothing_pending(bus, "retried")
