"""The Engine's event order, state counters, filters, priorities and handler forms."""

from __future__ import annotations

import pytest

from trainer import Engine, EventEnum, Events, State

LIFECYCLE = (
    Events.STARTED,
    Events.EPOCH_STARTED,
    Events.ITERATION_STARTED,
    Events.ITERATION_COMPLETED,
    Events.EPOCH_COMPLETED,
    Events.COMPLETED,
)


def record_all(engine: Engine, log: list) -> None:
    for event in LIFECYCLE:
        engine.add_event_handler(
            event,
            lambda e, ev=event: log.append(
                (ev.name, e.state.epoch, e.state.iteration, e.state.epoch_iteration)
            ),
        )


def test_events_fire_in_order_with_zero_indexed_epochs() -> None:
    log: list = []
    engine = Engine(lambda e, batch: batch)
    record_all(engine, log)
    engine.run([10, 20], max_epochs=2)
    assert log == [
        ("STARTED", 0, 0, 0),
        ("EPOCH_STARTED", 0, 0, 0),
        ("ITERATION_STARTED", 0, 1, 1),
        ("ITERATION_COMPLETED", 0, 1, 1),
        ("ITERATION_STARTED", 0, 2, 2),
        ("ITERATION_COMPLETED", 0, 2, 2),
        ("EPOCH_COMPLETED", 0, 2, 2),
        ("EPOCH_STARTED", 1, 2, 0),
        ("ITERATION_STARTED", 1, 3, 1),
        ("ITERATION_COMPLETED", 1, 3, 1),
        ("ITERATION_STARTED", 1, 4, 2),
        ("ITERATION_COMPLETED", 1, 4, 2),
        ("EPOCH_COMPLETED", 1, 4, 2),
        ("COMPLETED", 1, 4, 2),
    ]


def test_state_holds_output_batch_data_lengths_and_times() -> None:
    data = [1, 2, 3]
    engine = Engine(lambda e, batch: batch * 10)
    seen = []
    engine.on(Events.ITERATION_COMPLETED, lambda e: seen.append((e.state.batch, e.state.output)))
    assert engine.state.epoch == 0 and engine.state.iteration == 0
    state = engine.run(data, max_epochs=3)
    assert isinstance(state, State) and state is engine.state
    assert seen[:3] == [(1, 10), (2, 20), (3, 30)]
    assert state.output == 30 and state.batch == 3
    assert state.dataloader is data
    assert state.max_epochs == 3 and state.epoch_length == 3
    assert state.epoch == 2 and state.iteration == 9
    assert set(state.times) >= {"EPOCH_COMPLETED", "COMPLETED"}
    assert 0 <= state.times["EPOCH_COMPLETED"] <= state.times["COMPLETED"]


def test_epoch_length_shorter_than_data_walks_on_through_the_data() -> None:
    batches: list = []
    engine = Engine(lambda e, batch: batches.append(batch))
    engine.run(list(range(10)), max_epochs=3, epoch_length=4)
    assert batches == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_data_that_runs_out_is_iterated_again() -> None:
    batches: list = []
    engine = Engine(lambda e, batch: batches.append(batch))
    state = engine.run([0, 1, 2], max_epochs=2, epoch_length=5)
    assert batches == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert state.iteration == 10


def test_unsized_generator_epoch_is_one_pass() -> None:
    engine = Engine(lambda e, batch: batch)
    state = engine.run(i for i in range(7))
    assert state.epoch_length == 7 and state.iteration == 7


def test_generator_with_epoch_length_spans_epochs() -> None:
    batches: list = []
    engine = Engine(lambda e, batch: batches.append(batch))
    engine.run(iter(range(6)), max_epochs=3, epoch_length=2)
    assert batches == [0, 1, 2, 3, 4, 5]


def test_filters_every_once_and_custom_filter() -> None:
    engine = Engine(lambda e, batch: None)
    every: list = []
    once: list = []
    custom: list = []
    epochs: list = []
    engine.on(Events.ITERATION_COMPLETED(every=3), lambda e: every.append(e.state.iteration))
    engine.on(Events.ITERATION_STARTED(once=5), lambda e: once.append(e.state.iteration))
    engine.on(
        Events.ITERATION_COMPLETED(event_filter=lambda e, count: count in (2, 7)),
        lambda e: custom.append(e.state.iteration),
    )
    engine.on(Events.EPOCH_COMPLETED(every=2), lambda e: epochs.append(e.state.epoch))
    engine.run(range(4), max_epochs=4)
    assert every == [3, 6, 9, 12, 15]
    assert once == [5]
    assert custom == [2, 7]
    # EPOCH_* filters count 1-based epochs: every=2 fires after the 2nd and 4th epochs.
    assert epochs == [1, 3]


def test_every_aliases_and_event_filter_receives_the_count() -> None:
    engine = Engine(lambda e, batch: None)
    seen: list = []
    counts: list = []
    engine.on(Events.ITERATION_COMPLETED_EVERY(2), lambda e: seen.append(("it", e.state.iteration)))
    engine.on(Events.EPOCH_COMPLETED_EVERY(3), lambda e: seen.append(("ep", e.state.epoch)))

    def spy(engine: Engine, count: int) -> bool:
        counts.append(count)
        return False

    engine.on(Events.EPOCH_STARTED(event_filter=spy), lambda e: None)
    engine.run([0, 1], max_epochs=3)
    assert seen == [("it", 2), ("it", 4), ("it", 6), ("ep", 2)]
    assert counts == [1, 2, 3]


def test_or_attaches_one_handler_to_several_events() -> None:
    engine = Engine(lambda e, batch: None)
    fired: list = []
    engine.on(
        Events.STARTED | Events.COMPLETED | Events.ITERATION_COMPLETED(every=2),
        lambda e: fired.append(e.state.iteration),
    )
    engine.run(range(4))
    assert fired == [0, 2, 4, 4]


def test_priority_orders_handlers_and_ties_keep_registration_order() -> None:
    engine = Engine(lambda e, batch: None)
    order: list = []
    engine.on(Events.STARTED, lambda e: order.append("a0"))
    engine.on(Events.STARTED, lambda e: order.append("b10"), priority=10)
    engine.on(Events.STARTED, lambda e: order.append("c0"))
    engine.on(Events.STARTED, lambda e: order.append("d-5"), priority=-5)
    engine.on(Events.STARTED, lambda e: order.append("e10"), priority=10)
    engine.run([0])
    assert order == ["b10", "e10", "a0", "c0", "d-5"]


def test_handler_forms_decorator_no_argument_and_extra_arguments() -> None:
    engine = Engine(lambda e, batch: None)
    calls: list = []

    @engine.on(Events.EPOCH_COMPLETED, priority=1)
    def decorated(e: Engine) -> None:
        calls.append("decorated")

    def bare() -> None:
        calls.append("bare")

    def with_args(e: Engine, tag: str, *, scale: int) -> None:
        calls.append((tag, scale))

    engine.add_event_handler(Events.EPOCH_COMPLETED, bare)
    engine.add_event_handler(Events.EPOCH_COMPLETED, with_args, "x", scale=3)
    engine.run([0])
    assert calls == ["decorated", "bare", ("x", 3)]


def test_has_and_remove_handler_with_ignite_argument_order() -> None:
    engine = Engine(lambda e, batch: None)
    calls: list = []

    def handler(e: Engine) -> None:
        calls.append(e.state.iteration)

    engine.add_event_handler(Events.ITERATION_COMPLETED(every=2), handler)
    assert engine.has_event_handler(handler)
    assert engine.has_event_handler(handler, Events.ITERATION_COMPLETED)
    assert not engine.has_event_handler(handler, Events.EPOCH_COMPLETED)
    engine.remove_event_handler(handler, Events.ITERATION_COMPLETED)
    assert not engine.has_event_handler(handler)
    engine.run(range(4))
    assert calls == []
    with pytest.raises(ValueError, match="handler"):
        engine.remove_event_handler(handler, Events.ITERATION_COMPLETED)


def test_removable_handle_detaches() -> None:
    engine = Engine(lambda e, batch: None)
    calls: list = []
    handle = engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: calls.append(1))
    handle.remove()
    engine.run(range(3))
    assert calls == []


class TrainEvents(EventEnum):
    BACKWARD_COMPLETED = "backward_completed"
    OPTIM_STEP = "optim_step"


def test_custom_events_fire_with_filters_counting_firings() -> None:
    def step(engine: Engine, batch: int) -> None:
        engine.fire_event(TrainEvents.BACKWARD_COMPLETED)
        if batch % 2 == 0:
            engine.fire_event(TrainEvents.OPTIM_STEP)

    engine = Engine(step)
    engine.register_events(*TrainEvents)
    every: list = []
    optim: list = []
    engine.on(TrainEvents.BACKWARD_COMPLETED(every=2), lambda e: every.append(e.state.iteration))
    engine.on(TrainEvents.OPTIM_STEP(once=2), lambda e: optim.append(e.state.batch))
    engine.run(range(6))
    assert every == [2, 4, 6]
    assert optim == [2]  # the second firing, at batch 2


def test_custom_event_enum_class_registration() -> None:
    engine = Engine(lambda e, batch: e.fire_event(TrainEvents.OPTIM_STEP))
    engine.register_events(TrainEvents)
    count: list = []
    engine.on(TrainEvents.OPTIM_STEP, lambda: count.append(1))
    engine.run(range(3))
    assert len(count) == 3


def test_async_process_function_and_handlers_under_run() -> None:
    import asyncio

    async def step(engine: Engine, batch: int) -> int:
        await asyncio.sleep(0)
        return batch + 1

    engine = Engine(step)
    seen: list = []

    async def on_iteration(e: Engine) -> None:
        await asyncio.sleep(0)
        seen.append(e.state.output)

    engine.on(Events.ITERATION_COMPLETED, on_iteration)
    engine.on(Events.ITERATION_COMPLETED, lambda e: seen.append("sync"))
    state = engine.run([1, 2])
    assert seen == [2, "sync", 3, "sync"]
    assert state.output == 3


async def test_arun_inside_a_running_loop_awaits_handlers_in_order() -> None:
    import asyncio

    order: list = []

    async def slow(e: Engine) -> None:
        await asyncio.sleep(0.01)
        order.append("slow")

    engine = Engine(lambda e, batch: batch)
    engine.on(Events.EPOCH_COMPLETED, slow, priority=1)
    engine.on(Events.EPOCH_COMPLETED, lambda e: order.append("after"))
    state = await engine.arun([1, 2, 3], max_epochs=2)
    assert order == ["slow", "after", "slow", "after"]
    assert state.iteration == 6


async def test_run_with_async_parts_inside_a_loop_points_to_arun() -> None:
    async def step(engine: Engine, batch: int) -> None:
        return None

    with pytest.raises(RuntimeError, match="arun"):
        Engine(step).run([1])


async def test_sync_engine_runs_inside_a_loop() -> None:
    state = Engine(lambda e, b: b).run([1, 2])
    assert state.iteration == 2


def test_run_again_after_completion_starts_afresh() -> None:
    engine = Engine(lambda e, batch: batch)
    engine.run([1, 2], max_epochs=2)
    state = engine.run([1, 2, 3])
    assert state.iteration == 3 and state.max_epochs == 1 and state.epoch == 0


def test_attach_handler_is_add_event_handler_with_priority_and_removal() -> None:
    engine = Engine(lambda e, b: None)
    order: list[str] = []
    engine.attach_handler(Events.EPOCH_COMPLETED, lambda e: order.append("low"), priority=-1)
    handle = engine.attach_handler(Events.EPOCH_COMPLETED, lambda e: order.append("gone"))
    engine.attach_handler(
        Events.EPOCH_COMPLETED, lambda e, tag: order.append(tag), "high", priority=5
    )
    handle.remove()
    engine.run([0], max_epochs=1)
    assert order == ["high", "low"]
