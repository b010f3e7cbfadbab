"""open_bus: the one place that turns a bus URL into a bus."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from bus.base import Bus
from bus.errors import InvalidURL
from bus.memory import InMemoryBus
from bus.urls import redact

SCHEMES = ("memory", "redis", "rediss", "unix")


def open_bus(url: str, **options: Any) -> Bus:
    """Open the bus at `url`: memory://name, redis://[user:password@]host:port/db or rediss://.

    `options` go to the bus class (e.g. `max_payload`; for Redis `socket_timeout`, the most
    seconds any command may wait for its reply) and, for Redis, on to `redis.asyncio.from_url`
    (e.g. `ssl_ca_certs`).
    """
    if not isinstance(url, str) or "://" not in url:
        raise InvalidURL(
            f"bus URL {url!r} has no scheme: use memory://NAME, redis://HOST:PORT/DB "
            "or rediss://HOST:PORT/DB"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return InMemoryBus.from_url(url, **options)
    if scheme in ("redis", "rediss", "unix"):
        # Imported here so that `import bus` and in-memory runs never load redis-py.
        from bus.redis_stream import RedisStreamBus

        return RedisStreamBus(url, **options)
    raise InvalidURL(
        f"unsupported bus URL scheme {scheme!r} in {redact(url)!r}: "
        f"use one of {', '.join(s + '://' for s in SCHEMES)}"
    )
