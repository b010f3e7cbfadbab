"""Scalar step outputs and their coalescing window, for ITERATION_COMPLETED's `outputs`.

A step's scalar outputs are named as the message catalogue says: a plain number is "output",
a mapping contributes its scalar entries by key, and a tensor (or numpy array) with exactly
one element counts as a number. Everything else (predictions, targets, tuples) is left out.

Probes add values the step does not return (memory, a learning rate...) without editing the
job: each is called with the engine when an ITERATION_COMPLETED is published and its
{name: number} join the outputs as "probe/<name>", read then (not averaged over the window).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trainer.plugins import PluginError, import_path

# Outputs a probe contributes are named "probe/<name>": they never shadow the step's own.
PROBE_PREFIX = "probe/"

# fn(engine) -> {name: number}; a None value (or a None return) means "nothing to report now".
Probe = Callable[[Any], "Mapping[str, Any] | None"]


def scalar(value: Any) -> float | None:
    """`value` as a float if it is a single number (bools excluded), else None."""
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        return float(value)
    if kind is bool:
        return None
    # Tensors before the ABC test below: a step's loss is one, at every published step, and
    # isinstance against numbers.Real costs more than the rest of this function.
    numel = getattr(value, "numel", None)  # torch tensors
    if numel is not None and hasattr(value, "detach"):
        return float(value.item()) if numel() == 1 else None
    if isinstance(value, numbers.Real):  # numpy scalars and other Real types
        return float(value)
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


class Probes:
    """The probes of a run, read at each published ITERATION_COMPLETED into its outputs."""

    __slots__ = ("entries",)

    def __init__(self, entries: Sequence[tuple[str, Probe]]) -> None:
        self.entries = tuple(entries)

    @classmethod
    def load(cls, specs: Sequence[str | Probe], where: Callable[[int], str]) -> Probes | None:
        """The probes `specs` name ("package.module:function" or callables); None for none, so
        that publishing costs nothing more without probes. PluginError names a bad one and
        `where(index)` it came from."""
        if isinstance(specs, str):
            raise PluginError(f"probes must be a list, got the string {specs!r}")
        entries = []
        for index, spec in enumerate(specs):
            origin = where(index)
            if isinstance(spec, str):
                probe, name = import_path(spec, what="probe", where=origin), spec
            else:
                probe, name = spec, getattr(spec, "__qualname__", repr(spec))
            if not callable(probe):
                raise PluginError(
                    f"probe {name!r} ({origin}) is a {type(probe).__name__}, not a function: "
                    "name a function fn(engine) -> {name: number}"
                )
            entries.append((name, probe))
        return cls(entries) if entries else None

    def read(self, engine: Any) -> dict[str, float]:
        """Every probe's values now, named "probe/<name>"; TypeError names a probe that
        returns something other than a mapping of names to numbers."""
        found: dict[str, float] = {}
        for name, probe in self.entries:
            values = probe(engine)
            if values is None:
                continue
            if not isinstance(values, Mapping):
                raise TypeError(
                    f"probe {name} returned a {type(values).__name__}: return a mapping of "
                    "names to numbers, e.g. {'memory_mb': 812.0}"
                )
            for key, value in values.items():
                if value is None:
                    continue
                number = scalar(value)
                if number is None:
                    raise TypeError(
                        f"probe {name} returned {key!r}: {value!r}, which is not a number"
                    )
                found[PROBE_PREFIX + str(key)] = number
        return found
