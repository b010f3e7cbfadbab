"""EpochVotes: one vote per epoch from a voter whose stop, once voted, stands."""

from __future__ import annotations

from workers.context import RunContext


class EpochVotes:
    """The votes of a guard (nan-guard, budget): stop as soon as it trips, else continue per epoch.

    A guard that tripped stays tripped: it votes stop again on every later epoch, so that a
    trainer tallying under `majority`/`all` (which may go on) still gets its vote on each epoch.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.stopped: str | None = None  # the reason of the stop vote, once voted
        self._voted: set[int] = set()

    def has_voted(self, epoch: int) -> bool:
        """True once this voter voted on `epoch` (since the run last started)."""
        return epoch in self._voted

    def restart(self) -> None:
        """The run started again (a resume): its epochs trained again get votes again (a stop
        this voter voted stands)."""
        self._voted.clear()

    async def stop(self, reason: str, epoch: int, iteration: int = 0) -> None:
        """Vote stop on `epoch`, unless this voter already voted stop."""
        if self.stopped is not None:
            return
        await self.ctx.vote(True, reason, epoch, iteration)
        self.stopped = reason
        self._voted.add(epoch)

    async def epoch_end(self, epoch: int, reason: str, iteration: int = 0) -> None:
        """Vote on `epoch` as it ends: continue with `reason`, or the standing stop; once each."""
        if epoch in self._voted:
            return
        if self.stopped is not None:
            await self.ctx.vote(True, self.stopped, epoch, iteration)
        else:
            await self.ctx.vote(False, reason, epoch, iteration)
        self._voted.add(epoch)
