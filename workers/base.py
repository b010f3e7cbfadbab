"""Worker: the logic of one worker kind, as the runtime drives it for one run."""

from __future__ import annotations

import abc
import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from bus import Envelope
    from workers.context import RunContext


class WorkerStopping(Exception):
    """Raised by a kind that gave up waiting inside `handle` because the worker stops.

    The delivery is not acked: it stays pending for a replica (or this worker's next start) to
    handle whole. `RunContext.stopping` tells a kind when to raise it.
    """


class Worker(abc.ABC):
    """One worker kind's logic for ONE run; the runtime makes one instance per followed run.

    `handle` gets every envelope of the run's events topic in stream order, through the consumer
    group of the kind (replicas share the deliveries; a voter's group is its own, see
    `workers.runtime.consumer_group`). Raise `bus.Rejected` for an envelope that can never be
    handled (it is dead-lettered at once); any other exception makes the delivery retried later.
    A kind that waits inside `handle` also waits for `ctx.stopping` and raises WorkerStopping.
    """

    kind: ClassVar[str]
    # Voters register with WORKER_JOINED votes=True and must vote on EVERY epoch: in barrier
    # mode the trainer waits for each live voter's vote on each epoch.
    votes: ClassVar[bool] = False
    # The envelope types `handle` acts on (None: every type). The runtime acks the others
    # without decoding them or waking the kind; RUN_STARTED reaches every kind regardless.
    handles: ClassVar[frozenset[str] | None] = None

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the kind's options to `parser`; every default is None (= take it from the config)."""
        return None  # a kind without options

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Raise ValueError naming a kind option that can never work, before anything connects."""
        return None  # nothing to check

    def __init__(self, ctx: RunContext, options: Mapping[str, Any]) -> None:
        self.ctx = ctx
        self.options = dict(options)

    def handled_types(self) -> frozenset[str] | None:
        """The envelope types this instance acts on (`handles`, unless its options say more)."""
        return self.handles

    @abc.abstractmethod
    async def handle(self, env: Envelope) -> None:
        """Handle one envelope of the run's events topic."""

    async def close(self) -> None:
        """Release what the kind holds: the run finished (and was drained) or the worker stops."""
        return None  # side tasks (ctx.spawn) are cancelled by the runtime
