"""Bad input gets a clear error that names the culprit, before any work is done."""

from __future__ import annotations

import pytest

from trainer import DataExhaustedError, Engine, EventEnum, Events


class Custom(EventEnum):
    SOMETHING = "something"


def fresh() -> tuple[Engine, list]:
    calls: list = []
    engine = Engine(lambda e, batch: calls.append(batch))
    engine.on(Events.STARTED, lambda e: calls.append("started"))
    return engine, calls


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_max_epochs_must_be_positive(value: object) -> None:
    engine, calls = fresh()
    with pytest.raises(ValueError, match="max_epochs"):
        engine.run([1], max_epochs=value)  # type: ignore[arg-type]
    assert calls == []


@pytest.mark.parametrize("value", [0, -3])
def test_epoch_length_must_be_positive(value: int) -> None:
    engine, calls = fresh()
    with pytest.raises(ValueError, match="epoch_length"):
        engine.run([1], epoch_length=value)
    assert calls == []


def test_data_must_be_iterable() -> None:
    engine, calls = fresh()
    with pytest.raises(TypeError, match=r"data must be iterable.*int"):
        engine.run(42)  # type: ignore[arg-type]
    assert calls == []


def test_empty_data_is_refused() -> None:
    engine, calls = fresh()
    with pytest.raises(ValueError, match="empty"):
        engine.run([])
    assert calls == []


def test_handler_that_cannot_take_the_engine_is_refused_at_registration() -> None:
    engine = Engine(lambda e, batch: None)

    def needs_two(a: int, b: int) -> None: ...

    with pytest.raises(
        TypeError,
        match=r"EPOCH_COMPLETED needs_two\(a.*b.*\) cannot be called as needs_two\(engine\)",
    ):
        engine.add_event_handler(Events.EPOCH_COMPLETED, needs_two)
    with pytest.raises(TypeError, match="callable"):
        engine.add_event_handler(Events.EPOCH_COMPLETED, "not a function")  # type: ignore[arg-type]


def test_handler_with_wrong_extra_arguments_is_refused() -> None:
    engine = Engine(lambda e, batch: None)

    def handler(engine: Engine) -> None: ...

    with pytest.raises(TypeError, match="handler"):
        engine.add_event_handler(Events.STARTED, handler, 1, 2)


def test_exception_handler_must_take_the_exception() -> None:
    engine = Engine(lambda e, batch: None)

    def only_engine(engine: Engine, a: int, b: int) -> None: ...

    with pytest.raises(TypeError, match="exception"):
        engine.add_event_handler(Events.EXCEPTION_RAISED, only_engine)


def test_process_function_signature_is_checked() -> None:
    with pytest.raises(TypeError, match=r"process_function.*\(engine, batch\)"):
        Engine(lambda batch: batch)
    with pytest.raises(TypeError, match="callable"):
        Engine(3)  # type: ignore[arg-type]


def test_filter_with_both_every_and_once() -> None:
    with pytest.raises(ValueError, match="every, once"):
        Events.ITERATION_COMPLETED(every=2, once=3)
    with pytest.raises(ValueError, match="every"):
        Events.ITERATION_COMPLETED(every=0)
    with pytest.raises(ValueError, match="none"):
        Events.ITERATION_COMPLETED()


def test_unregistered_custom_event_cannot_be_fired_or_handled() -> None:
    engine = Engine(lambda e, batch: e.fire_event(Custom.SOMETHING))
    with pytest.raises(ValueError, match=r"Custom.SOMETHING.*register_events\(Custom\)"):
        engine.on(Custom.SOMETHING, lambda e: None)
    with pytest.raises(ValueError, match=r"cannot fire Custom\.SOMETHING"):
        engine.run([1])


def test_not_an_event() -> None:
    engine = Engine(lambda e, batch: None)
    with pytest.raises(TypeError, match="not an event"):
        engine.on("EPOCH_COMPLETED", lambda e: None)  # type: ignore[arg-type]


def test_one_shot_iterator_that_runs_out_cannot_be_restarted() -> None:
    engine = Engine(lambda e, batch: None)
    # Epochs in text count from 1: the data runs out in the second of two epochs.
    with pytest.raises(
        DataExhaustedError, match=r"after 1 of 2 iterations in epoch 2/2 .*one-shot"
    ):
        engine.run(iter(range(3)), max_epochs=2, epoch_length=2)


def test_load_state_dict_names_missing_and_bad_keys() -> None:
    engine = Engine(lambda e, batch: None)
    engine.run(range(3))
    good = engine.state_dict()
    missing = {k: v for k, v in good.items() if k != "epochs_completed"}
    with pytest.raises(KeyError, match="epochs_completed"):
        engine.load_state_dict(missing)
    with pytest.raises(TypeError, match="'iteration'"):
        engine.load_state_dict({**good, "iteration": "three"})
    with pytest.raises(ValueError, match="'epoch'"):
        engine.load_state_dict({**good, "epoch": -1})


def test_resumed_max_epochs_below_completed_epochs_is_refused() -> None:
    engine = Engine(lambda e, batch: None)
    engine.run(range(2), max_epochs=3)
    saved = engine.state_dict()
    engine.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"max_epochs=2.*3 epochs"):
        engine.run(range(2), max_epochs=2)
