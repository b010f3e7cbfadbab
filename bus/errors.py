"""Errors raised by the bus; each names what was wrong and where. This is the whole tree:

    BusError
    ├── DecodeError ......................... bytes on a topic that are not an envelope
    ├── EnvelopeTooLarge .................... an encoding over the maximum size
    ├── BusUnavailable ...................... the transport cannot be reached now (retry)
    ├── BusAuthError ........................ credentials or a permission refused
    ├── UnknownGroup ........................ a consumer group missing on its topic
    ├── InvalidTopic (ValueError) ........... a run id or namespace that cannot name a topic
    ├── InvalidURL (ValueError) ............. a bus URL that cannot be used
    ├── InvalidSignature .................... bus.signing: unsigned, or a wrong signature
    ├── PublisherClosed ..................... published after close
    ├── PublisherFailed ..................... a write refused for a reason retrying cannot fix
    ├── OutboxFull .......................... publish_nowait found the outbox full
    └── Rejected ............................ raised by a handler: dead-letter this envelope now

Not an error, so not in the tree: `bus.tail._Closed` only ends a tail's read when it is closed
from another thread; it never leaves `Tail`.

The trainer and the workers have their own roots (`trainer.errors.TrainerError`,
`workers.errors.WorkerError`): the bus imports nothing of theirs.
"""

from __future__ import annotations


class BusError(Exception):
    """Base class of every error raised by the bus package."""


class DecodeError(BusError):
    """Bytes read from a topic are not a valid envelope; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EnvelopeTooLarge(BusError):
    """An envelope's encoding exceeds the configured maximum size."""


class BusUnavailable(BusError):
    """The transport cannot be reached right now; the caller may retry."""


class InvalidTopic(BusError, ValueError):
    """A run id or namespace cannot be used to name a topic."""


class UnknownGroup(BusError):
    """A consumer group does not exist on a topic (never created, or lost with the server)."""


class BusAuthError(BusError):
    """The server refused the credentials, or the user lacks a permission the bus needs."""


class InvalidURL(BusError, ValueError):
    """A bus URL has an unsupported scheme or cannot be parsed."""


class PublisherClosed(BusError):
    """An envelope was published after the publisher was closed."""


class PublisherFailed(BusError):
    """The bus refused a write for a reason retrying cannot fix; the cause is attached."""


class OutboxFull(BusError):
    """`publish_nowait` found the outbox full; `await publish()` would have waited."""


class Rejected(BusError):
    """Raised by a consumer's handler for an envelope it can never handle: dead-letter it now.

    The message is the reason recorded in the dead letter; no retry is attempted.
    """
