"""Stream entry ids "<ms>-<seq>": parsing, formatting and the zero id."""

from __future__ import annotations

Key = tuple[int, int]

# The id before every entry: reading after it reads a topic from its beginning.
ZERO_ID = "0-0"


def parse_id(value: str) -> Key:
    """Parse a stream id "<ms>-<seq>" (or "<ms>", meaning seq 0) into a comparable pair."""
    ms, sep, seq = str(value).partition("-")
    try:
        key = (int(ms), int(seq) if sep else 0)
    except ValueError:
        key = (-1, -1)
    if key[0] < 0 or key[1] < 0:
        raise ValueError(f"stream id {value!r} is not of the form '<ms>-<seq>'")
    return key


def format_id(key: Key) -> str:
    """Format a (ms, seq) pair as a stream id string."""
    return f"{key[0]}-{key[1]}"
