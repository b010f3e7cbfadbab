"""Mergeable metric states: the reductions and the one merge rule every metric shares."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

Reduction = Literal["sum", "min", "max"]
REDUCTIONS: tuple[str, ...] = ("sum", "min", "max")

# One state entry is a plain number or a tensor; the aggregator sees nested lists instead.
StateValue = Any

# Exact types of the plain-number entries that take the fast paths (bool is left out on purpose).
_NUMBERS = (float, int)


def check_reduction(name: str, reduction: str) -> None:
    """Raise ValueError unless `reduction` is one of REDUCTIONS."""
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"state entry {name!r} declares reduction {reduction!r}; "
            f"known reductions are {', '.join(REDUCTIONS)}"
        )


def restore_value(name: str, value: Any, dtype: torch.dtype) -> StateValue:
    """Turn a state entry back into a number or a tensor of `dtype` (lists become tensors)."""
    kind = type(value)
    if kind is float or kind is int:
        # The usual entry, tested first by exact type: isinstance against torch.Tensor costs
        # more than the conversion. Same result as below (bool takes the general way).
        return float(value) if dtype.is_floating_point else int(value)
    if isinstance(value, torch.Tensor):
        return value.detach().to(device="cpu", dtype=dtype).clone()
    if isinstance(value, (int, float)):
        return float(value) if dtype.is_floating_point else int(value)
    if hasattr(value, "tolist"):  # numpy arrays and numpy scalars
        value = value.tolist()
        if not isinstance(value, list):
            return restore_value(name, value, dtype)
    if isinstance(value, (list, tuple)):
        try:
            return torch.tensor(value, dtype=dtype)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"state entry {name!r} is not a (nested) list of numbers: {exc}"
            ) from exc
    raise TypeError(
        f"state entry {name!r} must be a number, a tensor or a list of numbers, "
        f"got {type(value).__qualname__}"
    )


def combine(name: str, a: StateValue, b: StateValue, reduction: str) -> StateValue:
    """Reduce two values of one state entry (numbers, tensors, or one of each)."""
    if reduction == "sum" and type(a) in _NUMBERS and type(b) in _NUMBERS:
        return a + b  # two plain numbers, the usual case: no tensor checks needed
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape != b.shape:
        raise ValueError(
            f"cannot merge state entry {name!r}: shapes {tuple(a.shape)} and {tuple(b.shape)} "
            "differ (were the two states made by differently configured metrics?)"
        )
    if reduction == "sum":
        return a + b
    if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
        return min(a, b) if reduction == "min" else max(a, b)
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    if reduction == "min":
        return torch.minimum(ta, tb)
    if reduction == "max":
        return torch.maximum(ta, tb)
    check_reduction(name, reduction)
    raise AssertionError("unreachable")


def merge_states(
    a: Mapping[str, StateValue],
    b: Mapping[str, StateValue],
    reductions: Mapping[str, str],
) -> dict[str, StateValue]:
    """Return the state that reduces `a` and `b` entry by entry under `reductions`."""
    keys = reductions.keys()
    if a.keys() != keys or b.keys() != keys:
        _check_entries(a, b, reductions)
    return {name: combine(name, a[name], b[name], red) for name, red in reductions.items()}


def fold_numbers(
    a: Mapping[str, StateValue],
    states: Sequence[Any],
    start: int,
    reductions: Mapping[str, str],
    dtypes: Mapping[str, torch.dtype],
) -> tuple[Mapping[str, StateValue], int]:
    """Merge foreign states ``states[start:]`` into `a`, in order, while they are plain numbers.

    Returns the merged state and the index of the first state not merged (``len(states)`` when
    all were): one that is not a dict of exactly the declared entries, each a plain number, is
    left to `merge_states` (as is everything when an entry of `a` is no plain number). Each
    entry is reduced as ``combine(a, restore_value(b))`` would, state after state, in order:
    the same values, without a call per state and entry.
    """
    keys = reductions.keys()
    if start >= len(states) or a.keys() != keys:
        return a, start
    for name, red in reductions.items():
        if type(a[name]) not in _NUMBERS or red not in REDUCTIONS:
            return a, start
    # Optimistically all of them (what an aggregator merges is checked on arrival already) ...
    merged = _fold_columns(a, states[start:], reductions, dtypes)
    if merged is not None:
        return merged, len(states)
    # ... else those up to the first that is no dict of plain numbers.
    stop = start
    while stop < len(states):
        b = states[stop]
        if type(b) is not dict or b.keys() != keys or not all(type(b[k]) in _NUMBERS for k in keys):
            break
        stop += 1
    if stop == start:
        return a, start
    merged = _fold_columns(a, states[start:stop], reductions, dtypes)
    assert merged is not None  # every state of the run was checked just above
    return merged, stop


def _fold_columns(
    a: Mapping[str, StateValue],
    run: Sequence[Any],
    reductions: Mapping[str, str],
    dtypes: Mapping[str, torch.dtype],
) -> dict[str, StateValue] | None:
    """`a` with every state of `run` folded in, entry by entry; None if one of them is not a
    dict of exactly the declared entries, each a plain number."""
    size = len(reductions)
    for b in run:
        if type(b) is not dict or len(b) != size:
            return None
    merged: dict[str, StateValue] = {}
    for name, red in reductions.items():
        convert = float if dtypes[name].is_floating_point else int
        acc = a[name]
        for b in run:
            y = b.get(name)  # None when missing: no number, so refused below
            kind = type(y)
            if kind is not float and kind is not int:
                return None
            y = convert(y)
            acc = acc + y if red == "sum" else min(acc, y) if red == "min" else max(acc, y)
        merged[name] = acc
    return merged


def _check_entries(
    a: Mapping[str, StateValue], b: Mapping[str, StateValue], reductions: Mapping[str, str]
) -> None:
    """Raise KeyError naming the entries of `a` or `b` missing from or unknown to `reductions`."""
    for label, state in (("first", a), ("second", b)):
        missing = sorted(set(reductions) - set(state))
        extra = sorted(set(state) - set(reductions))
        if missing or extra:
            raise KeyError(
                f"the {label} state does not match the declared entries {sorted(reductions)}: "
                f"missing {missing}, unexpected {extra}"
            )
