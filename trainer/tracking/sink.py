"""Where a Run's records go: the Sink seam, the sink of disabled mode, and the online hook.

A record is a msgpack-native dict ``{"kind": "meta"|"log"|"histogram"|"image"|"artifact"|
"finish", ..., "key"?: str}`` (docs/tracking.md lists every field). `LocalSink` applies records
to a run directory (`trainer.tracking.local`); an online sink sends them to the bus, where the
tracking worker applies them with a LocalSink: one writer, whatever the mode.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from trainer.tracking.errors import TrackingError

ONLINE_MODULE = "trainer.tracking.online"


class Sink(Protocol):
    """Takes a Run's records: `write` one (its result, e.g. an artifact version, or None)."""

    def write(self, record: dict[str, Any]) -> Any:
        """Take one record."""

    def close(self) -> None:
        """Flush what is pending; no record follows."""


class NullSink:
    """The sink of disabled mode: takes every record and keeps none."""

    def write(self, record: dict[str, Any]) -> None:
        """Drop the record."""

    def close(self) -> None:
        """Nothing to flush."""


OnlineFactory = Callable[[Mapping[str, Any]], Sink]
_online_factory: OnlineFactory | None = None


def set_online_sink(factory: OnlineFactory | None) -> None:
    """Make `factory(first_meta_record)` build the sink of online runs (None: the default)."""
    global _online_factory
    _online_factory = factory


def online_sink(meta: Mapping[str, Any]) -> Sink:
    """The sink of a new online run, given its first meta record.

    Without a registered factory, `trainer.tracking.online.make_sink` is used if it exists
    (imported only now: the online sink needs the bus, the local store does not).
    """
    factory = _online_factory
    if factory is None:
        try:
            module = importlib.import_module(ONLINE_MODULE)
        except ImportError as exc:
            raise TrackingError(
                f"tracking mode 'online' needs {ONLINE_MODULE} ({exc}); use mode 'offline'"
            ) from None
        factory = _online_factory or getattr(module, "make_sink", None)
    if factory is None:
        raise TrackingError(
            f"tracking mode 'online': no online sink is registered ({ONLINE_MODULE}.make_sink "
            "or tracking.set_online_sink(factory)); use mode 'offline'"
        )
    return factory(meta)
