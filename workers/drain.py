"""DrainWatch: a Bus wrapper that tells when a consumer's group reads come back empty."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from bus import Bus, Entry


class DrainWatch:
    """Wraps the bus a Consumer reads through and notes when its reads found entries or none.

    A run's worker may end only once its consumer has read everything there was after the run
    finished: a read that found nothing is the evidence (a mere pause in handling is not).
    Every other Bus method goes straight to the wrapped bus.
    """

    def __init__(self, bus: Bus, on_read: Callable[[], None] | None = None) -> None:
        self._bus = bus
        self._on_read = on_read
        self.last_entries = time.monotonic()  # of the last read that returned entries
        self.last_empty: float | None = None  # of the last read that returned none

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)

    def drained_since(self, moment: float) -> bool:
        """True if a read after `moment`, and after the last entries read, found nothing."""
        empty = self.last_empty
        return empty is not None and empty > moment and empty > self.last_entries

    def _note(self, entries: list[Entry]) -> list[Entry]:
        if entries:
            self.last_entries = time.monotonic()
        else:
            self.last_empty = time.monotonic()
        if self._on_read is not None:
            self._on_read()
        return entries

    async def read_group(
        self,
        topic: str,
        group: str,
        consumer: str,
        *,
        count: int,
        block: float | None,
        **types: Any,
    ) -> list[Entry]:
        """Bus.read_group (with `types=` where the bus filters them), noting whether entries
        came back."""
        entries = await self._bus.read_group(
            topic, group, consumer, count=count, block=block, **types
        )
        return self._note(entries)

    async def ack_and_read_group(
        self, topic: str, group: str, consumer: str, ids: Sequence[str], *, count: int, **types: Any
    ) -> list[Entry]:
        """The wrapped bus's ack_and_read_group (or an ack, then a read), noting whether
        entries came back."""
        combined = getattr(self._bus, "ack_and_read_group", None)
        if combined is not None:
            entries = await combined(topic, group, consumer, ids, count=count, **types)
        else:
            await self._bus.ack(topic, group, ids)
            entries = await self._bus.read_group(
                topic, group, consumer, count=count, block=None, **types
            )
        return self._note(entries)

    async def claim_stale(
        self, topic: str, group: str, consumer: str, *, min_idle: float, count: int
    ) -> list[Entry]:
        """Bus.claim_stale; reclaimed entries count as entries read."""
        entries = await self._bus.claim_stale(
            topic, group, consumer, min_idle=min_idle, count=count
        )
        if entries:
            self._note(entries)
        return entries
