"""Mergeable metric states: the reductions and the one merge rule every metric shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

Reduction = Literal["sum", "min", "max"]
REDUCTIONS: tuple[str, ...] = ("sum", "min", "max")

# One state entry is a plain number or a tensor; the aggregator sees nested lists instead.
StateValue = Any


def check_reduction(name: str, reduction: str) -> None:
    """Raise ValueError unless `reduction` is one of REDUCTIONS."""
    if reduction not in REDUCTIONS:
        raise ValueError(
            f"state entry {name!r} declares reduction {reduction!r}; "
            f"known reductions are {', '.join(REDUCTIONS)}"
        )


def restore_value(name: str, value: Any, dtype: torch.dtype) -> StateValue:
    """Turn a state entry back into a number or a tensor of `dtype` (lists become tensors)."""
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
    for label, state in (("first", a), ("second", b)):
        missing = sorted(set(reductions) - set(state))
        extra = sorted(set(state) - set(reductions))
        if missing or extra:
            raise KeyError(
                f"the {label} state does not match the declared entries {sorted(reductions)}: "
                f"missing {missing}, unexpected {extra}"
            )
    return {name: combine(name, a[name], b[name], red) for name, red in reductions.items()}
