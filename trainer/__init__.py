"""An Ignite-style training engine whose lifecycle is an event stream."""

from trainer.engine import DataExhaustedError, Engine, RemovableHandle
from trainer.events import EventEnum, Events, EventsList, FilteredEvent
from trainer.state import State

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
