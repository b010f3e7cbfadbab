"""The queue of a sweep's trials: one stream per sweep, read through one consumer group.

`<ns>:sweep:<id>:trials` holds one TRIAL entry per trial, appended by `trainer sweep`. Every
agent reads it through the group `agents` (bus.messages.AGENTS_GROUP), so each entry is
delivered to one agent. An agent acks an entry once the trial's run is over; while the run goes
on it renews the delivery (`touch`) every `reclaim_after / 4` seconds. An entry left pending
longer than `reclaim_after` seconds belongs to an agent that died: another agent claims it
(XAUTOCLAIM) and resumes the trial. docs/protocol.md section 10.4 says the same for clients in
other languages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bus import BEGINNING, Bus, DecodeError, Entry, Rejected, Topics, decode, encode
from bus.messages import AGENTS_GROUP
from workers.sweeps.orders import TrialOrder


@dataclass(frozen=True)
class Taken:
    """A trial an agent holds: its entry on the queue, the order, whether it was taken over."""

    entry_id: str
    order: TrialOrder
    reclaimed: bool  # claimed from an agent that stopped renewing it (XAUTOCLAIM)


class TrialQueue:
    """The queue of one sweep's trials on `bus`, as one consumer (`consumer`) reads it."""

    def __init__(self, bus: Bus, topics: Topics, sweep_id: str, consumer: str) -> None:
        self.bus = bus
        self.topic = topics.trials(sweep_id)
        self.sweep_id = sweep_id
        self.consumer = consumer
        self.group = AGENTS_GROUP
        self.bad: list[tuple[str, str]] = []  # (entry id, why) of entries that are no trial

    async def ensure(self) -> None:
        """Create the queue and its group (from the queue's first entry) if they are missing."""
        await self.bus.ensure_group(self.topic, self.group, BEGINNING)

    async def put(self, orders: Sequence[TrialOrder], source: str) -> list[str]:
        """Append trials to the queue; their entry ids."""
        return await self.bus.append(self.topic, [encode(o.envelope(source)) for o in orders])

    async def take(self, count: int, block: float | None = None) -> list[Taken]:
        """Up to `count` trials not yet delivered to any agent."""
        entries = await self.bus.read_group(
            self.topic, self.group, self.consumer, count=count, block=block
        )
        return await self._orders(entries, reclaimed=False)

    async def reclaim(self, count: int, min_idle: float) -> list[Taken]:
        """Up to `count` trials whose agent has not renewed them for `min_idle` seconds."""
        entries = await self.bus.claim_stale(
            self.topic, self.group, self.consumer, min_idle=min_idle, count=count
        )
        return await self._orders(entries, reclaimed=True)

    async def renew(self, entry_ids: Sequence[str]) -> list[str]:
        """Keep these trials ours (they are running); the ones still ours."""
        return await self.bus.touch(self.topic, self.group, self.consumer, list(entry_ids))

    async def done(self, entry_id: str) -> None:
        """The trial's run is over: no agent takes it again."""
        await self.bus.ack(self.topic, self.group, [entry_id])

    async def _orders(self, entries: list[Entry], reclaimed: bool) -> list[Taken]:
        taken = []
        for entry in entries:
            try:
                order = TrialOrder.of(decode(entry.payload))
            except (DecodeError, Rejected) as exc:
                # Not a trial: acked, so that it never blocks a slot again; the agent logs it.
                self.bad.append((entry.id, str(exc)))
                await self.done(entry.id)
                continue
            taken.append(Taken(entry.id, order, reclaimed))
        return taken
