"""The Bus protocol: the stream primitives both buses implement with the same semantics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# Where a group or a tail reader starts: the run's first entry, only entries added from now
# on, or (any other value) strictly after the given entry id.
BEGINNING = "0"
NOW = "$"


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as read: its id, its raw payload (maybe garbage) and delivery count."""

    id: str
    payload: bytes
    deliveries: int = 1


@runtime_checkable
class Bus(Protocol):
    """Append-only topics with consumer groups, acks, reclaim of stale deliveries and tails.

    Entry ids are "<ms>-<seq>" strings that increase within a topic, as in Redis Streams.
    Methods raise bus.errors.BusUnavailable when the transport cannot be reached.
    """

    url: str

    async def append(
        self, topic: str, payloads: Sequence[bytes], *, maxlen: int | None = None
    ) -> list[str]:
        """Append payloads in order in one round trip; return their entry ids."""
        ...

    async def ensure_group(self, topic: str, group: str, start: str = BEGINNING) -> None:
        """Create the consumer group (and the topic) if absent; an existing group is kept."""
        ...

    async def read_group(
        self, topic: str, group: str, consumer: str, *, count: int, block: float | None
    ) -> list[Entry]:
        """Deliver up to `count` new entries to `consumer`, waiting up to `block` seconds."""
        ...

    async def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        """Mark deliveries as handled, removing them from the group's pending list."""
        ...

    async def claim_stale(
        self, topic: str, group: str, consumer: str, *, min_idle: float, count: int
    ) -> list[Entry]:
        """Move deliveries pending longer than `min_idle` seconds to `consumer` (XAUTOCLAIM)."""
        ...

    async def pending(self, topic: str, group: str) -> dict[str, int]:
        """How many deliveries made through `group` each consumer holds unacked (XPENDING):
        work in hand, or left by a consumer that died until another claims it."""
        ...

    async def touch(self, topic: str, group: str, consumer: str, ids: Sequence[str]) -> list[str]:
        """Reset the idle time of those `ids` still pending for `consumer` (XCLAIM JUSTID with
        min-idle 0, after XPENDING), so that no claim_stale takes work still in progress;
        return the ids it still holds. A delivery claimed by another consumer stays theirs."""
        ...

    async def read(self, topic: str, after: str, *, count: int, block: float | None) -> list[Entry]:
        """Read up to `count` entries after id `after` (BEGINNING, NOW or an id) without a group."""
        ...

    async def last_id(self, topic: str) -> str:
        """Id of the newest entry in the topic, or "0-0" when it has none (resolves NOW)."""
        ...

    async def length(self, topic: str) -> int:
        """Number of entries currently in the topic."""
        ...

    async def close(self) -> None:
        """Release connections; the bus is unusable afterwards."""
        ...
