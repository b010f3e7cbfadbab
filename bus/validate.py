"""Argument checks shared by both buses, so that they refuse the same input the same way."""

from __future__ import annotations

from collections.abc import Sequence

from bus.errors import EnvelopeTooLarge


def check_payloads(topic: str, payloads: Sequence[bytes], max_bytes: int) -> list[bytes]:
    """Return the payloads as bytes, refusing non-bytes and any over `max_bytes`."""
    if isinstance(payloads, (bytes, bytearray, memoryview, str)):
        raise TypeError(f"payloads for topic {topic!r} must be a sequence of bytes, not one value")
    out = []
    for i, p in enumerate(payloads):
        if not isinstance(p, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"payload {i} for topic {topic!r} must be bytes, got {type(p).__qualname__}"
            )
        p = bytes(p)
        if len(p) > max_bytes:
            raise EnvelopeTooLarge(
                f"payload {i} for topic {topic!r} is {len(p)} bytes, over the limit of "
                f"{max_bytes} bytes; send large payloads as files and publish their path"
            )
        out.append(p)
    return out


def check_count(count: int) -> None:
    """Refuse a read size that is not a positive integer."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")


def check_maxlen(topic: str, maxlen: int | None) -> None:
    """Refuse a trimming length that is negative or not an integer."""
    if maxlen is not None and (
        isinstance(maxlen, bool) or not isinstance(maxlen, int) or maxlen < 0
    ):
        raise ValueError(f"maxlen for topic {topic!r} must be an integer >= 0, got {maxlen!r}")
