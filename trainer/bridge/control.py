"""Control: what the run's control topic says, and the reader that keeps it up to date.

`ControlReader` tails the control topic from its beginning on the publisher's event loop (never
on the training thread) and feeds each envelope to `ControlState`:

- registrations apply from the whole history: WORKER_JOINED (`votes: true` makes a voter),
  WORKER_LEFT, and signs of life (HEARTBEAT, and any envelope naming a registered voter);
- commands (TERMINATE, VOTE, CHECKPOINT_REQUEST) sent before this trainer started are stale
  history and are ignored;
- with a secret, unsigned or forged envelopes are ignored; envelopes of the wrong run too;
  every ignored envelope is logged and kept in `ControlState.ignored`;
- entries that do not decode, and control envelopes whose data breaks the message catalogue,
  are dead-lettered; the reader carries on.

The training thread reads `pending` (one attribute) at every iteration boundary and acts only
when it is set: a stop was decided, or a checkpoint was requested. Without barrier mode the
reader tallies votes as they arrive (and as voters go silent); in barrier mode votes are
tallied only at barriers (`trainer.bridge.barrier`), and TERMINATE still applies at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from bus import (
    BEGINNING,
    Bus,
    BusError,
    DecodeError,
    Entry,
    Envelope,
    Rejected,
    Tail,
    Verifier,
    dead_letter_envelope,
    decode,
    encode,
)
from bus.messages import (
    CHECKPOINT_REQUEST,
    CONTROL,
    REQUIRED,
    TERMINATE,
    VOTE,
    WORKER_JOINED,
    WORKER_LEFT,
    check_data,
)
from trainer.vote_tally import Policy, Tally, VoterBook

log = logging.getLogger(__name__)

# Commands act on the trainer that reads them; those sent before it started were meant for an
# earlier trainer of the run (or nobody) and are not replayed.
COMMANDS = frozenset({TERMINATE, VOTE, CHECKPOINT_REQUEST})

# How many ignored envelopes `ControlState.ignored` remembers.
_IGNORED_KEPT = 1000


@dataclass(frozen=True)
class StopCause:
    """Why the run must stop: the signal, its reason and the source it came from."""

    # "TERMINATE" or "VOTE"; with several ranks also "PROGRAM" (a rank's own terminate())
    signal: str
    reason: str
    by: str | None  # the `source` of the envelope that decided the stop
    tally: Tally | None = None  # the tally behind a vote stop
    voter: str | None = None  # the `voter` name of the VOTE that tipped a vote stop


@dataclass(frozen=True)
class Ignored:
    """A control envelope or entry the trainer did not act on, and why."""

    entry_id: str
    type: str
    source: str
    why: str


def signs_of_life(env: Envelope) -> set[str]:
    """The worker names an envelope shows to be alive: its source and any name it carries."""
    names = {env.source}
    for key in ("name", "voter"):
        value = env.data.get(key)
        if isinstance(value, str):
            names.add(value)
    return names


class ControlState:
    """Registrations, votes and decisions from the control topic, shared across two threads.

    The reader thread writes under `lock`; the training thread reads `pending` without it (a
    single attribute read) and everything else under it. `lock` is a Condition notified on
    every change, which is what barriers wait on.
    """

    def __init__(
        self,
        run_id: str,
        *,
        policy: Policy,
        barrier: bool,
        heartbeat_timeout: float,
        verifier: Verifier,
        can_checkpoint: Callable[[], bool],
    ) -> None:
        self.run_id = run_id
        self.policy = policy
        self.barrier = barrier
        self.verifier = verifier
        self.book = VoterBook(heartbeat_timeout)
        self.lock = threading.Condition()
        self.started_at = time.time()  # reset by BusRun.start()
        self.pending = False
        self.stop: StopCause | None = None
        self.last_id: str | None = None  # the last control entry handled
        self.processed = 0
        self.ignored: deque[Ignored] = deque(maxlen=_IGNORED_KEPT)
        self._can_checkpoint = can_checkpoint
        self._checkpoint_request: tuple[str, str] | None = None

    # ---- the reader's side ------------------------------------------------------------------

    def apply(self, entry_id: str, env: Envelope, now: float) -> None:
        """Act on one control envelope; raise bus.Rejected if its data is malformed."""
        with self.lock:
            try:
                self._apply(entry_id, env, now)
            except Rejected as exc:
                self.ignored.append(Ignored(entry_id, env.type, env.source, f"malformed: {exc}"))
                raise
            finally:
                self.last_id = entry_id
                self.processed += 1
                self.lock.notify_all()

    def undecodable(self, entry_id: str, why: str) -> None:
        """Record an entry that is not an envelope (it was dead-lettered)."""
        with self.lock:
            self.ignored.append(Ignored(entry_id, "?", "?", why))
            self.last_id = entry_id
            self.processed += 1
            self.lock.notify_all()

    def tick(self, now: float) -> None:
        """Re-tally as time passes: a silent voter stops counting (outside barrier mode)."""
        with self.lock:
            self._retally(now)

    def _ignore(self, entry_id: str, env: Envelope, why: str, level: int = logging.WARNING) -> None:
        self.ignored.append(Ignored(entry_id, env.type, env.source, why))
        log.log(
            level,
            "run %s: control %s %s from %r ignored: %s",
            self.run_id,
            env.type,
            env.id,
            env.source,
            why,
        )

    def _apply(self, entry_id: str, env: Envelope, now: float) -> None:
        if env.run_id != self.run_id:
            self._ignore(entry_id, env, f"it is addressed to run {env.run_id!r}")
            return
        problem = self.verifier.problem(env)
        if problem is not None:
            self._ignore(entry_id, env, f"{problem} and a signing secret is configured")
            return
        if env.type not in REQUIRED[CONTROL]:
            log.debug("run %s: control type %s is not for the trainer", self.run_id, env.type)
            return
        check_data(env.type, env.data, topic=CONTROL)
        # A sender's clock ahead of ours must not make a voter live for longer than it is.
        at = min(env.ts, now)
        self.book.seen(signs_of_life(env), at)
        if env.type in COMMANDS and env.ts < self.started_at:
            self._ignore(entry_id, env, "stale: sent before this trainer started", logging.INFO)
            return
        data = env.data
        if env.type == WORKER_JOINED:
            if data["votes"]:
                self.book.join(data["name"], at)
                log.info("run %s: voter %r joined", self.run_id, data["name"])
            else:
                self.book.leave(data["name"])  # a non-voter of that name never holds the run
        elif env.type == WORKER_LEFT:
            if data["name"] in self.book.registered:
                log.info("run %s: voter %r left", self.run_id, data["name"])
            self.book.leave(data["name"])
        elif env.type == VOTE:
            vote = self.book.vote(
                data["voter"], data["stop"], data["reason"], data["epoch"], at, source=env.source
            )
            if vote is None:
                self._ignore(entry_id, env, f"{data['voter']!r} is not a registered voter")
                return
        elif env.type == TERMINATE:
            self._decide(StopCause(TERMINATE, data["reason"], env.source))
        elif env.type == CHECKPOINT_REQUEST:
            if not self._can_checkpoint():
                self._ignore(entry_id, env, "this run takes no checkpoints (no checkpoint())")
                return
            self._checkpoint_request = (data["reason"], env.source)
            self.pending = True
        self._retally(now)

    def _retally(self, now: float) -> None:
        if self.barrier or self.stop is not None or not self.book.registered:
            return
        result = self.book.tally(self.policy, now)
        if result.stop:
            self.decide_by_tally(result)

    def _decide(self, cause: StopCause) -> None:
        if self.stop is None:
            self.stop = cause
            log.info(
                "run %s: stop decided by %s from %r: %s",
                self.run_id,
                cause.signal,
                cause.by,
                cause.reason,
            )
        self.pending = True

    # ---- the training thread's side ---------------------------------------------------------

    def decide_by_tally(self, result: Tally) -> StopCause | None:
        """Stop on a tally that says so (unless a stop is already decided); the standing cause."""
        with self.lock:
            if result.stop and result.tipped_by is not None:
                vote = result.tipped_by
                # `by` is the deciding envelope's source (DESIGN 4.1); the name is kept apart.
                by = vote.source if vote.source is not None else vote.voter
                self._decide(StopCause(VOTE, vote.reason, by, result, voter=vote.voter))
            return self.stop

    def take_checkpoint_request(self) -> tuple[str, str] | None:
        """The pending checkpoint request as (reason, requester), now cleared; or None."""
        with self.lock:
            request, self._checkpoint_request = self._checkpoint_request, None
            return request


class ControlReader:
    """Tails the control topic into a ControlState; runs as a task on the publisher's loop.

    The reading (catch-up, follow, retry) is `bus.Tail`'s; the reader decodes each entry itself
    so that one that is not an envelope, or breaks the catalogue, can be dead-lettered.
    """

    def __init__(
        self,
        state: ControlState,
        *,
        topic: str,
        dead_letter_topic: str,
        source: str,
        block: float = 0.25,
        batch: int = 100,
        retry_delay: float = 0.5,
    ) -> None:
        self.state = state
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.source = source
        self.block = block
        self.batch = batch
        self.retry_delay = retry_delay
        self.caught_up = threading.Event()  # set once the history as of the start is applied
        self._stopping = False
        self._tails: list[Tail] = []

    def stop(self) -> None:
        """Ask the reader to end after its current read (at most `block` seconds)."""
        self._stopping = True
        for tail in self._tails:
            tail.close()

    def _tail(self, bus: Bus, start: str, follow: bool) -> Tail:
        tail = Tail(
            bus,
            self.topic,
            start,
            follow=follow,
            batch=self.batch,
            block=self.block,
            retry_delay=self.retry_delay,
            # Never let the reader die of a failed read: without it no stop would ever arrive.
            retry_on=(Exception,),
        )
        self._tails.append(tail)
        if self._stopping:  # stop() came before this tail existed
            tail.close()
        return tail

    async def run(self, bus: Bus) -> None:
        """Read the topic from its beginning until stopped, applying every entry."""
        # The history as of now, at full speed (nothing is worth waiting for), then the rest.
        history = self._tail(bus, BEGINNING, follow=False)
        async for entry in history.entries():
            await self._handle(bus, entry)
        if self._stopping:
            return
        self.caught_up.set()
        live = self._tail(bus, history.last_id or BEGINNING, follow=True)
        ticker = asyncio.ensure_future(self._tick())
        try:
            async for entry in live.entries():
                await self._handle(bus, entry)
        finally:
            ticker.cancel()

    async def _tick(self) -> None:
        """Re-tally as time passes, as often as a live read waits: silent voters stop counting."""
        while True:
            await asyncio.sleep(self.block)
            self.state.tick(time.time())

    async def _handle(self, bus: Bus, entry: Entry) -> None:
        try:
            env = decode(entry.payload)
        except DecodeError as exc:
            reason = f"undecodable: {exc.reason}"
            await self._dead_letter(bus, entry, reason, None)
            self.state.undecodable(entry.id, reason)
            return
        try:
            self.state.apply(entry.id, env, time.time())
        except Rejected as exc:
            await self._dead_letter(bus, entry, f"rejected by the trainer: {exc}", env)
        except Exception as exc:  # a bug here must cost one envelope, not the reader
            log.exception("control entry %s of %s could not be applied", entry.id, self.topic)
            await self._dead_letter(bus, entry, f"the trainer failed to apply it: {exc!r}", env)

    async def _dead_letter(self, bus: Bus, entry: Entry, reason: str, env: Envelope | None) -> None:
        log.warning("control entry %s of %s dead-lettered: %s", entry.id, self.topic, reason)
        # As every consumer's (docs/protocol.md 5.4): an undecodable entry's letter names no run
        # (run_id ""); its data.topic says which run's control topic it came from.
        letter = dead_letter_envelope(
            entry,
            reason=reason,
            topic=self.topic,
            group="trainer",
            source=self.source,
            original=env,
        )
        try:
            await bus.append(self.dead_letter_topic, [encode(letter)])
        except BusError as exc:
            log.error("dead letter for control entry %s could not be written: %s", entry.id, exc)
