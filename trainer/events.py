"""Events as data: the built-in lifecycle events, custom event enums, filters and event lists."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.engine import Engine

EventFilter = Callable[["Engine", int], bool]


class EventEnum(Enum):
    """Base of event enums; members can be filtered (`every`, `once`, `event_filter`) and or-ed."""

    # Members are singletons: identity hashing keeps handler lookup off Enum's Python __hash__.
    __hash__ = object.__hash__

    def __call__(
        self,
        event_filter: EventFilter | None = None,
        every: int | None = None,
        once: int | None = None,
    ) -> FilteredEvent:
        """Return this event restricted to the counts the filter accepts."""
        given = [
            name
            for name, v in (("event_filter", event_filter), ("every", every), ("once", once))
            if v is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"{self}: give exactly one of event_filter, every or once, got "
                f"{', '.join(given) if given else 'none'}"
            )
        if every is not None:
            _check_count("every", every, self)
            if every == 1:
                return FilteredEvent(self, _always, "every=1")
            return FilteredEvent(self, _Every(every), f"every={every}")
        if once is not None:
            _check_count("once", once, self)
            return FilteredEvent(self, _Once(once), f"once={once}")
        if not callable(event_filter):
            raise TypeError(f"{self}: event_filter must be callable, got {event_filter!r}")
        return FilteredEvent(self, event_filter, getattr(event_filter, "__name__", "filter"))

    def __or__(self, other: AnyEvent) -> EventsList:
        return EventsList([self]) | other

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


def _check_count(name: str, value: object, event: EventEnum) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{event}({name}={value!r}): {name} must be a positive integer")


def _always(engine: Engine, count: int) -> bool:
    return True


class _Every:
    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, engine: Engine, count: int) -> bool:
        return count % self.n == 0


class _Once:
    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self, engine: Engine, count: int) -> bool:
        return count == self.n


@dataclass(frozen=True)
class FilteredEvent:
    """An event whose handlers run only when `filter(engine, count)` is true."""

    event: EventEnum
    filter: EventFilter
    description: str

    def __or__(self, other: AnyEvent) -> EventsList:
        return EventsList([self]) | other

    def __str__(self) -> str:
        return f"{self.event}({self.description})"


class EventsList:
    """Several events, built with `|`, to attach one handler to all of them."""

    def __init__(self, events: list[EventEnum | FilteredEvent] | None = None) -> None:
        self.events: list[EventEnum | FilteredEvent] = list(events or [])

    def __or__(self, other: AnyEvent) -> EventsList:
        if isinstance(other, EventsList):
            return EventsList(self.events + other.events)
        if isinstance(other, (EventEnum, FilteredEvent)):
            return EventsList([*self.events, other])
        return NotImplemented

    def __iter__(self) -> Iterator[EventEnum | FilteredEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __str__(self) -> str:
        return " | ".join(str(e) for e in self.events)


AnyEvent = EventEnum | FilteredEvent | EventsList


class Events(EventEnum):
    """The Engine's built-in lifecycle events, fired in this order."""

    STARTED = "started"
    EPOCH_STARTED = "epoch_started"
    ITERATION_STARTED = "iteration_started"
    ITERATION_COMPLETED = "iteration_completed"
    EPOCH_COMPLETED = "epoch_completed"
    COMPLETED = "completed"
    EXCEPTION_RAISED = "exception_raised"
    TERMINATE = "terminate"

    @staticmethod
    def ITERATION_COMPLETED_EVERY(n: int) -> FilteredEvent:
        """Alias of `Events.ITERATION_COMPLETED(every=n)`."""
        return Events.ITERATION_COMPLETED(every=n)

    @staticmethod
    def EPOCH_COMPLETED_EVERY(n: int) -> FilteredEvent:
        """Alias of `Events.EPOCH_COMPLETED(every=n)`."""
        return Events.EPOCH_COMPLETED(every=n)


def flatten(event: Any) -> list[EventEnum | FilteredEvent]:
    """Return the single events named by an event, a filtered event or an events list."""
    if isinstance(event, EventsList):
        return list(event.events)
    if isinstance(event, (EventEnum, FilteredEvent)):
        return [event]
    raise TypeError(
        f"{event!r} is not an event: use a member of Events or of a registered EventEnum, "
        "optionally filtered (Events.X(every=N)) or or-ed (Events.A | Events.B)"
    )


def base_event(event: EventEnum | FilteredEvent) -> EventEnum:
    """Return the plain event behind a possibly filtered one."""
    return event.event if isinstance(event, FilteredEvent) else event
