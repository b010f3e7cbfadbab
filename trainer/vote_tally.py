"""The tally of early-stop votes: who counts as a voter, who is alive, and whether to stop.

Pure and torch-free, so that the trainer's bridge and any worker or tool share one rule:

- Voters register (`join`) and stay registered until they `leave`. A registered voter is *live*
  while its last sign of life is at most `heartbeat_timeout` seconds old; a dead or departed
  voter never holds a run.
- A voter's latest vote stands until it votes again (a vote is `stop` or continue).
- Only the latest votes of live voters are counted, under a policy: `"any"` (one stop vote),
  `"majority"` (more than half of the live voters: a tie continues), `"all"` (every live voter)
  or an int k (a quorum of k stop votes, whatever the number of live voters). With no live
  voter nothing stops.
- The voter whose stop vote tipped the tally is the k-th stop vote in arrival order, k being
  the number of stop votes the policy needs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

Policy = str | int
POLICIES = ("any", "majority", "all")


def parse_policy(policy: object, where: str = "policy") -> Policy:
    """Return `policy` checked: "any", "majority", "all" or a quorum k >= 1 (an int or digits)."""
    if isinstance(policy, str):
        if policy in POLICIES:
            return policy
        if policy.isdigit() and int(policy) >= 1:
            return int(policy)
    elif isinstance(policy, int) and not isinstance(policy, bool) and policy >= 1:
        return policy
    raise ValueError(
        f"{where} {policy!r} is not a voting policy: use 'any', 'majority', 'all' or a quorum "
        "of k stop votes (an int k >= 1)"
    )


def stop_votes_needed(policy: Policy, live: int) -> int:
    """How many stop votes among `live` live voters stop the run under `policy` (at least 1)."""
    if policy == "any":
        needed = 1
    elif policy == "majority":
        needed = live // 2 + 1
    elif policy == "all":
        needed = live
    else:
        needed = int(policy)
    # With no live voter "all" would need 0 votes; nothing must stop a run nobody voted on.
    return max(needed, 1)


@dataclass(frozen=True)
class Vote:
    """One voter's vote on an epoch; `seq` orders votes by arrival."""

    voter: str
    stop: bool
    reason: str
    epoch: int
    seq: int
    # The `source` of the envelope that carried the vote (the stop's `by`); None if unknown.
    source: str | None = None


@dataclass(frozen=True)
class Tally:
    """The outcome of counting votes: whether to stop, the counts, and who tipped it."""

    stop: bool
    stop_votes: int  # stop votes among the live voters
    live: int  # live voters counted
    needed: int  # stop votes the policy needs with this many live voters
    policy: Policy
    tipped_by: Vote | None  # the stop vote that reached `needed`, when `stop`

    def describe(self) -> str:
        """A one-line account, e.g. "2 of 3 live voters voted stop (policy majority needs 2)"."""
        return (
            f"{self.stop_votes} of {self.live} live voters voted stop "
            f"(policy {self.policy} needs {self.needed})"
        )


def tally(votes: Mapping[str, Vote], live: Collection[str], policy: Policy) -> Tally:
    """Count the latest `votes` (voter -> vote) of the `live` voters under `policy`."""
    stops = sorted((v for name, v in votes.items() if name in live and v.stop), key=_seq)
    needed = stop_votes_needed(policy, len(live))
    stop = len(stops) >= needed
    return Tally(
        stop=stop,
        stop_votes=len(stops),
        live=len(live),
        needed=needed,
        policy=policy,
        tipped_by=stops[needed - 1] if stop else None,
    )


def _seq(vote: Vote) -> int:
    return vote.seq


class VoterBook:
    """Registered voters, their last signs of life and latest votes; times are in seconds."""

    def __init__(self, heartbeat_timeout: float) -> None:
        if isinstance(heartbeat_timeout, bool) or not (
            isinstance(heartbeat_timeout, (int, float)) and heartbeat_timeout > 0
        ):
            raise ValueError(
                f"heartbeat_timeout must be a positive number of seconds, got {heartbeat_timeout!r}"
            )
        self.heartbeat_timeout = float(heartbeat_timeout)
        self._seen: dict[str, float] = {}  # registered voter -> last sign of life
        self._votes: dict[str, Vote] = {}
        self._seq = 0

    @property
    def registered(self) -> frozenset[str]:
        """Every registered voter, live or not."""
        return frozenset(self._seen)

    @property
    def votes(self) -> dict[str, Vote]:
        """The latest vote of every registered voter that has voted."""
        return dict(self._votes)

    def join(self, name: str, at: float) -> None:
        """Register `name` as a voter, alive at time `at` (a second join only refreshes it)."""
        self._seen[name] = max(at, self._seen.get(name, at))

    def leave(self, name: str) -> None:
        """Unregister `name`; its vote is forgotten (a later join starts it afresh)."""
        self._seen.pop(name, None)
        self._votes.pop(name, None)

    def seen(self, names: Iterable[str], at: float) -> None:
        """Record a sign of life at time `at` from those of `names` that are registered."""
        for name in names:
            last = self._seen.get(name)
            if last is not None and at > last:
                self._seen[name] = at

    def vote(
        self,
        voter: str,
        stop: bool,
        reason: str,
        epoch: int,
        at: float,
        source: str | None = None,
    ) -> Vote | None:
        """Record `voter`'s vote (replacing its previous one); None if it is not registered.

        `source` is the sender of the vote's envelope, which a stop it tips names as `by`.
        """
        if voter not in self._seen:
            return None
        self._seq += 1
        vote = Vote(voter, bool(stop), reason, int(epoch), self._seq, source)
        self._votes[voter] = vote
        self.seen((voter,), at)
        return vote

    def live(self, now: float) -> frozenset[str]:
        """The registered voters whose last sign of life is at most `heartbeat_timeout` old."""
        limit = now - self.heartbeat_timeout
        return frozenset(name for name, at in self._seen.items() if at >= limit)

    def missing_votes(self, epoch: int, now: float) -> list[str]:
        """The live voters with no vote on `epoch` or later, sorted by name."""
        return sorted(
            name
            for name in self.live(now)
            if (vote := self._votes.get(name)) is None or vote.epoch < epoch
        )

    def expires_at(self, name: str) -> float | None:
        """When `name` stops being live unless it shows a sign of life; None if unregistered."""
        at = self._seen.get(name)
        return None if at is None else at + self.heartbeat_timeout

    def tally(self, policy: Policy, now: float) -> Tally:
        """Count the latest votes of the voters live at `now` under `policy`."""
        return tally(self._votes, self.live(now), policy)
