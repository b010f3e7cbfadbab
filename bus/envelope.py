"""The envelope: one lifecycle event or control signal, as it travels on the bus."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

from bus.frozen import filler

SCHEMA_VERSION = 1

# Crockford base32: ids stay sortable as plain strings and readable in redis-cli. Encoding
# two characters (10 bits) per lookup halves the work of the hottest call on the publish path.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_SHIFTS = tuple(range(120, -1, -10))  # 13 pairs = 130 bits; the top two are always zero
# A private generator, reseeded in forked children so that workers never share ids (and so
# that ids never disturb the global `random` state a user may have seeded).
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)


_RANDOM_SHIFTS = _SHIFTS[5:]  # the low 8 pairs: the 80 random bits exactly
# (millisecond, its 10 leading characters): one tuple, read and replaced in one step each, so
# that threads making ids at once never pair one's milliseconds with another's characters.
_prefix: tuple[int, str] = (-1, "")


def new_id(now: float | None = None) -> str:
    """Return a new ULID: 26 characters, sortable by creation time, unique across processes."""
    global _prefix
    ms = int((time.time() if now is None else now) * 1000)
    pairs = _PAIRS
    # The top 5 pairs hold the milliseconds alone: formatted once per millisecond, not per id
    # (ids are made at every published iteration, on the training thread).
    cached_ms, prefix = _prefix
    if ms != cached_ms:
        value = ms << 80
        prefix = "".join([pairs[(value >> shift) & 1023] for shift in _SHIFTS[:5]])
        _prefix = (ms, prefix)
    rand = _rng.getrandbits(80)
    return prefix + "".join([pairs[(rand >> shift) & 1023] for shift in _RANDOM_SHIFTS])


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message on the bus; `data` holds msgpack-native values only."""

    type: str
    run_id: str
    source: str
    data: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    iteration: int = 0
    id: str = field(default_factory=new_id)
    ts: float = field(default_factory=time.time)
    v: int = SCHEMA_VERSION
    sig: str | None = None

    def with_sig(self, sig: str | None) -> Envelope:
        """Return a copy carrying the given signature."""
        return replace(self, sig=sig)


_Filler = filler(Envelope)


def filled_envelope(
    type: str,
    run_id: str,
    source: str,
    data: dict[str, Any],
    epoch: int,
    iteration: int,
    id: str,
    ts: float,
    v: int,
    sig: str | None,
) -> Envelope:
    """The Envelope of these fields, unchecked: built without the frozen dataclass's __init__
    (bus/frozen.py), which costs more than the rest of making or decoding one. For the hot
    paths that already know the fields are sound (decode's fast path, `new_envelope`)."""
    env = _Filler()
    env.type = type
    env.run_id = run_id
    env.source = source
    env.data = data
    env.epoch = epoch
    env.iteration = iteration
    env.id = id
    env.ts = ts
    env.v = v
    env.sig = sig
    env.__class__ = Envelope
    return env


def new_envelope(
    type: str, run_id: str, source: str, data: dict[str, Any], epoch: int = 0, iteration: int = 0
) -> Envelope:
    """`Envelope(type, run_id, source, data, epoch, iteration)`, a new id and the time now,
    built fast (the trainer makes one per published iteration)."""
    return filled_envelope(
        type, run_id, source, data, epoch, iteration, new_id(), time.time(), SCHEMA_VERSION, None
    )
