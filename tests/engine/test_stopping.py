"""terminate(), terminate_epoch() and EXCEPTION_RAISED, as DESIGN.md section 3 fixes them."""

from __future__ import annotations

import pytest

from trainer import Engine, Events


def traced_engine(step=None) -> tuple[Engine, list]:
    log: list = []
    engine = Engine(step or (lambda e, batch: batch))
    for event in Events:
        if event is Events.EXCEPTION_RAISED:
            continue
        engine.add_event_handler(
            event, lambda e, ev=event: log.append((ev.name, e.state.iteration))
        )
    return engine, log


def test_terminate_in_process_function_completes_the_iteration_then_stops() -> None:
    def step(engine: Engine, batch: int) -> int:
        if engine.state.iteration == 2:
            engine.terminate()
        return batch

    engine, log = traced_engine(step)
    state = engine.run(range(5), max_epochs=3)
    assert log == [
        ("STARTED", 0),
        ("EPOCH_STARTED", 0),
        ("ITERATION_STARTED", 1),
        ("ITERATION_COMPLETED", 1),
        ("ITERATION_STARTED", 2),
        ("ITERATION_COMPLETED", 2),
        ("TERMINATE", 2),
        ("COMPLETED", 2),
    ]
    assert state.iteration == 2


def test_terminate_in_iteration_started_skips_the_step() -> None:
    steps: list = []
    engine, log = traced_engine(lambda e, batch: steps.append(batch))
    engine.on(Events.ITERATION_STARTED(once=3), lambda e: e.terminate(), priority=10)
    engine.run(range(5))
    assert steps == [0, 1]
    assert log[-4:] == [
        ("ITERATION_COMPLETED", 2),
        ("ITERATION_STARTED", 3),
        ("TERMINATE", 3),
        ("COMPLETED", 3),
    ]


def test_terminate_in_epoch_completed_stops_before_the_next_epoch() -> None:
    engine, log = traced_engine()
    engine.on(Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate())
    state = engine.run(range(2), max_epochs=5)
    assert [name for name, _ in log][-3:] == ["EPOCH_COMPLETED", "TERMINATE", "COMPLETED"]
    assert "EPOCH_STARTED" not in [name for name, it in log if it > 0]
    assert state.epoch == 0 and state.iteration == 2


def test_terminate_in_started_runs_nothing() -> None:
    engine, log = traced_engine()
    engine.on(Events.STARTED, lambda e: e.terminate())
    engine.run(range(3))
    assert log == [("STARTED", 0), ("TERMINATE", 0), ("COMPLETED", 0)]


def test_terminate_epoch_fires_epoch_completed_and_goes_on_with_a_fresh_pass() -> None:
    batches: list = []

    def step(engine: Engine, batch: int) -> None:
        batches.append(batch)
        if engine.state.epoch == 0 and engine.state.epoch_iteration == 2:
            engine.terminate_epoch()

    engine, log = traced_engine(step)
    state = engine.run(range(4), max_epochs=2)
    names = [name for name, _ in log]
    assert names.count("EPOCH_COMPLETED") == 2
    assert "TERMINATE" not in names
    # The second epoch starts a fresh pass over the data, not where the first one stopped.
    assert batches == [0, 1, 0, 1, 2, 3]
    assert state.iteration == 6


def test_a_state_saved_after_terminate_epoch_resumes_at_a_fresh_pass() -> None:
    saved: list = []

    def step(engine: Engine, batch: int) -> None:
        if engine.state.epoch == 0 and engine.state.epoch_iteration == 2:
            engine.terminate_epoch()

    engine = Engine(step)
    engine.on(Events.EPOCH_COMPLETED(once=1), lambda e: saved.append(e.state_dict()))
    engine.run(range(4), max_epochs=2)

    resumed_batches: list = []
    resumed = Engine(lambda e, batch: resumed_batches.append(batch))
    resumed.load_state_dict(saved[0])
    resumed.run(range(4))
    assert resumed_batches == [0, 1, 2, 3]  # the epoch after the boundary, from its start


def test_exception_without_handler_propagates_and_completed_does_not_fire() -> None:
    def step(engine: Engine, batch: int) -> None:
        if batch == 1:
            raise ZeroDivisionError("boom")

    engine, log = traced_engine(step)
    with pytest.raises(ZeroDivisionError, match="boom"):
        engine.run(range(3))
    assert "COMPLETED" not in [name for name, _ in log]


def test_exception_raised_handlers_handle_it() -> None:
    caught: list = []

    def step(engine: Engine, batch: int) -> None:
        raise KeyError("bad batch")

    engine, log = traced_engine(step)
    engine.on(Events.EXCEPTION_RAISED, lambda e, exc: caught.append((type(exc), e.state.iteration)))
    state = engine.run(range(3))
    assert caught == [(KeyError, 1)]
    assert "COMPLETED" not in [name for name, _ in log]
    assert state.iteration == 1


def test_exception_in_a_handler_goes_to_exception_raised_and_may_be_reraised() -> None:
    engine = Engine(lambda e, batch: batch)

    @engine.on(Events.EPOCH_COMPLETED)
    def broken(e: Engine) -> None:
        raise ValueError("handler failed")

    @engine.on(Events.EXCEPTION_RAISED)
    def reraise(e: Engine, exc: Exception) -> None:
        raise RuntimeError("wrapped") from exc

    with pytest.raises(RuntimeError, match="wrapped"):
        engine.run(range(2))


def test_a_withdrawn_terminate_does_not_stop_the_run() -> None:
    # What a rank of several does with a terminate() nobody agreed on yet: takes it back.
    withdrawn: list = []
    engine = Engine(lambda e, batch: batch)
    engine.on(Events.ITERATION_COMPLETED(once=2), lambda e: e.terminate(), priority=10)
    engine.on(
        Events.ITERATION_COMPLETED, lambda e: withdrawn.append(e.withdraw_stop()), priority=-10
    )
    state = engine.run(range(3), max_epochs=2)
    assert state.iteration == 6  # every iteration of every epoch ran
    assert withdrawn == [False, True, False, False, False, False]
    assert not engine.should_terminate


def test_withdraw_stop_keeps_a_pending_terminate_epoch() -> None:
    steps: list = []
    engine = Engine(lambda e, batch: steps.append((e.state.epoch, batch)))

    def both(e: Engine) -> None:
        e.terminate_epoch()
        e.terminate()

    engine.on(Events.ITERATION_COMPLETED(once=1), both)
    engine.on(Events.ITERATION_COMPLETED(once=1), lambda e: e.withdraw_stop(), priority=-10)
    state = engine.run(range(3), max_epochs=2)
    # The epoch ended early as terminate_epoch() asked; the withdrawn terminate() did not stop.
    assert steps == [(0, 0), (1, 0), (1, 1), (1, 2)]
    assert state.epoch == 1
