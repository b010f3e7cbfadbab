"""The envelope's msgpack codec: the only place that knows the wire format (docs/protocol.md)."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Mapping
from typing import Any

import msgpack

from bus.envelope import SCHEMA_VERSION, Envelope, filled_envelope
from bus.errors import DecodeError, EnvelopeTooLarge

MAX_ENVELOPE_BYTES = 1 << 20

# Wire field -> (Python type(s) accepted, required). Order is the order on the wire.
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "v": ((int,), True),
    "id": ((str,), True),
    "run_id": ((str,), True),
    "type": ((str,), True),
    "source": ((str,), True),
    "ts": ((float, int), True),
    "epoch": ((int,), True),
    "iteration": ((int,), True),
    "data": ((dict,), True),
    "sig": ((str,), False),
}

# decode's fast path assigns each of Envelope's fields itself: it must know them all.
_FIELD_NAMES = ("type", "run_id", "source", "data", "epoch", "iteration", "id", "ts", "v", "sig")
if tuple(f.name for f in dataclasses.fields(Envelope)) != _FIELD_NAMES:
    raise RuntimeError(
        f"bus.codec.decode sets the fields {_FIELD_NAMES} of Envelope, but Envelope now has "
        f"{tuple(f.name for f in dataclasses.fields(Envelope))}: update decode"
    )
# Tells an absent `sig` from one present as nil (which is invalid).
_ABSENT = object()
# The exact types of v, id, run_id, type, source, ts, epoch, iteration and data on the fast path.
_FAST_TYPES = (int, str, str, str, str, float, int, int, dict)
_unpackb = msgpack.unpackb
_isfinite = math.isfinite

# One reusable Packer per thread: msgpack.packb builds a new one per call, which costs about a
# third of encoding an event. A Packer is not safe to share between threads; after an error
# it starts afresh.
_local = threading.local()


def _packer() -> msgpack.Packer:
    try:
        return _local.packer
    except AttributeError:
        _local.packer = msgpack.Packer(use_bin_type=True)
        return _local.packer


def to_native(value: Any) -> Any:
    """Convert tensors, numpy values, tuples and sets into msgpack-native values."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, Mapping):
        return {to_native(k): to_native(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_native(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [to_native(v) for v in sorted(value, key=repr)]
    # Duck-typed so that bus/ never imports torch or numpy: tensors and numpy arrays and
    # scalars all offer tolist() (detach() first for tensors that require grad).
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    if hasattr(value, "tolist"):
        return to_native(value.tolist())
    if hasattr(value, "item"):
        return to_native(value.item())
    raise TypeError(
        f"cannot put a value of type {type(value).__qualname__} on the bus: "
        "use numbers, strings, bytes, lists, dicts, tensors or numpy arrays"
    )


def _as_map(env: Envelope, with_sig: bool) -> dict[str, Any]:
    wire = wire_map(
        env.type, env.run_id, env.source, env.data, env.epoch, env.iteration, env.id, env.ts
    )
    wire["v"] = env.v
    if with_sig and env.sig is not None:
        wire["sig"] = env.sig
    return wire


def wire_map(
    type: str,
    run_id: str,
    source: str,
    data: dict[str, Any],
    epoch: int,
    iteration: int,
    id: str,
    ts: float,
) -> dict[str, Any]:
    """The wire map of an unsigned envelope of the current schema version, built from its
    fields (the publisher's writer encodes one per step without making an Envelope first)."""
    return {
        "v": SCHEMA_VERSION,
        "id": id,
        "run_id": run_id,
        "type": type,
        "source": source,
        "ts": float(ts),
        "epoch": int(epoch),
        "iteration": int(iteration),
        "data": data,
    }


def encode(env: Envelope, max_bytes: int = MAX_ENVELOPE_BYTES) -> bytes:
    """Encode an envelope to msgpack bytes, refusing one larger than `max_bytes`."""
    return encode_map(_as_map(env, with_sig=True), max_bytes)


def encode_map(wire: dict[str, Any], max_bytes: int = MAX_ENVELOPE_BYTES) -> bytes:
    """Encode a wire map (`wire_map`) to msgpack bytes, refusing one larger than `max_bytes`."""
    try:
        raw = _packer().pack(wire)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(
            f"envelope {wire['type']!r} (id {wire['id']}) has data that is not msgpack-native: "
            f"{exc}; convert it with bus.codec.to_native first"
        ) from exc
    if len(raw) > max_bytes:
        raise EnvelopeTooLarge(
            f"envelope {wire['type']!r} (id {wire['id']}) is {len(raw)} bytes, "
            f"over the limit of {max_bytes} bytes; send large payloads as files and publish "
            "their path"
        )
    return raw


def decode(raw: bytes) -> Envelope:
    """Decode msgpack bytes into an envelope, or raise DecodeError naming what is wrong."""
    if not raw:
        raise DecodeError("empty payload (a stream entry without an 'env' field?)")
    try:
        wire = _unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"not msgpack: {type(exc).__name__}: {exc}") from exc
    # Fast path for a well-formed envelope, the common case by far: msgpack yields exact
    # builtin types, so exact type tests suffice (and exclude bool for int). Whatever fails
    # them (a missing key, even a valid envelope with an int `ts`) takes the full checks,
    # which also say what is wrong.
    if type(wire) is dict:
        try:  # one statement each: a multiple assignment would build a tuple first
            v = wire["v"]
            id_ = wire["id"]
            run_id = wire["run_id"]
            type_ = wire["type"]
            source = wire["source"]
            ts = wire["ts"]
            epoch = wire["epoch"]
            iteration = wire["iteration"]
            data = wire["data"]
        except KeyError:
            return _checked(wire)
        sig = wire.get("sig", _ABSENT)
        if sig is _ABSENT:
            sig = None
        elif type(sig) is not str:  # nil is not "unsigned": an absent key is
            return _checked(wire)
        # One comparison of a tuple of types: a quarter cheaper than a test per field.
        types = (
            type(v),
            type(id_),
            type(run_id),
            type(type_),
            type(source),
            type(ts),
            type(epoch),
            type(iteration),
            type(data),
        )
        if types == _FAST_TYPES and v == SCHEMA_VERSION and _isfinite(ts):
            return filled_envelope(type_, run_id, source, data, epoch, iteration, id_, ts, v, sig)
    return _checked(wire)


def _checked(wire: Any) -> Envelope:
    """Check every rule of an unpacked envelope, raising DecodeError at the first broken one."""
    if not isinstance(wire, dict):
        raise DecodeError(f"envelope must be a msgpack map, got {type(wire).__name__}")
    version = wire.get("v")
    if version != SCHEMA_VERSION:
        raise DecodeError(
            f"unknown schema version {version!r} (this reader knows {SCHEMA_VERSION})"
        )
    for name, (types, required) in _FIELDS.items():
        if name not in wire:
            if required:
                raise DecodeError(f"envelope is missing the field {name!r}")
            continue
        value = wire[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise DecodeError(
                f"field {name!r} must be {'/'.join(t.__name__ for t in types)}, "
                f"got {type(value).__name__}"
            )
    if not math.isfinite(wire["ts"]):
        raise DecodeError(f"field 'ts' must be finite, got {wire['ts']!r}")
    return Envelope(
        v=wire["v"],
        id=wire["id"],
        run_id=wire["run_id"],
        type=wire["type"],
        source=wire["source"],
        ts=float(wire["ts"]),
        epoch=wire["epoch"],
        iteration=wire["iteration"],
        data=wire["data"],
        sig=wire.get("sig"),
    )


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        # Sorting by the encoded key is total and language-neutral (keys may mix types).
        items = sorted(
            ((msgpack.packb(k, use_bin_type=True), k, v) for k, v in value.items()),
            key=lambda item: item[0],
        )
        return {k: _canonical(v) for _, k, v in items}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def canonical_bytes(env: Envelope) -> bytes:
    """Return the bytes a signature covers: the envelope minus `sig`, every map key-sorted."""
    return msgpack.packb(_canonical(_as_map(env, with_sig=False)), use_bin_type=True)


def peek_type(raw: bytes) -> str | None:
    """The type of an envelope as `encode` lays it out, read without decoding the rest; None
    for any other layout (then only `decode` can tell what the entry is).

    A consumer uses it to pass over envelopes of types its handler ignores (most of a run's
    are ITERATION_COMPLETED) for a fraction of decoding them. It checks the layout `encode`
    writes up to the type: a map whose first keys are "v" (a small int), "id" and "run_id"
    (short strs), then "type" (a short str). Bytes laid out otherwise, valid or not, give None.
    """
    # The str headers (fixstr or str 8) read inline, not by a helper: this runs for every entry
    # of every consumer that skips types, and three calls of a helper cost a third of it.
    try:
        if not (0x80 <= raw[0] <= 0x8F and raw[1:3] == b"\xa1v" and raw[3] <= 0x7F):
            return None
        if raw[4:7] != b"\xa2id":
            return None
        head = raw[7]  # the id
        if 0xA0 <= head <= 0xBF:
            pos = 8 + (head & 0x1F)
        elif head == 0xD9:
            pos = 9 + raw[8]
        else:
            return None
        if raw[pos : pos + 7] != b"\xa6run_id":
            return None
        pos += 7
        head = raw[pos]  # the run id
        if 0xA0 <= head <= 0xBF:
            pos += 1 + (head & 0x1F)
        elif head == 0xD9:
            pos += 2 + raw[pos + 1]
        else:
            return None
        if raw[pos : pos + 5] != b"\xa4type":
            return None
        pos += 5
        head = raw[pos]  # the type
        if 0xA0 <= head <= 0xBF:
            start, end = pos + 1, pos + 1 + (head & 0x1F)
        elif head == 0xD9:
            start, end = pos + 2, pos + 2 + raw[pos + 1]
        else:
            return None
        if end > len(raw):
            return None
        return raw[start:end].decode()
    except (IndexError, UnicodeDecodeError):
        return None
