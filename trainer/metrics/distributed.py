"""Distributed: a metric whose value covers every rank's data, reduced with torch.distributed.

For runs started with torchrun (or any initialised process group) and no bus: wrap a metric,
attach it as usual, and `state.metrics` on every rank holds the value one process would compute
over the whole data::

    evaluator.add_metric(Distributed(Accuracy()), "accuracy")

Each rank keeps its own (local) state; `compute()` all-reduces a copy of it entry by entry with
the entry's declared reduction (sum, min, max) and computes on that. `compute()` is a collective
call: every rank of the group must make it, as the Engine does at every EPOCH_COMPLETED when all
ranks run the same number of epochs.

Entries whose shape differs between ranks (per-class counts of a metric without `num_classes`
that saw different labels, a number on a rank that saw no tensor) are padded, as `merge` pads
them: with the reduction's identity (zeros for sums), numbers broadcast over tensors. A shape
that the metric's own `merge` refuses raises ValueError on every rank rather than hanging.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from trainer.metrics.base import Metric
from trainer.metrics.state import StateValue

if TYPE_CHECKING:
    from trainer.engine import Engine

_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}


def _active(group: Any) -> bool:
    """Whether collectives over `group` involve more than this process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _device(group: Any) -> torch.device:
    """Where the group's collectives take tensors: NCCL wants the rank's GPU, the rest CPU."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _wide_dtype(name: str, value: StateValue) -> torch.dtype:
    """int64 for integer and bool entries, float64 for floating ones."""
    if not isinstance(value, torch.Tensor):
        return torch.float64 if isinstance(value, float) else torch.int64
    dtype = value.dtype
    if dtype.is_complex:
        raise TypeError(f"Distributed: state entry {name!r} is complex, which it cannot reduce")
    return torch.float64 if dtype.is_floating_point else torch.int64


def _identity(reduction: str, dtype: torch.dtype) -> float | int:
    """The value that leaves `reduction` unchanged: what padded slots hold."""
    if reduction == "sum":
        return 0
    if dtype.is_floating_point:
        return float("inf") if reduction == "min" else float("-inf")
    info = torch.iinfo(dtype)
    return info.max if reduction == "min" else info.min


class _Collectives:
    """All-reduces of int64 vectors and of packed buffers over one group, on its device."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.device = _device(group)

    def all_reduce(self, values: torch.Tensor, op: str) -> torch.Tensor:
        """Reduce `values` across the group with op ("SUM", "MIN" or "MAX"); return it on CPU."""
        buffer = values.to(self.device)
        dist.all_reduce(buffer, op=getattr(dist.ReduceOp, op), group=self.group)
        return buffer.cpu()

    def max_ints(self, values: Iterable[int]) -> list[int]:
        """The elementwise maximum over the group of a list of ints."""
        ints = list(values)
        if not ints:
            return []
        return self.all_reduce(torch.tensor(ints, dtype=torch.int64), "MAX").tolist()


def reduce_state(
    state: Mapping[str, StateValue],
    reductions: Mapping[str, str],
    group: Any = None,
    check: Callable[[dict[str, StateValue]], None] | None = None,
) -> dict[str, StateValue]:
    """All-reduce a metric state across `group` with each entry's reduction (a collective call).

    `check(template)` may raise to refuse padding the local state to the group's shapes
    (`template` is the state of those shapes, all zeros); the refusal is raised on every rank.
    """
    names = list(reductions)
    values = {name: state[name] for name in names}
    ops = _Collectives(group)

    # Round 1: which entries are tensors somewhere, and of how many dims at most.
    meta = ops.max_ints(
        x
        for name in names
        for x in ((1, values[name].ndim) if isinstance(values[name], torch.Tensor) else (0, 0))
    )
    is_tensor = {name: bool(meta[2 * i]) for i, name in enumerate(names)}
    ndims = {name: meta[2 * i + 1] for i, name in enumerate(names)}

    # Round 2: the largest size along every dim (ranks of other dims contribute zeros).
    def local_dims(name: str) -> list[int]:
        value = values[name]
        if isinstance(value, torch.Tensor) and value.ndim == ndims[name]:
            return list(value.shape)
        return [0] * ndims[name]

    sizes = ops.max_ints(size for name in names for size in local_dims(name))
    shapes: dict[str, tuple[int, ...]] = {}
    at = 0
    for name in names:
        shapes[name] = tuple(sizes[at : at + ndims[name]])
        at += ndims[name]

    # The local state at the group's shapes; refused shapes are flagged, not raised, so that
    # every rank still takes part in the data round and learns of the refusal there.
    refusal: Exception | None = None
    flat: dict[str, torch.Tensor] = {}
    reshaped = False
    for name in names:
        value, shape, red = values[name], shapes[name], reductions[name]
        dtype = _wide_dtype(name, value)
        # Numbers straight to the wide dtype: as_tensor would round a float to float32 first.
        local = (
            value.to(dtype) if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=dtype)
        )
        if local.shape == shape:
            flat[name] = local.reshape(-1)
            continue
        reshaped = True
        full = torch.full(shape, _identity(red, dtype), dtype=dtype)
        if local.ndim == 0:
            full.fill_(local)  # a number broadcasts over the others' tensors, as merge does
        elif local.ndim == len(shape):
            full[tuple(slice(0, n) for n in local.shape)] = local
        else:
            refusal = ValueError(
                f"Distributed: state entry {name!r} has shape {tuple(local.shape)} here and "
                f"{shape} on another rank"
            )
        flat[name] = full.reshape(-1)
    if reshaped and refusal is None and check is not None:
        template = {
            name: torch.zeros(shapes[name], dtype=_wide_dtype(name, values[name]))
            if is_tensor[name]
            else 0
            for name in names
        }
        try:
            check(template)
        except Exception as exc:  # whatever it is, raising it now would leave the others waiting
            refusal = exc

    # Round 3: one buffer per (reduction, dtype); the int64 sums carry the refusal count.
    groups: dict[tuple[str, torch.dtype], list[str]] = {("sum", torch.int64): []}
    for name in names:
        key = (reductions[name], flat[name].dtype)
        groups.setdefault(key, []).append(name)
    refusals = 0
    reduced: dict[str, torch.Tensor] = {}
    for (red, dtype), members in groups.items():
        parts = [flat[name] for name in members]
        if red == "sum" and dtype == torch.int64:
            parts.append(torch.tensor([int(refusal is not None)], dtype=torch.int64))
        buffer = ops.all_reduce(torch.cat(parts), _OPS[red])
        if red == "sum" and dtype == torch.int64:
            refusals = int(buffer[-1])
        offset = 0
        for name in members:
            n = flat[name].numel()
            reduced[name] = buffer[offset : offset + n].reshape(shapes[name])
            offset += n
    if refusal is not None:
        raise refusal
    if refusals:
        raise ValueError(
            f"Distributed: {refusals} other rank(s) hold a state whose shapes cannot merge "
            "with this rank's (were the metrics configured alike on every rank?)"
        )
    return {name: reduced[name] if is_tensor[name] else reduced[name].item() for name in names}


class Distributed(Metric):
    """Wraps a metric so that `compute()` gives its value over the data of every rank.

    `update`, `reset` and the Engine's per-iteration hooks are the wrapped metric's (each rank
    counts its own batches); `compute()` all-reduces a copy of the state over `group` (default:
    the whole world) and leaves the local state as it was, so it can be called again. With no
    process group initialised, or a group of one, it is the wrapped metric exactly.
    `state_dict`, `merge` and `load_state_dict` act on the local state: merging the states of
    every rank elsewhere gives the same global value.
    """

    def __init__(self, metric: Metric, group: Any = None) -> None:
        if not isinstance(metric, Metric):
            raise TypeError(f"Distributed wraps a trainer.metrics.Metric, got {metric!r}")
        if isinstance(metric, Distributed):
            raise ValueError(f"{metric!r} is distributed already: wrapping it again double-counts")
        self.metric = metric
        self.group = group
        super().__init__(metric.output_transform)

    @property
    def output_transform(self) -> Callable[[Any], Any]:
        """The wrapped metric's output transform (one transform, wherever it is set)."""
        return self.metric.output_transform

    @output_transform.setter
    def output_transform(self, transform: Callable[[Any], Any]) -> None:
        self.metric.output_transform = transform

    # --- the metric proper: local updates, global value ----------------------------------

    def reset(self) -> None:
        """Forget everything this rank has seen."""
        self.metric.reset()

    def update(self, output: Any) -> None:
        """Fold one of this rank's batches into the local state."""
        self.metric.update(output)

    def compute(self) -> Any:
        """Return the wrapped metric's value over every rank's data (a collective call)."""
        return self.reduced().compute()

    def reduced(self) -> Metric:
        """A twin of the wrapped metric holding the state of every rank's data (a collective
        call); the wrapped metric itself when no other rank takes part."""
        if not _active(self.group):
            return self.metric
        reduced = reduce_state(
            self.metric.state_dict(), self.metric.reductions, self.group, self._check_merge
        )
        # A shallow twin takes the reduced state: the local one is left as it was.
        twin = copy.copy(self.metric)
        twin.load_state_dict(reduced)
        return twin

    def _check_merge(self, template: dict[str, StateValue]) -> None:
        """Raise as the wrapped metric's merge would, folding this rank's state into `template`."""
        probe = copy.copy(self.metric)
        probe.load_state_dict(template)
        probe.merge(self.metric.state_dict())

    # --- mergeable state: this rank's ------------------------------------------------------

    @property
    def reductions(self) -> dict[str, str]:
        """The wrapped metric's reductions, by entry name."""
        return self.metric.reductions

    def state_dict(self) -> dict[str, StateValue]:
        """This rank's (local, unreduced) state."""
        return self.metric.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace this rank's state."""
        self.metric.load_state_dict(state)

    def merge(self, other_state: Mapping[str, Any]) -> None:
        """Fold another state into this rank's."""
        self.metric.merge(other_state)

    def merge_all(self, states: Iterable[Mapping[str, Any]]) -> None:
        """Fold several states into this rank's, in order."""
        self.metric.merge_all(states)

    def settings(self) -> dict[str, Any] | None:
        """None: the wrapper does not travel; publish the wrapped `metric`'s state instead."""
        return None

    # --- Engine hooks: the wrapped metric's, but the value published is the global one -----

    def started(self, engine: Engine) -> None:
        """EPOCH_STARTED hook: the wrapped metric's (a reset, or not for RunningAverage)."""
        self.metric.started(engine)

    def iteration_completed(self, engine: Engine, name: str | None = None) -> None:
        """ITERATION_COMPLETED hook: the wrapped metric's, on this rank's output."""
        self.metric.iteration_completed(engine, name)

    def __repr__(self) -> str:
        return f"Distributed({self.metric!r})"
