"""The dead-letter envelope: what a consumer publishes about an entry it gives up on."""

from __future__ import annotations

from bus.base import Entry
from bus.codec import MAX_ENVELOPE_BYTES
from bus.envelope import Envelope

DEAD_LETTER = "DEAD_LETTER"

# Room left in a dead-letter envelope for everything but the original payload.
_OVERHEAD = 16 * 1024
_MAX_REASON = 2000


def dead_letter_envelope(
    entry: Entry,
    *,
    reason: str,
    topic: str,
    group: str,
    source: str,
    original: Envelope | None = None,
) -> Envelope:
    """Build the DEAD_LETTER envelope carrying `entry`'s original bytes and why it was dropped.

    `original` is the decoded envelope when there is one: its run id, epoch and iteration are
    copied so that a run's dead letters can be found by run. Without one (an undecodable entry)
    they are "", 0 and 0, whatever the topic (docs/protocol.md 5.4): `data.topic` names it.
    """
    payload = entry.payload
    data: dict[str, object] = {
        "reason": reason[:_MAX_REASON],
        "topic": topic,
        "entry_id": entry.id,
        "group": group,
        "deliveries": entry.deliveries,
        "payload": payload,
    }
    limit = MAX_ENVELOPE_BYTES - _OVERHEAD
    if len(payload) > limit:  # only possible for entries written around the bus's own checks
        data.update(payload=payload[:limit], truncated=True, size=len(payload))
    return Envelope(
        type=DEAD_LETTER,
        run_id=original.run_id if original is not None else "",
        source=source,
        data=data,
        epoch=original.epoch if original is not None else 0,
        iteration=original.iteration if original is not None else 0,
    )
