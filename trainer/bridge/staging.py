"""Staging: a snapshot's large copies made on their own thread while the next step runs.

A checkpoint must hold the state of one iteration boundary, so copying it has been the part of
a checkpoint that training waits for (about 8 ms per 100 MB here). But between two optimizer
steps a module's parameters and an optimizer's state do not change: the forward and backward
passes of the next step read them and write only activations and gradients. `Stager` copies
them on its thread meanwhile, and an optimizer step pre-hook (registered for every optimizer,
since the one stepping a checkpointed model need not be checkpointed itself) makes the step
wait until the copy is done. Training waits only if the copy is slower than the time before
the next optimizer step, and that wait is counted as blocked time like the copy it replaces.

What is not caught: an in-place change outside an optimizer step before the copy is made.
Changes through tensor operations move the tensor's version counter, and the snapshot is then
reported as torn and not written (`copy_pending`); changes through `.data` move nothing. A
step function that edits parameters itself should take checkpoints with `overlap=False`.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

from trainer.bridge.snapshot import Pending, copy_pending


class Staging:
    """One snapshot's copies in flight: done when `copied` is set; `torn` names a change."""

    def __init__(self, pending: list[Pending], on_wait: Callable[[float], None]) -> None:
        self.pending = pending
        self.on_wait = on_wait  # called with the seconds training waited for this copy
        self.copied = threading.Event()
        self.torn: Pending | None = None
        self.error: BaseException | None = None


class Stager:
    """Makes snapshots' deferred copies on one thread; optimizer steps wait for them."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Staging | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._hook: RemovableHandle | None = None
        self._inflight: Staging | None = None

    def stage(self, pending: list[Pending], on_wait: Callable[[float], None]) -> Staging:
        """Start copying `pending`; the next optimizer step (or `settle`) waits for it."""
        staging = Staging(pending, on_wait)
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._copy_loop, name="checkpoint-stager", daemon=True
            )
            self._thread.start()
        if self._hook is None:
            self._hook = register_optimizer_step_pre_hook(self._before_step)
        self._inflight = staging
        self._queue.put(staging)
        return staging

    def settle(self) -> None:
        """Wait until the copy in flight, if any, is made (counted as that snapshot's wait)."""
        staging = self._inflight
        if staging is None:
            return
        if not staging.copied.is_set():
            started = time.perf_counter()
            staging.copied.wait()
            staging.on_wait(time.perf_counter() - started)
        # Unless a later stage() has replaced it meanwhile.
        if self._inflight is staging:
            self._inflight = None

    def close(self) -> None:
        """Make what is in flight, stop the thread and remove the optimizer hook."""
        self.settle()
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        # The whole cost for steps with no copy in flight: one attribute read.
        if self._inflight is not None:
            self.settle()

    def _copy_loop(self) -> None:
        while (staging := self._queue.get()) is not None:
            try:
                staging.torn = copy_pending(staging.pending)
            except BaseException as exc:  # reported with the checkpoint, never raised here
                staging.error = exc
            finally:
                staging.pending = [] if staging.torn is None else [staging.torn]
                staging.copied.set()
