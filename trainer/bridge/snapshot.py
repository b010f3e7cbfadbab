"""Snapshots: the state of `to_save` objects frozen in memory, so it can be written later.

Taken on the training thread between two steps; once taken, training may change the model,
optimizer and RNGs freely while a writer thread saves the copy. Tensors are detached and copied
to the CPU, containers are rebuilt, other mutable values deep-copied.

The copy is what the training thread waits for, and for large tensors most of it is the kernel
handing out fresh pages. `Snapshots` therefore copies into the CPU buffers of snapshots that
have already been written (`recycle`) when their shape and dtype match, which keeps one spare
copy of the state in memory between checkpoints.

`Snapshots.take_overlapped` leaves the bulk of the copy to another thread: a module's
parameters and an optimizer's state change only when an optimizer steps, so their copies are
`Pending` (a buffer to fill, the tensor to fill it from) and `copy_pending` makes them while
training goes on (trainer.bridge.staging waits for it before the next optimizer step). Each
tensor's version counter is noted when the snapshot is taken; a tensor changed in place
before its copy was made is reported, not written.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from trainer.checkpoint_store import check_stateful

_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)
BufferKey = tuple[tuple[int, ...], torch.dtype]
Buffers = dict[BufferKey, list[torch.Tensor]]


def snapshot(to_save: Mapping[str, Any]) -> dict[str, Any]:
    """`{name: copy of obj.state_dict()}` that later training cannot change."""
    check_stateful(to_save, "state_dict")
    return {name: frozen_copy(obj.state_dict()) for name, obj in to_save.items()}


@dataclass(slots=True)
class Pending:
    """One tensor copy of a snapshot left for later: `target` is filled from `source`."""

    target: torch.Tensor
    source: torch.Tensor
    version: int  # the source's version counter when the snapshot was taken
    owner: str  # the `to_save` name it belongs to, for the message if it changes meanwhile


class Deferral:
    """Which tensors of one `to_save` object may be copied later, and the list they go to."""

    def __init__(self, owner: str, pending: list[Pending], keep: Callable[[torch.Tensor], bool]):
        self.owner, self.pending, self.keep = owner, pending, keep


def frozen_copy(value: Any, spare: Buffers | None = None, defer: Deferral | None = None) -> Any:
    """A copy of `value` sharing no mutable part with it; tensors land on the CPU.

    Tensors are copied into a buffer of `spare` of the same shape and dtype when one is left.
    With `defer`, the tensors it keeps get their buffer now and their copy in `defer.pending`.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach()
        buffers = spare.get((tuple(value.shape), value.dtype)) if spare else None
        if defer is not None and defer.keep(value):
            target = buffers.pop() if buffers else torch.empty_like(value, device="cpu")
            defer.pending.append(Pending(target, value, value._version, defer.owner))
            return target
        if buffers:
            return buffers.pop().copy_(value)
        # `copy=True`: a CPU tensor must not share storage with the live parameter.
        return value.to("cpu", copy=True)
    if isinstance(value, _IMMUTABLE):
        return value
    if isinstance(value, OrderedDict):
        copied: Any = OrderedDict(
            (key, frozen_copy(item, spare, defer)) for key, item in value.items()
        )
        # A module's state_dict carries version info that load_state_dict reads back.
        metadata = getattr(value, "_metadata", None)
        if metadata is not None:
            copied._metadata = copy.deepcopy(metadata)
        return copied
    if isinstance(value, dict):
        return {key: frozen_copy(item, spare, defer) for key, item in value.items()}
    if isinstance(value, list):
        return [frozen_copy(item, spare, defer) for item in value]
    if type(value) is tuple:
        return tuple(frozen_copy(item, spare, defer) for item in value)
    return copy.deepcopy(value)


def _deferred_copy(name: str, obj: Any, spare: Buffers, pending: list[Pending]) -> Any:
    """`frozen_copy(obj.state_dict())`, leaving the tensors only an optimizer step changes
    (a module's parameters, an optimizer's per-parameter state) to `pending`."""
    state = obj.state_dict()
    if isinstance(obj, torch.nn.Module):
        # Buffers (batch-norm statistics) change in forward passes: copied now.
        params = {p.data_ptr() for p in obj.parameters() if p.numel()}
        return frozen_copy(state, spare, Deferral(name, pending, lambda t: t.data_ptr() in params))
    if isinstance(obj, torch.optim.Optimizer) and isinstance(state, dict) and "state" in state:
        # `param_groups` may hold tensors a scheduler sets in place (a tensor lr): copied now.
        copied = {key: frozen_copy(item, spare) for key, item in state.items() if key != "state"}
        defer = Deferral(name, pending, lambda t: True)
        copied["state"] = frozen_copy(state["state"], spare, defer)
        return {key: copied[key] for key in state}  # the state_dict's own key order
    return frozen_copy(state, spare)


def copy_pending(pending: list[Pending]) -> Pending | None:
    """Make the copies left for later; the first whose source changed meanwhile, if any."""
    for copy_ in pending:
        copy_.target.copy_(copy_.source)
    # Checked after every copy is made: a change during a copy shows too.
    return next((p for p in pending if p.source._version != p.version), None)


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor inside nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for item in value.values() for t in _tensors(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


class Snapshots:
    """Takes snapshots, reusing the buffers of snapshots handed back with `recycle`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spare: Buffers = {}

    def take(self, to_save: Mapping[str, Any]) -> dict[str, Any]:
        """`{name: copy of obj.state_dict()}` that later training cannot change."""
        check_stateful(to_save, "state_dict")
        with self._lock:
            spare, self._spare = self._spare, {}
        return {name: frozen_copy(obj.state_dict(), spare) for name, obj in to_save.items()}

    def take_overlapped(self, to_save: Mapping[str, Any]) -> tuple[dict[str, Any], list[Pending]]:
        """`take`, with the copies an optimizer step would change left to `copy_pending`."""
        check_stateful(to_save, "state_dict")
        with self._lock:
            spare, self._spare = self._spare, {}
        pending: list[Pending] = []
        state = {name: _deferred_copy(name, obj, spare, pending) for name, obj in to_save.items()}
        return state, pending

    def recycle(self, state: Any) -> None:
        """Offer the CPU tensors of a snapshot nobody reads any more to the next `take`."""
        spare: Buffers = {}
        for tensor in _tensors(state):
            # Only plain, dense CPU buffers that own their storage can be overwritten safely.
            if (
                tensor.device.type == "cpu"
                and tensor.is_contiguous()
                and tensor.storage_offset() == 0
            ):
                spare.setdefault((tuple(tensor.shape), tensor.dtype), []).append(tensor)
        with self._lock:
            # One spare set is enough: snapshots are taken one at a time.
            self._spare = spare
