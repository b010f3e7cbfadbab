"""What the tests do on the bus, through nothing but the bus API: a client with its own loop
thread, control envelopes as any worker or tool would write them, and bounded waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from bus import Bus, Envelope, ThreadedPublisher, Topics, encode, open_bus, sign, tail

T = TypeVar("T")
TOPICS = Topics()
# Hang guard for every wait of the tests (never a timing assertion).
HANG_GUARD = 60.0


class BusClient:
    """A handle on the bus used from synchronous test code, on a loop thread of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._loop = ThreadedPublisher(lambda: open_bus(url))

    def call(self, fn: Callable[[Bus], Awaitable[T]]) -> T:
        """Run `fn(bus)` on the client's loop and return its result."""
        return self._loop.submit(fn).result(HANG_GUARD)

    def spawn(self, fn: Callable[[Bus], Awaitable[T]]) -> Future[T]:
        """Start `fn(bus)` on the client's loop (a worker of the test's) and return its future."""
        return self._loop.submit(fn)

    def append(self, topic: str, *items: Envelope | bytes) -> list[str]:
        """Append envelopes (or raw bytes) to `topic`; return their entry ids."""
        payloads = [item if isinstance(item, bytes) else encode(item) for item in items]
        return self.call(lambda bus: bus.append(topic, payloads))

    def read(self, topic: str) -> list[Envelope]:
        """Every envelope on `topic` now."""

        async def collect(bus: Bus) -> list[Envelope]:
            return [env async for env in tail(bus, topic, follow=False)]

        return self.call(collect)

    def close(self) -> None:
        """Close the client's bus handle and thread."""
        self._loop.close()


def control(
    run_id: str,
    type: str,
    data: dict[str, Any],
    source: str,
    *,
    secret: str | None = None,
    ts: float | None = None,
) -> Envelope:
    """A control envelope as a worker sends it, signed when given a secret."""
    env = Envelope(type, run_id, source, data, ts=time.time() if ts is None else ts)
    return sign(env, secret) if secret is not None else env


def joined(run_id: str, name: str, *, votes: bool = True, **kw: Any) -> Envelope:
    """WORKER_JOINED of worker `name`."""
    return control(
        run_id, "WORKER_JOINED", {"kind": "test", "name": name, "votes": votes}, name, **kw
    )


def heartbeat(run_id: str, name: str, **kw: Any) -> Envelope:
    """HEARTBEAT of worker `name`."""
    return control(run_id, "HEARTBEAT", {"kind": "test", "name": name}, name, **kw)


def vote(run_id: str, name: str, stop: bool, epoch: int, reason: str = "", **kw: Any) -> Envelope:
    """VOTE of voter `name` on `epoch`."""
    data = {"stop": stop, "reason": reason or ("stop" if stop else "go on"), "voter": name}
    return control(run_id, "VOTE", {**data, "epoch": epoch}, name, **kw)


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = HANG_GUARD) -> Any:
    """Poll `predicate` until it is truthy; fail naming `what` after `timeout` s (hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(0.005)


def types(envs: list[Envelope]) -> list[str]:
    """The type of each envelope."""
    return [env.type for env in envs]


def heartbeats(run_id: str, name: str, every: float = 0.05) -> Callable[[Bus], Awaitable[None]]:
    """A task for `BusClient.spawn`: worker `name` sends HEARTBEAT every `every` s, forever."""

    async def beat(bus: Bus) -> None:
        topic = TOPICS.control(run_id)
        while True:
            await bus.append(topic, [encode(heartbeat(run_id, name))])
            await asyncio.sleep(every)

    return beat
