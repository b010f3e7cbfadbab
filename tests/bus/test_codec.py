"""encode and decode: the bytes written, what is accepted, and the DecodeError message for each
rule of docs/protocol.md §3."""

from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.codec import decode, encode
from bus.envelope import Envelope
from bus.errors import DecodeError

WIRE: dict[str, Any] = {
    "v": 1,
    "id": "01HZX3K6Y0ABCDEFGHJKMNPQRS",
    "run_id": "r1",
    "type": "EPOCH_COMPLETED",
    "source": "trainer:0",
    "ts": 1700000000.5,
    "epoch": 2,
    "iteration": 300,
    "data": {"loss": 0.25},
}
ENVELOPE = Envelope(
    v=1,
    id="01HZX3K6Y0ABCDEFGHJKMNPQRS",
    run_id="r1",
    type="EPOCH_COMPLETED",
    source="trainer:0",
    ts=1700000000.5,
    epoch=2,
    iteration=300,
    data={"loss": 0.25},
)


def packed(wire: Any) -> bytes:
    return msgpack.packb(wire, use_bin_type=True)


def changed(**fields: Any) -> dict[str, Any]:
    """WIRE with some fields replaced; a value of `...` removes the field."""
    wire = {**WIRE, **fields}
    return {k: v for k, v in wire.items() if v is not ...}


def test_encode_writes_the_documented_map() -> None:
    assert encode(ENVELOPE) == packed(WIRE)
    assert encode(dataclasses.replace(ENVELOPE, sig="s")) == packed({**WIRE, "sig": "s"})


def test_encode_is_right_after_refusing_data_that_is_not_native() -> None:
    for bad in ({"x": object()}, {"x": 2**70}):
        with pytest.raises(TypeError, match="not msgpack-native"):
            encode(dataclasses.replace(ENVELOPE, data={"ok": 1, **bad}))
        assert encode(ENVELOPE) == packed(WIRE)


def test_encode_from_many_threads_at_once_gives_each_its_own_bytes() -> None:
    envelopes = [
        dataclasses.replace(ENVELOPE, iteration=i, data={"i": [i] * 50}) for i in range(4000)
    ]
    expected = [packed({**WIRE, "iteration": i, "data": {"i": [i] * 50}}) for i in range(4000)]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(encode, envelopes, chunksize=10)) == expected


def test_a_well_formed_envelope_decodes_to_its_fields() -> None:
    assert decode(packed(WIRE)) == ENVELOPE
    assert decode(packed(changed(sig="ab" * 32))) == dataclasses.replace(ENVELOPE, sig="ab" * 32)


def test_a_decoded_envelope_is_an_immutable_envelope_like_any_other() -> None:
    env = decode(packed(changed(data={"loss": 0.25, 3: "an int key"})))
    assert type(env) is Envelope
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.type = "OTHER"  # type: ignore[misc]
    assert dataclasses.replace(env, data={"loss": 0.25}) == ENVELOPE
    assert env.data[3] == "an int key"


def test_an_int_timestamp_is_accepted_as_a_float() -> None:
    env = decode(packed(changed(ts=1700000000)))
    assert env.ts == 1700000000.0 and type(env.ts) is float


def test_unknown_top_level_keys_are_ignored() -> None:
    assert decode(packed(changed(extra=[1, 2]))) == ENVELOPE


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty payload (a stream entry without an 'env' field?)"),
        (packed([1, 2]), "envelope must be a msgpack map, got list"),
        (packed("text"), "envelope must be a msgpack map, got str"),
        (packed(changed(v=2)), "unknown schema version 2 (this reader knows 1)"),
        (packed(changed(v=...)), "unknown schema version None (this reader knows 1)"),
        (packed(changed(v="1")), "unknown schema version '1' (this reader knows 1)"),
        (packed(changed(v=True)), "field 'v' must be int, got bool"),
        (packed(changed(v=1.0)), "field 'v' must be int, got float"),
        (packed(changed(id=...)), "envelope is missing the field 'id'"),
        (packed(changed(data=...)), "envelope is missing the field 'data'"),
        (packed(changed(id=b"bytes")), "field 'id' must be str, got bytes"),
        (packed(changed(run_id=None)), "field 'run_id' must be str, got NoneType"),
        (packed(changed(type=7)), "field 'type' must be str, got int"),
        (packed(changed(source=["t"])), "field 'source' must be str, got list"),
        (packed(changed(ts="now")), "field 'ts' must be float/int, got str"),
        (packed(changed(ts=False)), "field 'ts' must be float/int, got bool"),
        (packed(changed(ts=math.inf)), "field 'ts' must be finite, got inf"),
        (packed(changed(ts=-math.inf)), "field 'ts' must be finite, got -inf"),
        (packed(changed(ts=math.nan)), "field 'ts' must be finite, got nan"),
        (packed(changed(epoch=1.5)), "field 'epoch' must be int, got float"),
        (packed(changed(iteration=True)), "field 'iteration' must be int, got bool"),
        (packed(changed(data=[1])), "field 'data' must be dict, got list"),
        (packed(changed(sig=None)), "field 'sig' must be str, got NoneType"),
        (packed(changed(sig=b"x")), "field 'sig' must be str, got bytes"),
    ],
)
def test_an_invalid_envelope_raises_decode_error_saying_what_is_wrong(
    raw: bytes, message: str
) -> None:
    with pytest.raises(DecodeError) as info:
        decode(raw)
    assert info.value.reason == message
    assert str(info.value) == message


def test_bytes_that_are_not_msgpack_raise_decode_error() -> None:
    with pytest.raises(DecodeError, match=r"^not msgpack: "):
        decode(b"\xc1 not msgpack")
    with pytest.raises(DecodeError, match=r"^not msgpack: "):
        decode(packed(WIRE)[:-3])  # cut short


# Values of every msgpack type, to put in any field of an otherwise valid envelope.
any_value = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5)
    | st.lists(st.integers(0, 9), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2)
)
mutations = st.dictionaries(
    st.sampled_from([*WIRE, "sig", "other"]), any_value | st.just(...), max_size=3
)


def reference_decode(wire: Any) -> Envelope:
    """The rules of docs/protocol.md §3 spelled out one by one, raising DecodeError(reason)."""
    if not isinstance(wire, dict):
        raise DecodeError("not a map")
    if wire.get("v") != 1:
        raise DecodeError("version")
    kinds = {
        "v": int,
        "id": str,
        "run_id": str,
        "type": str,
        "source": str,
        "ts": (float, int),
        "epoch": int,
        "iteration": int,
        "data": dict,
    }
    for name, kind in kinds.items():
        if name not in wire or isinstance(wire[name], bool) or not isinstance(wire[name], kind):
            raise DecodeError(name)
    if "sig" in wire and not isinstance(wire["sig"], str):
        raise DecodeError("sig")
    if not math.isfinite(wire["ts"]):
        raise DecodeError("ts")
    fields = {name: wire[name] for name in kinds}
    return Envelope(**{**fields, "ts": float(wire["ts"]), "sig": wire.get("sig")})


@settings(max_examples=500, deadline=None)
@given(mutations)
def test_decode_accepts_exactly_what_the_rules_accept(mutation: dict[str, Any]) -> None:
    wire = changed(**mutation)
    try:
        expected: Envelope | None = reference_decode(wire)
    except DecodeError:
        expected = None
    if expected is None:
        with pytest.raises(DecodeError):
            decode(packed(wire))
    else:
        got = decode(packed(wire))
        assert got == expected
        assert type(got.ts) is float
