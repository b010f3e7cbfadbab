"""Scalar step outputs and their coalescing window, for ITERATION_COMPLETED's `outputs`.

A step's scalar outputs are named as the message catalogue says: a plain number is "output",
a mapping contributes its scalar entries by key, and a tensor (or numpy array) with exactly
one element counts as a number. Everything else (predictions, targets, tuples) is left out.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any


def scalar(value: Any) -> float | None:
    """`value` as a float if it is a single number (bools excluded), else None."""
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        return float(value)
    if kind is bool:
        return None
    if isinstance(value, numbers.Real):  # numpy scalars and other Real types
        return float(value)
    numel = getattr(value, "numel", None)  # torch tensors
    if numel is not None:
        return float(value.detach()) if numel() == 1 else None
    if getattr(value, "size", None) == 1 and hasattr(value, "item"):  # numpy arrays
        return float(value.item())
    return None


def scalar_outputs(output: Any) -> dict[str, float]:
    """The scalar outputs of one step, by name."""
    kind = type(output)
    if kind is float or kind is int:
        return {"output": float(output)}
    if output is None:
        return {}
    # Exact-type tests first: this runs every iteration, and an ABC isinstance is slow.
    if kind is dict or isinstance(output, Mapping):
        found = {}
        for key, value in output.items():
            number = value if type(value) is float else scalar(value)
            if number is not None:
                found[key if type(key) is str else str(key)] = number
        return found
    number = scalar(output)
    return {} if number is None else {"output": number}


def _deferred(value: Any) -> Any:
    """A single-element tensor kept as a tensor, so its value is read (synced) only at a drain."""
    numel = getattr(value, "numel", None)
    if numel is not None and hasattr(value, "detach") and numel() == 1:
        return value.detach()
    return None


class OutputWindow:
    """The scalar outputs of the iterations since the last drain: their sums and counts.

    Tensors are kept as (detached) tensors until `drain`, so that coalescing N iterations costs
    one device sync instead of N.
    """

    __slots__ = ("count", "counts", "sums", "tensors")

    def __init__(self) -> None:
        self.count = 0
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.tensors: list[tuple[str, Any]] = []

    def add(self, output: Any) -> None:
        """Fold one step's output into the window."""
        self.count += 1
        kind = type(output)
        if kind is float or kind is int:
            self._add("output", output)
        elif output is None:
            return
        elif kind is dict or isinstance(output, Mapping):
            sums, counts = self.sums, self.counts
            for key, value in output.items():
                if type(value) is float and type(key) is str:  # the common case, inlined
                    sums[key] = sums.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
                else:
                    self._add_value(key if type(key) is str else str(key), value)
        else:
            self._add_value("output", output)

    def _add(self, name: str, number: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + number
        self.counts[name] = self.counts.get(name, 0) + 1

    def _add_value(self, name: str, value: Any) -> None:
        kind = type(value)
        if kind is float or kind is int:
            self._add(name, value)
            return
        tensor = _deferred(value)
        if tensor is not None:
            self.tensors.append((name, tensor))
            return
        number = scalar(value)
        if number is not None:
            self._add(name, number)

    def drain(self) -> tuple[dict[str, float], int]:
        """(mean of every scalar output over the window, iterations in it); then empty it."""
        for name, tensor in self.tensors:
            self._add(name, float(tensor))
        means = {name: total / self.counts[name] for name, total in self.sums.items()}
        count = self.count
        self.clear()
        return means, count

    def clear(self) -> None:
        """Forget the window's content."""
        self.count = 0
        self.sums = {}
        self.counts = {}
        self.tensors = []
