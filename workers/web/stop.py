"""The Stop action: a TERMINATE envelope with a reason on the run's control topic.

The trainer stops at its next iteration boundary and names the envelope's `source` (the web
view's, `web:<host>:<pid>`) as `by` in RUN_FINISHED. With TRAINER_BUS_SECRET set the envelope is
signed, as a trainer with the same secret requires (it ignores unsigned control signals).
"""

from __future__ import annotations

from typing import Any

from bus import Bus, Envelope, Topics, encode, sign
from bus.messages import TERMINATE
from workers.errors import WorkerError

DEFAULT_REASON = "stopped from the web view"
MAX_REASON = 500  # characters: a reason is a sentence, not a document


class BadReason(WorkerError, ValueError):
    """The reason given for a stop cannot be sent; the message says what would do."""


def check_reason(value: Any) -> str:
    """The reason to send: `value` stripped, DEFAULT_REASON if empty; BadReason if unusable."""
    if value is None:
        return DEFAULT_REASON
    if not isinstance(value, str):
        raise BadReason(f'reason {value!r} is not a string: send {{"reason": "why"}}')
    reason = " ".join(value.split())
    if len(reason) > MAX_REASON:
        raise BadReason(
            f"reason of {len(reason)} characters is too long: keep it under {MAX_REASON}"
        )
    return reason or DEFAULT_REASON


def terminate_envelope(
    run_id: str, source: str, reason: str, secret: str | None, epoch: int = 0, iteration: int = 0
) -> Envelope:
    """The TERMINATE envelope for run `run_id`, signed with `secret` when there is one."""
    env = Envelope(
        type=TERMINATE,
        run_id=run_id,
        source=source,
        data={"reason": reason},
        epoch=epoch,
        iteration=iteration,
    )
    return sign(env, secret) if secret else env


async def send_terminate(bus: Bus, topics: Topics, env: Envelope) -> str:
    """Append `env` to its run's control topic; the entry id the bus gave it."""
    ids = await bus.append(topics.control(env.run_id), [encode(env)])
    return ids[0]
