"""Names of the streams a run uses; the only place that builds them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bus.errors import InvalidTopic

DEFAULT_NAMESPACE = "trainer"
# Always used with fullmatch: `$` would also match before a final newline.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,127}")
# Every topic name Topics builds; the group is the namespace.
_TOPIC = re.compile(
    rf"({_NAME.pattern}):(?:runs|deadletter|sweeps"
    rf"|run:{_NAME.pattern}:(?:events|control)|sweep:{_NAME.pattern}:(?:trials|events))"
)


def check_name(kind: str, value: str) -> str:
    """Return `value` if it is a valid run id or namespace, else raise InvalidTopic naming it."""
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise InvalidTopic(
            f"{kind} {value!r} is not usable in a topic name: use 1-128 letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return value


@dataclass(frozen=True)
class Topics:
    """The topics of one namespace: per-run events and control, the registry, the dead letters."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        check_name("namespace", self.namespace)

    def events(self, run_id: str) -> str:
        """Topic on which the trainer and the workers publish a run's lifecycle events."""
        return f"{self.namespace}:run:{check_name('run id', run_id)}:events"

    def control(self, run_id: str) -> str:
        """Topic on which workers send votes, terminate and checkpoint requests to the trainer."""
        return f"{self.namespace}:run:{check_name('run id', run_id)}:control"

    def registry(self) -> str:
        """Topic announcing runs as they start and end."""
        return f"{self.namespace}:runs"

    def dead_letter(self) -> str:
        """Topic holding entries that could not be decoded or handled, with the reason."""
        return f"{self.namespace}:deadletter"

    def sweeps(self) -> str:
        """Topic announcing sweeps as they start and end (the registry of sweeps)."""
        return f"{self.namespace}:sweeps"

    def trials(self, sweep_id: str) -> str:
        """A sweep's queue of trials, read by its agents through one consumer group."""
        return f"{self.namespace}:sweep:{check_name('sweep id', sweep_id)}:trials"

    def sweep_events(self, sweep_id: str) -> str:
        """Topic on which a sweep's agents say which trial they took and how it ended."""
        return f"{self.namespace}:sweep:{check_name('sweep id', sweep_id)}:events"


def topics_of(topic: str) -> Topics:
    """The Topics of the namespace that `topic` (a name Topics builds) belongs to."""
    found = _TOPIC.fullmatch(topic) if isinstance(topic, str) else None
    if found is None:
        raise InvalidTopic(
            f"topic {topic!r} is not a bus topic name, so its namespace is unknown: expected "
            "'<ns>:run:<run_id>:events', '<ns>:run:<run_id>:control', '<ns>:runs', "
            "'<ns>:deadletter', '<ns>:sweeps' or '<ns>:sweep:<sweep_id>:trials|events' "
            "(build names with bus.Topics)"
        )
    return Topics(found.group(1))
