"""docs/protocol.md states the wire's rules exactly; each test pins the code to one statement.

Clients in other languages implement the page, not this package: where the page and the code
could drift (number types, key order, what the signature covers, ids, dead letters, the
control rules of section 10.2) a test here reads the page or runs its recipe.
"""

from __future__ import annotations

import re
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from bus import (
    BEGINNING,
    DEAD_LETTER,
    Bus,
    Consumer,
    Envelope,
    Rejected,
    Topics,
    Verifier,
    canonical_bytes,
    decode,
    encode,
    new_id,
    sign,
    verify,
)
from trainer.bridge.control import ControlState

PAGE = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def section(number: str) -> str:
    """The text of the page's section `number` ("4", "10.2"), up to the next heading of it."""
    text = PAGE.read_text(encoding="utf-8")
    start = re.search(rf"^#+ {re.escape(number)}\.? ", text, re.M)
    assert start, f"docs/protocol.md has no section {number}"
    level = text[start.start() :].index(" ")
    # Numbered headings only: a "# comment" line in a code block is no heading.
    end = re.compile(rf"^#{{1,{level}}} \d", re.M).search(text, start.end())
    return text[start.start() : end.start() if end else len(text)]


def code_blocks(text: str, language: str = "") -> list[str]:
    """The fenced code blocks of `text` (of `language` when given)."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.M | re.S)


def wire(**fields: Any) -> dict[str, Any]:
    """An envelope as a map, as a client in another language builds it."""
    env: dict[str, Any] = {
        "v": 1,
        "id": "01HZX3K6Y0ABCDEFGHJKMNPQRS",
        "run_id": "r1",
        "type": "VOTE",
        "source": "voter:js-1",
        "ts": 1700000000.5,
        "epoch": 3,
        "iteration": 0,
        "data": {"stop": True, "reason": "plateau", "voter": "voter:js-1", "epoch": 3},
    }
    env.update(fields)
    return env


def received(env: dict[str, Any]) -> Envelope:
    """What a reader makes of `env` sent with msgpack-python."""
    return decode(msgpack.packb(env, use_bin_type=True))


# -- section 3 and 4: number types ------------------------------------------------------------


def test_an_integral_float_is_signed_as_a_float_64_and_differs_from_the_int() -> None:
    as_float = received(wire(data={"threshold": 1.0}))
    as_int = received(wire(data={"threshold": 1}))
    assert type(as_float.data["threshold"]) is float and type(as_int.data["threshold"]) is int
    assert bytes.fromhex("a9 7468726573686f6c64 cb 3ff0000000000000") in canonical_bytes(as_float)
    assert bytes.fromhex("a9 7468726573686f6c64 01") in canonical_bytes(as_int)
    assert sign(as_float, "secret").sig != sign(as_int, "secret").sig


def test_an_integral_ts_sent_as_an_int_is_signed_as_a_float_64() -> None:
    as_int = received(wire(ts=1700000000))
    as_float = received(wire(ts=1700000000.0))
    ts_bytes = bytes.fromhex("a2 7473 cb 41d954fc40000000")
    assert ts_bytes in canonical_bytes(as_int)
    assert canonical_bytes(as_int) == canonical_bytes(as_float)


def _envelope_bytes(data_bytes: bytes) -> bytes:
    """An envelope's msgpack bytes whose `data` is given as raw msgpack (any int/float width)."""
    fields = wire()
    fields.pop("data")
    body = b"".join(msgpack.packb(k) + msgpack.packb(v) for k, v in fields.items())
    return b"\x89" + body + msgpack.packb("data") + data_bytes


def test_the_signature_covers_values_not_the_widths_they_travelled_in() -> None:
    smallest = received(wire(data={"n": 1, "x": 1.0}))
    # {"n": 1 as uint 16, "x": 1.0 as float 32}: what another encoder may well write.
    wide = decode(_envelope_bytes(b"\x82\xa1n\xcd\x00\x01\xa1x\xca" + struct.pack(">f", 1.0)))
    assert wide.data == {"n": 1, "x": 1.0} and type(wide.data["x"]) is float
    assert canonical_bytes(wide) == canonical_bytes(smallest)


# -- section 4: key order ---------------------------------------------------------------------


def _key_order(value: Any) -> list[list[Any]]:
    """The key order of every map in `value`, depth first."""
    if isinstance(value, dict):
        return [list(value)] + [order for v in value.values() for order in _key_order(v)]
    if isinstance(value, list):
        return [order for v in value for order in _key_order(v)]
    return []


def _documented(keys: list[str]) -> list[str]:
    """Section 4 step 2 for str keys: by UTF-8 length, then by UTF-8 bytes."""
    return sorted(keys, key=lambda k: (len(k.encode()), k.encode()))


# Keys of any length (str 8 from 32 bytes on) and script (UTF-8 of 1 to 4 bytes per character).
KEYS = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@given(st.dictionaries(KEYS, st.integers(0, 9), min_size=1, max_size=12))
def test_str_keys_sort_by_utf8_length_then_utf8_bytes(data: dict[str, int]) -> None:
    nested = {"outer": [data, {"inner": data}]}
    unpacked = msgpack.unpackb(canonical_bytes(Envelope("T", "r", "s", nested)), raw=False)
    orders = _key_order(unpacked["data"])
    assert orders[1] == _documented(list(data)) and orders[3] == _documented(list(data))


def test_the_envelope_keys_come_in_the_documented_order() -> None:
    unpacked = msgpack.unpackb(canonical_bytes(received(wire())), raw=False)
    documented = "v, id, ts, data, type, epoch, run_id, source, iteration"
    assert f"`{documented}`" in section("4")
    assert list(unpacked) == documented.split(", ")


# -- section 4: what the signature covers -----------------------------------------------------


def test_unknown_top_level_keys_are_not_signed_and_a_reader_drops_them() -> None:
    signed = sign(received(wire()), "secret")
    extended = {**wire(), "sig": signed.sig, "x-priority": "high"}
    tampered = {**extended, "x-priority": "low"}
    for env in (extended, tampered):
        got = received(env)
        assert verify(got, "secret")
        assert canonical_bytes(got) == canonical_bytes(signed)
        assert not hasattr(got, "x-priority")
    assert canonical_bytes(signed)[0] == 0x89  # a map of exactly the nine keys


def _vector(text: str, number: int) -> tuple[bytes, str]:
    """Test vector `number` of section 4: its canonical bytes and its signature."""
    part = text.split(f"Test vector {number}")[1]
    hex_block = code_blocks(part)[1]
    sig = re.search(r"signature\s+`([0-9a-f]{64})`", part)
    assert sig, f"test vector {number} has no signature"
    return bytes.fromhex("".join(hex_block.split())), sig.group(1)


VECTOR_2_DATA = {
    "stop": True,
    "reason": "plateau",
    "voter": "voter:js-1",
    "epoch": 3,
    "threshold": 1.0,
    "seen": 9007199254740993,
    "métrique": "précision",
    "a_key_of_thirty_two_bytes_______": [0.5, {"b": 1, "a": 2}],
}


def vectors() -> list[tuple[dict[str, Any], bytes, str]]:
    """Both envelopes of section 4 as maps on the wire, with their canonical bytes and sig."""
    text = section("4")
    one = wire(
        type="EPOCH_COMPLETED",
        source="trainer:0",
        epoch=2,
        iteration=300,
        data={"b": 1, "a": [1, 2], "aa": {"z": 1, "y": b"x"}},
    )
    two = wire(id="01HZX3K6Y0ABCDEFGHJKMNPQRT", ts=1700000000, iteration=4500, data=VECTOR_2_DATA)
    return [(one, *_vector(text, 1)), (two, *_vector(text, 2))]


def test_the_code_computes_the_page_test_vectors() -> None:
    for env, canonical, sig in vectors():
        got = received(env)
        assert canonical_bytes(got) == canonical
        assert sign(got, "secret").sig == sig
    # The key order the page spells out for vector 2 is the one in its bytes.
    documented = re.search(r"keys in the order `([^`]*)`", section("4"))
    assert documented, "section 4 spells out the key order of test vector 2"
    canonical = vectors()[1][1]
    assert list(msgpack.unpackb(canonical, raw=False)["data"]) == re.split(r",\s+", documented[1])


# -- section 9: the recipe, run as written ------------------------------------------------------


def _recipe() -> tuple[str, str]:
    blocks = code_blocks(section("9"), "python")
    assert len(blocks) == 2, "section 9 has a signing block and a redis block"
    return blocks[0], blocks[1]


def test_the_section_9_signer_computes_the_test_vectors_and_ulids() -> None:
    signer: dict[str, Any] = {}
    exec(_recipe()[0], signer)
    for env, canonical, sig in vectors():
        assert signer["canonical_bytes"](env) == canonical
        assert signer["sign"](env, "secret")["sig"] == sig
        # With unknown top-level keys, as received: the same bytes.
        assert signer["canonical_bytes"]({**env, "sig": sig, "x": 1}) == canonical
    now = 1700000000.123
    ids = [signer["ulid"](now) for _ in range(50)]
    assert all(ULID.match(i) for i in ids) and len(set(ids)) == 50
    assert {i[:10] for i in ids} == {new_id(now)[:10]}


def test_the_section_9_recipe_run_as_written_stops_a_signed_run(redis_url: str) -> None:
    import redis

    from trainer import Engine, Events
    from trainer.bridge import BusRun

    signer, client = _recipe()
    assert 'redis.Redis.from_url("redis://localhost:6379/0")' in client
    program = signer + client.replace("redis://localhost:6379/0", redis_url)
    raw = redis.Redis.from_url(redis_url)
    trainer = Engine(lambda engine, batch: float(batch))
    run = BusRun(redis_url, "r1", secret="shared-secret")
    run.attach(trainer)

    def vote_from_the_page(_: Engine) -> None:
        exec(program, {"__name__": "recipe"})
        [(last, _fields)] = raw.xrevrange("trainer:run:r1:control", count=1)
        deadline = time.monotonic() + 60
        while run.control.last_id != last.decode():
            assert time.monotonic() < deadline, "the trainer never read the recipe's vote"
            time.sleep(0.01)

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), vote_from_the_page)
    try:
        with run:
            trainer.run(range(10), max_epochs=3)
    finally:
        raw.close()
    end = run.finish()
    assert (end.status, end.by, end.voter, end.iteration) == (
        "terminated",
        "voter:py-1",
        "voter:py-1",
        3,
    )
    assert not run.control.ignored


# -- section 3: message ids ----------------------------------------------------------------------


def test_readers_take_any_string_as_id_and_compare_ids_exactly() -> None:
    ulid = new_id()
    for id_ in (str(uuid.uuid4()), ulid.lower(), "x"):
        env = sign(received(wire(id=id_)), "secret")
        assert decode(encode(env)).id == id_ and verify(decode(encode(env)), "secret")
    assert ulid.lower() != ulid  # exact comparison: not the same message id


def test_ids_are_uppercase_ulids_whose_order_within_a_millisecond_is_random() -> None:
    now = 1700000000.5
    ids = [new_id(now) for _ in range(200)]
    assert all(ULID.match(i) and i == i.upper() for i in ids)
    time_part = "".join(CROCKFORD[(int(now * 1000) >> s) & 31] for s in range(45, -1, -5))
    assert {i[:10] for i in ids} == {time_part}
    assert ids != sorted(ids)  # not monotonic: 1 chance in 200! of failing


# -- section 5.4: dead letters ---------------------------------------------------------------------


async def test_the_dead_letter_of_an_undecodable_entry_names_no_run(bus: Bus) -> None:
    topics = Topics("t")
    topic = topics.events("run-7")
    bad = received(wire(run_id="run-7", epoch=4, iteration=40, data={"bad": True}))
    await bus.append(topic, [b"\xc1 not msgpack", encode(bad)])

    def handler(env: Envelope) -> None:
        raise Rejected("no good")

    letters: list[Envelope] = []
    async with Consumer(bus, topic, "g", handler, block=0.05):
        deadline = time.monotonic() + 30
        while len(letters) < 2:
            assert time.monotonic() < deadline, "the dead letters never came"
            entries = await bus.read(topics.dead_letter(), BEGINNING, count=10, block=0.1)
            letters = [decode(e.payload) for e in entries]
    assert all(letter.type == DEAD_LETTER for letter in letters)
    assert [(x.run_id, x.epoch, x.iteration) for x in letters] == [("", 0, 0), ("run-7", 4, 40)]
    assert {letter.data["topic"] for letter in letters} == {topic}


# -- section 10.2: the control rules ---------------------------------------------------------------


def control_state(**options: Any) -> ControlState:
    settings: dict[str, Any] = {
        "policy": "any",
        "barrier": False,
        "heartbeat_timeout": 10.0,
        "verifier": Verifier(None),
        "can_checkpoint": lambda: True,
        **options,
    }
    return ControlState("r1", **settings)


def control(type_: str, data: dict[str, Any], source: str, ts: float, **fields: Any) -> Envelope:
    return Envelope(type_, "r1", source, data, ts=ts, **fields)


def joined(name: str, source: str, ts: float) -> Envelope:
    return control("WORKER_JOINED", {"kind": "x", "name": name, "votes": True}, source, ts)


def ballot(voter: str, source: str, ts: float, voted: int = 0, **fields: Any) -> Envelope:
    """A stop VOTE of `voter` on epoch `voted`; `fields` set the envelope's own fields."""
    data = {"stop": True, "reason": "enough", "voter": voter, "epoch": voted}
    return control("VOTE", data, source, ts, **fields)


def test_commands_are_stale_by_their_ts_against_the_trainer_start_and_joins_are_not() -> None:
    state = control_state()
    state.started_at = start = 1000.0
    state.apply("1-0", joined("es-1", "es-1", ts=start - 500), now=start + 1)
    state.apply("2-0", ballot("es-1", "es-1", ts=start - 0.001), now=start + 1)
    assert state.stop is None
    assert state.ignored[-1].why == "stale: sent before this trainer started"
    state.apply("3-0", ballot("es-1", "es-1", ts=start), now=start + 1)
    assert state.stop is not None and state.stop.by == "es-1"


def test_a_voter_is_its_name_and_the_source_is_free() -> None:
    state = control_state()
    state.started_at = 0.0
    state.apply("1-0", joined("es-1", "java-client:host-7", ts=1.0), now=1.0)
    state.apply("2-0", ballot("es-1", "java-client:host-7", ts=2.0), now=2.0)
    assert state.stop is not None
    assert (state.stop.by, state.stop.voter) == ("java-client:host-7", "es-1")


def test_liveness_counts_from_min_of_ts_and_the_trainer_clock() -> None:
    state = control_state(barrier=True, heartbeat_timeout=10.0)
    state.started_at = 0.0
    state.apply("1-0", joined("es-1", "es-1", ts=100.0), now=100.0)
    heartbeat = control("HEARTBEAT", {"kind": "x", "name": "es-1"}, "someone-else", ts=1e9)
    state.apply("2-0", heartbeat, now=105.0)  # a clock far ahead: counts as now, 105
    assert state.book.live(115.0) == {"es-1"}
    assert state.book.live(115.1) == frozenset()


def test_the_trainer_reads_the_voted_epoch_from_data_not_the_envelope() -> None:
    state = control_state(barrier=True)
    state.started_at = 0.0
    state.apply("1-0", joined("es-1", "es-1", ts=1.0), now=1.0)
    state.apply("2-0", ballot("es-1", "es-1", ts=2.0, voted=2, epoch=9, iteration=900), now=2.0)
    assert state.book.votes["es-1"].epoch == 2
    assert state.book.missing_votes(2, 2.0) == [] and state.book.missing_votes(3, 2.0) == ["es-1"]


def test_the_documented_heartbeat_interval_and_timeout_are_the_defaults() -> None:
    from trainer.config_schema import BusSection
    from workers.runtime import RuntimeOptions

    text = " ".join(section("10.2").split())  # as read, whatever the line breaks
    assert "Python workers send one every 2 seconds" in text and "(default 10)" in text
    assert RuntimeOptions(bus_url="memory://x", run_id="r").heartbeat == 2.0
    assert BusSection().heartbeat_timeout == 10.0
