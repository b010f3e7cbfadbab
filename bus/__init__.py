"""The bus: topics of msgpack envelopes on Redis Streams or in memory, with one consumer runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bus.base import BEGINNING, NOW, Bus, Entry
from bus.codec import MAX_ENVELOPE_BYTES, canonical_bytes, decode, encode, to_native
from bus.consumer import Consumer, ConsumerStats
from bus.dead_letter import DEAD_LETTER, dead_letter_envelope
from bus.envelope import SCHEMA_VERSION, Envelope, new_id
from bus.errors import (
    BusAuthError,
    BusError,
    BusUnavailable,
    DecodeError,
    EnvelopeTooLarge,
    InvalidTopic,
    InvalidURL,
    OutboxFull,
    PublisherClosed,
    PublisherFailed,
    Rejected,
    UnknownGroup,
)
from bus.factory import open_bus
from bus.memory import InMemoryBus
from bus.publisher import Publisher, PublisherStats
from bus.signing import InvalidSignature, Verifier, sign, verify
from bus.tail import Tail, tail
from bus.threaded_publisher import ThreadedPublisher
from bus.topics import DEFAULT_NAMESPACE, Topics, topics_of

if TYPE_CHECKING:
    from bus.redis_stream import RedisStreamBus

__all__ = [
    "BEGINNING",
    "DEAD_LETTER",
    "DEFAULT_NAMESPACE",
    "MAX_ENVELOPE_BYTES",
    "NOW",
    "SCHEMA_VERSION",
    "Bus",
    "BusAuthError",
    "BusError",
    "BusUnavailable",
    "Consumer",
    "ConsumerStats",
    "DecodeError",
    "Entry",
    "Envelope",
    "EnvelopeTooLarge",
    "InMemoryBus",
    "InvalidSignature",
    "InvalidTopic",
    "InvalidURL",
    "OutboxFull",
    "Publisher",
    "PublisherClosed",
    "PublisherFailed",
    "PublisherStats",
    "RedisStreamBus",
    "Rejected",
    "Tail",
    "ThreadedPublisher",
    "Topics",
    "UnknownGroup",
    "Verifier",
    "canonical_bytes",
    "dead_letter_envelope",
    "decode",
    "encode",
    "new_id",
    "open_bus",
    "sign",
    "tail",
    "to_native",
    "topics_of",
    "verify",
]


def __getattr__(name: str) -> Any:
    # RedisStreamBus is loaded on first use so that `import bus` does not import redis-py.
    if name == "RedisStreamBus":
        from bus.redis_stream import RedisStreamBus

        return RedisStreamBus
    raise AttributeError(f"module 'bus' has no attribute {name!r}")
