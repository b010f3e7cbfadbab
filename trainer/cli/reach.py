"""Refusing to start against a bus that cannot be reached: one line, not a retry loop."""

from __future__ import annotations

import asyncio

from bus import BusAuthError, BusError, Topics, open_bus
from bus.urls import redact
from trainer.cli.errors import UsageError

# Seconds to wait for a first answer from the bus before giving up.
REACH_TIMEOUT = 5.0


def check_bus(url: str, namespace: str, timeout: float = REACH_TIMEOUT) -> None:
    """Raise UsageError naming the (redacted) URL unless the bus answers within `timeout` s."""

    async def probe() -> None:
        bus = open_bus(url)
        try:
            await asyncio.wait_for(bus.length(Topics(namespace).registry()), timeout)
        finally:
            await bus.close()

    try:
        asyncio.run(probe())
    except BusAuthError as exc:
        raise UsageError(f"the bus at {redact(url)} refused us: {_reason(exc)}") from None
    except (BusError, OSError, asyncio.TimeoutError) as exc:
        raise UsageError(
            f"cannot reach the bus at {redact(url)}: {_reason(exc) or 'no answer in time'}; "
            "is Redis running there?"
        ) from None


def _reason(exc: BaseException) -> str:
    """The innermost cause's message: the part that says what went wrong."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
