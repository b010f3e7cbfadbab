"""Properties over generated inputs: the codec round-trips any native data; garbage on a topic
never crashes a consumer and ends up dead-lettered, on both buses."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from redis_server import RedisServer

from bus import open_bus
from bus.base import BEGINNING, Bus
from bus.codec import canonical_bytes, decode, encode
from bus.consumer import Consumer
from bus.dead_letter import DEAD_LETTER
from bus.envelope import Envelope
from bus.errors import DecodeError
from bus.signing import sign, verify

# ---- strategies --------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # everything msgpack has an integer format for
    | st.floats(allow_nan=False)  # NaN != NaN would make equality meaningless, not the codec
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
keys = st.text(max_size=10) | INT64 | st.binary(max_size=10)
native = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)
envelopes = st.builds(
    Envelope,
    type=st.text(min_size=1, max_size=30),
    run_id=st.text(max_size=30),
    source=st.text(max_size=30),
    data=st.dictionaries(st.text(max_size=10), native, max_size=6),
    epoch=INT64,
    iteration=INT64,
    ts=st.floats(allow_nan=False, allow_infinity=False),
    sig=st.none() | st.text(max_size=64),
)


def reordered(value: Any) -> Any:
    """The same value with every map's keys in reverse insertion order."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


# ---- codec -------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(envelopes)
def test_codec_round_trips_any_envelope_of_native_data(env: Envelope) -> None:
    assert decode(encode(env)) == env


@settings(max_examples=100, deadline=None)
@given(envelopes, st.binary(min_size=1, max_size=32))
def test_signatures_survive_the_wire_and_key_order(env: Envelope, secret: bytes) -> None:
    signed = sign(env, secret)
    shuffled = dataclasses.replace(decode(encode(signed)), data=reordered(signed.data))
    assert canonical_bytes(shuffled) == canonical_bytes(signed)
    assert verify(shuffled, secret)


# ---- garbage on a topic ------------------------------------------------------------------


def undecodable(raw: bytes) -> bool:
    try:
        decode(raw)
    except DecodeError:
        return True
    return False


def valid_envelope(i: int) -> bytes:
    return encode(Envelope("ITERATION_COMPLETED", "fuzz", "trainer:0", iteration=i))


garbage = st.one_of(
    st.binary(max_size=64),  # noise
    native.map(lambda v: msgpack.packb(v, use_bin_type=True)),  # msgpack, but no envelope
    st.builds(  # an envelope cut short
        lambda cut: valid_envelope(0)[:cut], st.integers(0, len(valid_envelope(0)) - 1)
    ),
).filter(undecodable)
# Each item is garbage, or None standing for a valid envelope at that position.
topic_contents = st.lists(st.none() | garbage, min_size=1, max_size=30)


async def consume_everything(bus: Bus, contents: list[bytes | None]) -> None:
    """Write `contents` to a fresh topic, run a real Consumer over it, check what became of it."""
    topic = f"fuzz:{uuid.uuid4().hex}:events"
    dead = f"fuzz:{uuid.uuid4().hex}:deadletter"
    payloads = [valid_envelope(i) if raw is None else raw for i, raw in enumerate(contents)]
    await bus.append(topic, payloads)
    expected_handled = [i for i, raw in enumerate(contents) if raw is None]
    expected_dead = [raw for raw in contents if raw is not None]

    handled: list[int] = []
    consumer = Consumer(
        bus,
        topic,
        "workers",
        lambda env: handled.append(env.iteration),
        dead_letter_topic=dead,
        batch=7,
        block=0.01,
    )
    async with consumer:
        deadline = asyncio.get_running_loop().time() + 20
        while consumer.stats.handled + consumer.stats.dead_lettered < len(contents):
            assert asyncio.get_running_loop().time() < deadline, consumer.stats
            await asyncio.sleep(0.002)
    # Leaving `async with` awaited the consumer's task: had it crashed, that would have raised.

    assert handled == expected_handled
    letters = [decode(e.payload) for e in await bus.read(dead, BEGINNING, count=100, block=None)]
    assert [letter.type for letter in letters] == [DEAD_LETTER] * len(expected_dead)
    assert [letter.data["payload"] for letter in letters] == expected_dead
    assert all(letter.data["topic"] == topic for letter in letters)
    # Everything was acked: nothing is left pending for a replica to reclaim.
    assert await bus.claim_stale(topic, "workers", "inspector", min_idle=0, count=100) == []


@settings(max_examples=40, deadline=None)
@given(topic_contents)
def test_garbage_never_crashes_a_consumer_and_is_dead_lettered_in_memory(
    contents: list[bytes | None],
) -> None:
    async def scenario() -> None:
        bus = open_bus(f"memory://fuzz-{uuid.uuid4().hex}")
        await consume_everything(bus, contents)
        await bus.close()

    asyncio.run(scenario())


@settings(max_examples=25, deadline=None)
@given(contents=topic_contents)
def test_garbage_never_crashes_a_consumer_and_is_dead_lettered_on_redis(
    redis_server: RedisServer, contents: list[bytes | None]
) -> None:
    async def scenario() -> None:
        bus = open_bus(redis_server.url)
        try:
            await consume_everything(bus, contents)
        finally:
            await bus.close()

    asyncio.run(scenario())
