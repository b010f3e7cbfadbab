"""ThreadedPublisher: a Publisher on an event loop of its own, for synchronous producers.

The training loop is synchronous; it hands envelopes to this publisher without ever waiting for
the bus. The loop thread is also where other bus work of the same process runs (the trainer's
control reader, the embedded workers): `submit` schedules a coroutine there, with the bus.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bus.base import Bus
from bus.envelope import Envelope
from bus.errors import PublisherClosed
from bus.publisher import Publisher, PublisherStats

T = TypeVar("T")


BusSource = Bus | Callable[[], Bus | Awaitable[Bus]]


class ThreadedPublisher:
    """A Publisher running its own event loop in a daemon thread, for synchronous callers.

    The bus is used only from that thread: pass a factory (e.g. `lambda: open_bus(url)`, sync
    or async) so that it is created there; the publisher then closes it on close(). A Bus
    instance is accepted too if nothing else uses it; the caller keeps owning it.
    """

    def __init__(self, bus: BusSource, **options: Any) -> None:
        """Start the thread and the publisher; `options` are Publisher's keyword arguments."""
        self._source = bus
        self._options = options
        self._owns_bus = not isinstance(bus, Bus) and callable(bus)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._publisher: Publisher | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="bus-publisher", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error

    @property
    def publisher(self) -> Publisher:
        """The underlying Publisher (lives in this object's thread)."""
        assert self._publisher is not None
        return self._publisher

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._setup())
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _setup(self) -> None:
        bus = self._source
        if self._owns_bus:
            made = bus()  # type: ignore[operator]
            bus = await made if inspect.isawaitable(made) else made
        self._publisher = Publisher(bus, **self._options)  # type: ignore[arg-type]
        self._publisher.start()

    @property
    def bus(self) -> Bus:
        """The bus the publisher writes to; use it only from coroutines given to `submit`."""
        return self.publisher.bus

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop of the publisher's thread."""
        return self._loop

    def submit(self, fn: Callable[[Bus], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """Run `fn(bus)` as a task on the publisher's loop; its result arrives in the future."""
        if self._closed:
            raise PublisherClosed("publisher is closed: nothing more can run on its loop")

        async def call() -> T:
            return await fn(self.publisher.bus)

        return asyncio.run_coroutine_threadsafe(call(), self._loop)

    def stats(self) -> PublisherStats:
        """Return the current counters."""
        return self.publisher.stats()

    def publish(self, topic: str, env: Envelope, timeout: float | None = None) -> None:
        """Queue `env` for `topic`; blocks only while the outbox is full (TimeoutError after)."""
        self.publisher.publish_from_thread(topic, env, timeout)

    def publish_later(
        self,
        topic: str,
        type: str,
        run_id: str,
        source: str,
        data: dict[str, Any],
        epoch: int = 0,
        iteration: int = 0,
    ) -> None:
        """Queue an envelope that the writer builds and encodes (see
        `Publisher.publish_later_from_thread`): for per-step envelopes of known-sound data."""
        self.publisher.publish_later_from_thread(
            topic, type, run_id, source, data, epoch, iteration
        )

    def hurry(self) -> None:
        """Write what was published so far without waiting out the linger; returns at once."""
        if not self._closed:
            self.publisher.hurry_from_thread()

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything published so far is written; TimeoutError after `timeout` s."""
        pub = self.publisher
        if self._closed:
            return
        # Counted here, in the producer's thread: what it published before calling flush().
        self._call(pub.flush(timeout, upto=pub.enqueued))

    def close(self, timeout: float | None = None) -> None:
        """Flush, stop the publisher and its thread, and close the bus if it was made here."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._shutdown(timeout))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    async def _shutdown(self, timeout: float | None) -> None:
        try:
            await self.publisher.close(timeout)
        finally:
            if self._owns_bus:
                await self.publisher.bus.close()

    def _call(self, coro: Awaitable[None]) -> None:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        try:
            future.result()
        except concurrent.futures.CancelledError:
            raise PublisherClosed("publisher thread stopped") from None

    def __enter__(self) -> ThreadedPublisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
