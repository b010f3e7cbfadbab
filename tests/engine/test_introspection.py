"""What an Engine tells about itself: attached metrics, handlers, custom events."""

from __future__ import annotations

from trainer import Engine, EventEnum, Events
from trainer.metrics import Accuracy, Loss


class TrainEvents(EventEnum):
    BACKWARD_COMPLETED = "backward_completed"


def test_metrics_lists_what_add_metric_attached_by_name() -> None:
    engine = Engine(lambda e, b: None)
    loss, accuracy = Loss(), Accuracy()
    engine.add_metric(loss, "loss")
    accuracy.attach(engine, "acc")
    assert engine.metrics == {"loss": loss, "acc": accuracy}
    engine.metrics.clear()  # a copy: the engine's own list is untouched
    assert set(engine.metrics) == {"loss", "acc"}


def test_handlers_are_listed_in_the_order_they_run_filtered_ones_included() -> None:
    engine = Engine(lambda e, b: None)

    def first(engine: Engine) -> None: ...
    def second(engine: Engine) -> None: ...

    engine.add_event_handler(Events.EPOCH_COMPLETED(every=2), second)
    engine.add_event_handler(Events.EPOCH_COMPLETED, first, priority=5)
    assert engine.handlers(Events.EPOCH_COMPLETED) == [first, second]
    assert engine.handlers(Events.EPOCH_COMPLETED(every=3)) == [first, second]
    assert engine.handlers(Events.STARTED) == []


def test_custom_events_are_the_registered_ones_only() -> None:
    engine = Engine(lambda e, b: None)
    assert engine.custom_events == ()
    engine.register_events(TrainEvents)
    assert engine.custom_events == (TrainEvents.BACKWARD_COMPLETED,)
