"""A worker kind of your own in one file: a probe that puts the trainer's memory on the bus, and
a voter that stops the run once it passes a limit.

Embedded (the trainer and its workers in one process), from the repository's root:

    trainer run examples/digits.yaml \\
        'bus.probes=[examples.workers.memory_guard:memory_mb]' \\
        'workers=[metrics,checkpoint,examples.workers.memory_guard:MemoryGuard]' \\
        extra.memory_guard.limit_mb=4096

Over Redis, the guard as a process of its own (the trainer configured with the probe):

    trainer worker examples.workers.memory_guard:MemoryGuard --bus redis://HOST:6379/0 \\
        --run ID --limit-mb 4096
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any, ClassVar

from bus import Envelope
from bus.messages import EPOCH_COMPLETED, ITERATION_COMPLETED
from workers.base import Setting, Worker

MB = 1024 * 1024


def _resident_mb() -> float:
    """This process's resident memory now (its peak where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB (bytes on macOS)
        return peak / (MB if sys.platform == "darwin" else 1024)


def memory_mb(engine: Any) -> dict[str, float]:
    """The probe: resident memory in MB, and CUDA's peak allocation when CUDA is in use."""
    values = {"memory_mb": _resident_mb()}
    torch = sys.modules.get("torch")  # the trainer's; a probe must not import it itself
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        values["cuda_max_mb"] = torch.cuda.max_memory_allocated() / MB
    return values


class MemoryGuard(Worker):
    """Vote stop once a published output (the memory_mb probe's) passes --limit-mb."""

    kind: ClassVar[str] = "memory-guard"
    votes: ClassVar[bool] = True
    # What it reads: the runtime acks every other type unread.
    handles: ClassVar[frozenset[str] | None] = frozenset({ITERATION_COMPLETED, EPOCH_COMPLETED})
    SETTINGS = (
        Setting(
            "limit_mb",
            float,
            help="stop once the output passes this many MB",
            config="extra.memory_guard.limit_mb",
            gt=0,
        ),
        Setting(
            "key",
            str,
            default="probe/memory_mb",
            help="the ITERATION_COMPLETED output watched",
            config="extra.memory_guard.key",
        ),
    )

    async def handle(self, env: Envelope) -> None:
        """Check every published iteration; vote on every epoch."""
        limit, key = self.setting("limit_mb"), self.setting("key")
        if env.type == ITERATION_COMPLETED and limit is not None and self.stopped is None:
            value = env.data.get("outputs", {}).get(key)
            if isinstance(value, (int, float)) and value > limit:
                reason = f"{key} {value:.0f} MB passed the limit of {limit:g} MB"
                await self.vote_stop(f"{reason} at iteration {env.iteration}", env)
        await self.vote_epoch(env, f"{key} within {limit:g} MB" if limit else "no limit set")
