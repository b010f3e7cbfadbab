"""An Ignite-style training engine whose lifecycle is an event stream.

`from trainer import Engine, Events, State, EventEnum` works as ever, but each name is loaded on
first use (PEP 562): importing a pure part of the package (`trainer.tracking`,
`trainer.retention`, ...), as the workers do, runs this module and must not load the Engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.engine import DataExhaustedError, Engine, RemovableHandle
    from trainer.events import EventEnum, Events, EventsList, FilteredEvent
    from trainer.state import State

# public name -> the module that defines it, imported on first access.
_HOMES = {
    "DataExhaustedError": "trainer.engine",
    "Engine": "trainer.engine",
    "RemovableHandle": "trainer.engine",
    "EventEnum": "trainer.events",
    "Events": "trainer.events",
    "EventsList": "trainer.events",
    "FilteredEvent": "trainer.events",
    "State": "trainer.state",
}

__all__ = [
    "DataExhaustedError",
    "Engine",
    "EventEnum",
    "Events",
    "EventsList",
    "FilteredEvent",
    "RemovableHandle",
    "State",
]


def __getattr__(name: str) -> Any:
    """Load a public name from its module on first access (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    """The module's attributes, with the public names not loaded yet."""
    return sorted(set(globals()) | set(__all__))
