"""Sender: the trainer's envelopes, stamped with the primary engine's progress, onto the bus.

Every envelope the trainer sends carries the epoch and iteration of the primary engine (the
first one attached) at sending time, whichever engine the event is about. Publishing never
raises into training: a publisher that has failed or closed loses the envelope, says so in the
log (once) and counts it in `dropped`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bus import Envelope, PublisherClosed, PublisherFailed, ThreadedPublisher, Topics
from bus.envelope import new_envelope

if TYPE_CHECKING:
    from trainer.engine import Engine

log = logging.getLogger(__name__)


class Sender:
    """Builds and publishes the run's envelopes from any thread of the trainer process."""

    def __init__(
        self, publisher: ThreadedPublisher, topics: Topics, run_id: str, source: str
    ) -> None:
        self.publisher = publisher
        self.run_id = run_id
        self.source = source
        self.events_topic = topics.events(run_id)
        self.registry_topic = topics.registry()
        self.primary: Engine | None = None
        self.dropped = 0
        # Nothing reads this process's bus (a rank other than 0 without a shared bus): send
        # nothing rather than pile up envelopes in memory.
        self.muted = False
        # Whether a voter waits to judge each epoch's figures as soon as they exist (the run
        # has voters and no barrier, which would flush them anyway): BusRun says.
        self.voters_waiting: Callable[[], bool] = lambda: False

    def progress(self) -> tuple[int, int]:
        """The primary engine's (epoch, iteration) now; (0, 0) before one is attached."""
        primary = self.primary
        if primary is None:
            return 0, 0
        state = primary.state
        return state.epoch, state.iteration

    def envelope(
        self, type: str, data: dict[str, Any], at: tuple[int, int] | None = None
    ) -> Envelope:
        """An envelope of this run and source, stamped with `at` or the primary's progress."""
        epoch, iteration = self.progress() if at is None else at
        return Envelope(type, self.run_id, self.source, data, epoch, iteration)

    def send(self, type: str, data: dict[str, Any]) -> None:
        """Publish an event on the run's events topic (EnvelopeTooLarge is the caller's)."""
        if self.muted:
            return
        primary = self.primary
        # new_envelope, not Envelope(...): this runs at every published iteration.
        if primary is None:
            env = new_envelope(type, self.run_id, self.source, data)
        else:
            state = primary.state
            env = new_envelope(type, self.run_id, self.source, data, state.epoch, state.iteration)
        self.publish(self.events_topic, env)

    def send_later(self, type: str, data: dict[str, Any]) -> None:
        """`send`, with the envelope built and encoded by the publisher's writer, in a batch.

        For ITERATION_COMPLETED, sent at every step: its `data` (a split and scalar floats) is
        always small and native. Between two steps the caches are cold, and making an envelope
        there costs several times what it does among others of its kind.
        """
        if self.muted:
            return
        primary = self.primary
        epoch, iteration = (
            (0, 0) if primary is None else (primary.state.epoch, primary.state.iteration)
        )
        try:
            self.publisher.publish_later(
                self.events_topic, type, self.run_id, self.source, data, epoch, iteration
            )
        except (PublisherClosed, PublisherFailed) as exc:
            self._lost(type, exc)

    def epoch_ended(self) -> None:
        """Have an epoch's figures written now, not a linger later, if a voter waits for them."""
        if not self.muted and self.voters_waiting():
            self.publisher.hurry()

    def publish(self, topic: str, env: Envelope) -> None:
        """Queue `env` for `topic`; a failed or closed publisher drops it with a log line."""
        if self.muted:
            return
        try:
            self.publisher.publish(topic, env)
        except (PublisherClosed, PublisherFailed) as exc:
            self._lost(env.type, exc)

    def _lost(self, type: str, exc: BaseException) -> None:
        self.dropped += 1
        if self.dropped == 1:
            log.error(
                "run %s: the publisher cannot take envelopes any more (%s); %s and every "
                "later envelope of this run is lost (training goes on)",
                self.run_id,
                exc,
                type,
            )
