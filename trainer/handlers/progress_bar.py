"""ProgressBar: a tqdm bar per epoch with its rate and chosen metrics or outputs."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from trainer.events import Events

if TYPE_CHECKING:
    from trainer.engine import Engine


def _scalar(value: Any) -> Any:
    """A number for tqdm's postfix where the value is one, else the value itself."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def _output_fields(output: Any) -> dict[str, Any]:
    if isinstance(output, Mapping):
        return {str(k): _scalar(v) for k, v in output.items()}
    if isinstance(output, (list, tuple)):
        return {f"output_{i}": _scalar(v) for i, v in enumerate(output)}
    return {"output": _scalar(output)}


class ProgressBar:
    """Shows one tqdm bar per epoch ("Epoch [e/E]", done/total, it/s, postfix values).

    ``file`` is where the bar is written (stderr by default). ``disable=True`` turns it off;
    ``disable=None`` turns it off when ``file`` is not a terminal (tqdm's rule). ``persist``
    leaves each finished epoch's bar on screen. Other keyword arguments go to ``tqdm``.
    """

    def __init__(
        self,
        persist: bool = False,
        file: IO[str] | None = None,
        disable: bool | None = False,
        **tqdm_kwargs: Any,
    ) -> None:
        self.persist = persist
        self.file = file
        self.disable = disable
        self.tqdm_kwargs = tqdm_kwargs
        self.metric_names: str | Sequence[str] | None = None
        self.output_transform: Callable[[Any], Any] | None = None
        self._bar: tqdm | None = None

    def attach(
        self,
        engine: Engine,
        metric_names: str | Sequence[str] | None = None,
        output_transform: Callable[[Any], Any] | None = None,
    ) -> ProgressBar:
        """Show ``engine``'s progress with the named metrics ("all" for every one) and outputs.

        ``output_transform(state.output)`` may return a number (shown as ``output``), a dict
        (one field per key) or a list/tuple (``output_0``, ``output_1``...).
        """
        if isinstance(metric_names, str) and metric_names != "all":
            raise ValueError(f"metric_names must be 'all' or a list of names, got {metric_names!r}")
        if output_transform is not None and not callable(output_transform):
            raise TypeError(f"output_transform must be callable, got {output_transform!r}")
        self.metric_names = metric_names
        self.output_transform = output_transform
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        # A terminated epoch never reaches EPOCH_COMPLETED: TERMINATE and COMPLETED close it.
        engine.add_event_handler(
            Events.EPOCH_COMPLETED | Events.TERMINATE | Events.COMPLETED, self._close
        )
        return self

    def _postfix(self, engine: Engine) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        metrics = engine.state.metrics
        if self.metric_names == "all":
            names: Sequence[str] = list(metrics)
        else:
            names = self.metric_names or ()
        for name in names:
            # A metric appears once its first epoch is computed; until then it is not shown.
            if name in metrics:
                fields[name] = _scalar(metrics[name])
        if self.output_transform is not None:
            fields.update(_output_fields(self.output_transform(engine.state.output)))
        return {k: v for k, v in fields.items() if isinstance(v, (numbers.Number, str))}

    def _update(self, engine: Engine) -> None:
        s = engine.state
        if self._bar is None:
            self._bar = tqdm(
                total=s.epoch_length,
                initial=s.epoch_iteration - 1,  # a resumed epoch starts part way
                desc=f"Epoch [{s.epoch + 1}/{s.max_epochs}]",
                leave=self.persist,
                file=self.file,
                disable=self.disable,
                **self.tqdm_kwargs,
            )
        self._bar.set_postfix(self._postfix(engine), refresh=False)
        self._bar.update(1)

    def _close(self, engine: Engine) -> None:
        if self._bar is None:
            return
        # The epoch's metrics are computed before user EPOCH_COMPLETED handlers: show them.
        self._bar.set_postfix(self._postfix(engine), refresh=False)
        self._bar.close()
        self._bar = None
