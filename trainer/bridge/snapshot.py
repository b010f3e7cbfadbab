"""Snapshots: the state of `to_save` objects frozen in memory, so it can be written later.

Taken on the training thread between two steps; once taken, training may change the model,
optimizer and RNGs freely while a writer thread saves the copy. Tensors are detached and copied
to the CPU, containers are rebuilt, other mutable values deep-copied.

The copy is what the training thread waits for, and for large tensors most of it is the kernel
handing out fresh pages. `Snapshots` therefore copies into the CPU buffers of snapshots that
have already been written (`recycle`) when their shape and dtype match, which keeps one spare
copy of the state in memory between checkpoints.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Mapping
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


def frozen_copy(value: Any, spare: Buffers | None = None) -> Any:
    """A copy of `value` sharing no mutable part with it; tensors land on the CPU.

    Tensors are copied into a buffer of `spare` of the same shape and dtype when one is left.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach()
        buffers = spare.get((tuple(value.shape), value.dtype)) if spare else None
        if buffers:
            return buffers.pop().copy_(value)
        # `copy=True`: a CPU tensor must not share storage with the live parameter.
        return value.to("cpu", copy=True)
    if isinstance(value, _IMMUTABLE):
        return value
    if isinstance(value, OrderedDict):
        copied: Any = OrderedDict((key, frozen_copy(item, spare)) for key, item in value.items())
        # A module's state_dict carries version info that load_state_dict reads back.
        metadata = getattr(value, "_metadata", None)
        if metadata is not None:
            copied._metadata = copy.deepcopy(metadata)
        return copied
    if isinstance(value, dict):
        return {key: frozen_copy(item, spare) for key, item in value.items()}
    if isinstance(value, list):
        return [frozen_copy(item, spare) for item in value]
    if type(value) is tuple:
        return tuple(frozen_copy(item, spare) for item in value)
    return copy.deepcopy(value)


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
