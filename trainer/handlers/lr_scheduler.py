"""LRScheduler: step any torch learning-rate scheduler at an engine event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch.optim.lr_scheduler import LRScheduler as TorchLRScheduler
from torch.optim.lr_scheduler import ReduceLROnPlateau

from trainer.events import AnyEvent, Events

if TYPE_CHECKING:
    from trainer.engine import Engine


class LRScheduler:
    """Calls ``lr_scheduler.step()`` each time the handler runs.

    A ``ReduceLROnPlateau`` is stepped with ``metric_engine.state.metrics[metric_name]``
    (``metric_engine`` defaults to the engine the handler runs on; pass the evaluator to
    follow a validation metric). ``state_dict``/``load_state_dict`` are the scheduler's, so the
    handler can go into a checkpoint's ``to_save``.
    """

    def __init__(
        self,
        lr_scheduler: Any,
        metric_name: str | None = None,
        metric_engine: Engine | None = None,
    ) -> None:
        if not isinstance(lr_scheduler, (TorchLRScheduler, ReduceLROnPlateau)):
            raise TypeError(
                f"lr_scheduler must be a torch.optim.lr_scheduler scheduler, got {lr_scheduler!r}"
            )
        plateau = isinstance(lr_scheduler, ReduceLROnPlateau)
        if plateau and metric_name is None:
            raise ValueError("ReduceLROnPlateau needs metric_name: the metric it follows")
        if not plateau and (metric_name is not None or metric_engine is not None):
            raise ValueError(
                f"metric_name/metric_engine only apply to ReduceLROnPlateau, not "
                f"{type(lr_scheduler).__name__}"
            )
        self.lr_scheduler = lr_scheduler
        self.metric_name = metric_name
        self.metric_engine = metric_engine

    @property
    def lrs(self) -> list[float]:
        """The current learning rate of each parameter group."""
        return [group["lr"] for group in self.lr_scheduler.optimizer.param_groups]

    def __call__(self, engine: Engine) -> None:
        """Advance the scheduler by one step."""
        if self.metric_name is None:
            self.lr_scheduler.step()
            return
        source = self.metric_engine if self.metric_engine is not None else engine
        metrics = source.state.metrics
        if self.metric_name not in metrics:
            raise KeyError(
                f"LRScheduler: metric {self.metric_name!r} is not in state.metrics "
                f"{sorted(metrics)}; attach it to the engine that computes it"
            )
        self.lr_scheduler.step(float(metrics[self.metric_name]))

    def attach(self, engine: Engine, event: AnyEvent = Events.EPOCH_COMPLETED) -> LRScheduler:
        """Step the scheduler at ``event`` of ``engine`` (once per epoch by default)."""
        engine.add_event_handler(event, self)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The wrapped scheduler's state."""
        return self.lr_scheduler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the wrapped scheduler's state."""
        self.lr_scheduler.load_state_dict(state)
