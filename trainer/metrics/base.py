"""The Metric base class: a mergeable state, update/compute, and the Engine hooks."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from trainer.errors import TrainerError
from trainer.metrics.state import (
    StateValue,
    check_reduction,
    fold_numbers,
    merge_states,
    restore_value,
)
from trainer.metrics.transforms import default_output_transform

if TYPE_CHECKING:  # only for hints: metrics must not depend on the Engine at run time
    from trainer.engine import Engine


# Numbers are immutable: deepcopy would return them as they are, at a call's cost.
_IMMUTABLE = (float, int, bool)


def _fresh(value: StateValue) -> StateValue:
    """A copy of a state entry's default that the state may change in place."""
    return value if type(value) in _IMMUTABLE else copy.deepcopy(value)


class NotComputableError(TrainerError, RuntimeError):
    """Raised by `compute()` when the metric has not seen enough data to have a value."""


class Metric(ABC):
    """A metric whose state is a dict of numbers or tensors, each with a declared reduction.

    Subclasses declare their state in `__init__` with `add_state`, fold one batch into
    `self._state` in `update` and turn the state into a value in `compute`. Because the state is
    all there is, `state_dict`/`merge`/`load_state_dict` work for every metric: the same code runs
    in the Engine, across ranks and in the metrics aggregator.
    """

    def __init__(self, output_transform: Callable[[Any], Any] = default_output_transform) -> None:
        self.output_transform = output_transform
        self._state: dict[str, StateValue] = {}
        self._defaults: dict[str, StateValue] = {}
        self._reductions: dict[str, str] = {}
        self._dtypes: dict[str, torch.dtype] = {}

    # --- state declaration -------------------------------------------------------------------

    def add_state(
        self,
        name: str,
        default: StateValue,
        reduction: str = "sum",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        """Declare a state entry with its value after `reset`, its reduction and its dtype."""
        check_reduction(name, reduction)
        if name in self._reductions:
            raise ValueError(f"{type(self).__name__}: state entry {name!r} is declared twice")
        self._reductions[name] = reduction
        self._dtypes[name] = dtype
        self._defaults[name] = restore_value(name, default, dtype)
        self._state[name] = _fresh(self._defaults[name])

    @property
    def reductions(self) -> dict[str, str]:
        """The reduction ("sum", "min" or "max") of every state entry, by entry name."""
        return dict(self._reductions)

    # --- the metric proper -------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._state = {name: _fresh(value) for name, value in self._defaults.items()}

    @abstractmethod
    def update(self, output: Any) -> None:
        """Fold one batch (the output after `output_transform`) into the state."""

    @abstractmethod
    def compute(self) -> Any:
        """Return the metric's value for everything seen since the last reset."""

    # --- identity: what another process needs to rebuild a mergeable twin -------------------

    def settings(self) -> dict[str, Any] | None:
        """The msgpack-native constructor kwargs that matter to merge/compute (None: cannot travel).

        Callables (output transforms, loss functions, source metrics) never belong here: the
        aggregator only merges and computes. A metric whose rebuilt twin would not compute the
        same value from the same state returns None, and stays out of published metric states.
        """
        return {}

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Metric:
        """Build an instance whose merge/compute match those of the metric `settings` came from."""
        return cls(**settings)

    # --- mergeable state ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, StateValue]:
        """Return a copy of the state as plain numbers and CPU tensors."""
        return {name: restore_value(name, v, self._dtypes[name]) for name, v in self._state.items()}

    def _restore(self, state: Mapping[str, Any]) -> dict[str, StateValue]:
        """Check the entries of a foreign state and convert lists back to tensors."""
        if type(state) is not dict or state.keys() != self._reductions.keys():
            self._check_entries(state)
        dtypes = self._dtypes
        return {name: restore_value(name, state[name], dtypes[name]) for name in self._reductions}

    def _check_entries(self, state: Mapping[str, Any]) -> None:
        """Raise KeyError naming the entries of `state` missing or not declared, if any."""
        missing = sorted(set(self._reductions) - set(state))
        extra = sorted(set(state) - set(self._reductions))
        if missing or extra:
            raise KeyError(
                f"{type(self).__name__}: state does not match the declared entries "
                f"{sorted(self._reductions)}: missing {missing}, unexpected {extra}"
            )

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the state by `state` (numbers, tensors, or lists where tensors were)."""
        self._state = self._restore(state)

    def merge(self, other_state: Mapping[str, Any]) -> None:
        """Fold another instance's state (e.g. another rank's) into this one."""
        if type(self)._restore is Metric._restore:
            # Plain-number states (Loss, Accuracy...) in one pass; a subclass with a _restore
            # of its own takes the general way, which calls it.
            self._state, done = fold_numbers(
                self._state, (other_state,), 0, self._reductions, self._dtypes
            )
            if done:
                return
        self._state = merge_states(self._state, self._restore(other_state), self._reductions)

    def merge_all(self, states: Iterable[Mapping[str, Any]]) -> None:
        """Fold several states into this one, in order: the same as `merge` on each in turn."""
        cls = type(self)
        if cls.merge is not Metric.merge or cls._restore is not Metric._restore:
            for state in states:  # a class merging its own way does so for each
                self.merge(state)
            return
        todo = states if isinstance(states, list) else list(states)
        i = 0
        while i < len(todo):
            self._state, i = fold_numbers(self._state, todo, i, self._reductions, self._dtypes)
            if i < len(todo):
                # One the fast path leaves (tensors, lists, a wrong entry): the general way.
                self._state = merge_states(self._state, self._restore(todo[i]), self._reductions)
                i += 1

    # --- Engine hooks ------------------------------------------------------------------------

    def started(self, engine: Engine) -> None:
        """EPOCH_STARTED hook: reset."""
        self.reset()

    def iteration_completed(self, engine: Engine, name: str | None = None) -> None:
        """ITERATION_COMPLETED hook: update with the transformed step output.

        `name` is the metric's name on the engine; metrics that publish a value every
        iteration (RunningAverage) use it, the others ignore it.
        """
        self.update(self.output_transform(engine.state.output))

    def completed(self, engine: Engine, name: str) -> None:
        """EPOCH_COMPLETED hook: store the value in `engine.state.metrics[name]`."""
        value = self.compute()
        engine.state.metrics[name] = value
        # A metric computing several named values also publishes each under its own name.
        if isinstance(value, Mapping):
            engine.state.metrics.update(value)

    def attach(self, engine: Engine, name: str) -> None:
        """Attach to an Engine under `name` (same as `engine.add_metric(self, name)`)."""
        engine.add_metric(self, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
