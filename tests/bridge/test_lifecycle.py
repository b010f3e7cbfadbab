"""What a run publishes: the lifecycle of its engines, as the message catalogue fixes it."""

from __future__ import annotations

import os

import pytest
import torch

from bus import ThreadedPublisher, open_bus
from bus.messages import EVENTS, check_data
from trainer import Engine, EventEnum, Events
from trainer.bridge import BusRun
from trainer.handlers import EarlyStopping, TerminateOnNan
from trainer.metrics import Average

from ._bus import TOPICS, BusClient, joined, types, wait_until


def train_and_validate(run: BusRun) -> tuple[Engine, Engine]:
    """A trainer (3 iterations per epoch, loss = the batch) validated after every epoch."""

    def step(engine: Engine, batch: int) -> dict:
        return {"loss": float(batch), "pred": torch.tensor([1.0, 2.0])}

    trainer = Engine(step)
    trainer.add_metric(Average(output_transform=lambda out: out["loss"]), "avg_loss")
    evaluator = Engine(lambda engine, batch: batch)
    evaluator.add_metric(Average(), "score")
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda _: evaluator.run([0.25, 0.75]), priority=100
    )
    run.attach(trainer)
    run.attach(evaluator, "val")
    return trainer, evaluator


def test_the_events_and_their_data_follow_the_catalogue(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    config = {"train": {"epochs": 2, "lr": 0.1}, "tags": ["a", "b"]}
    run = BusRun(bus_url, run_id, config=config)
    trainer, _ = train_and_validate(run)
    with run:
        trainer.run([1, 2, 3], max_epochs=2)

    events = client.read(TOPICS.events(run_id))
    train_epoch = [
        "EPOCH_STARTED",
        "ITERATION_COMPLETED",
        "ITERATION_COMPLETED",
        "ITERATION_COMPLETED",
        "EPOCH_COMPLETED",
    ]
    validation = ["STARTED", "EPOCH_STARTED", "ITERATION_COMPLETED", "ITERATION_COMPLETED"]
    validation += ["EPOCH_COMPLETED", "COMPLETED"]
    expected = ["RUN_STARTED", "STARTED", *train_epoch, *validation, *train_epoch, *validation]
    assert types(events) == [*expected, "COMPLETED", "RUN_FINISHED"]
    for env in events:  # each has the keys bus.messages requires, of the types it requires
        check_data(env.type, env.data, topic=EVENTS)
    splits = [env.data.get("split") for env in events]
    assert splits[1:7] == ["train"] * 6 and splits[7:13] == ["val"] * 6
    assert {(env.run_id, env.source) for env in events} == {(run_id, "trainer:0")}

    # Every envelope carries the trainer's epoch and iteration, the validation's ones too.
    stamps = [(env.type, env.data.get("split"), env.epoch, env.iteration) for env in events]
    assert stamps[:3] == [
        ("RUN_STARTED", None, 0, 0),
        ("STARTED", "train", 0, 0),
        ("EPOCH_STARTED", "train", 0, 0),
    ]
    assert [s[2:] for s in stamps[3:6]] == [(0, 1), (0, 2), (0, 3)]
    assert {s[2:] for s in stamps[6:13]} == {(0, 3)}
    assert stamps[13] == ("EPOCH_STARTED", "train", 1, 3)
    assert {s[2:] for s in stamps[17:]} == {(1, 6)}

    started = events[0].data
    assert started == {
        "config": config,
        "rank": 0,
        "world_size": 1,
        "host": started["host"],
        "pid": os.getpid(),
        "resumed_from": None,
        "checkpoint_dir": None,
        "run_dir": None,
        "namespace": "trainer",
        "barrier": False,
    }
    assert isinstance(started["host"], str) and started["host"]
    iteration = events[3].data
    assert iteration == {"split": "train", "outputs": {"loss": 1.0}, "count": 1}
    train_end = events[6].data
    assert train_end["metrics"] == {"avg_loss": 2.0}
    assert train_end["metric_states"]["avg_loss"]["class"] == "Average"
    assert train_end["metric_states"]["avg_loss"]["state"] == {"total": 6.0, "count": 3}
    assert (train_end["rank"], train_end["world_size"]) == (0, 1)
    val_end = events[11].data
    assert val_end["split"] == "val" and val_end["metrics"] == {"score": 0.5}
    finished = dict(events[-1].data)
    assert isinstance(finished.pop("duration_s"), float)  # seconds from start() to finish()
    assert finished == {
        "status": "completed",
        "reason": "completed",
        "by": None,
        "voter": None,
        "epochs": 2,
        "iteration": 6,
    }
    # The registry announces the run with the very same envelopes.
    registry = client.read(TOPICS.registry())
    assert [env.id for env in registry] == [events[0].id, events[-1].id]


def test_iterations_are_coalesced_every_publish_every_and_at_each_epoch_end(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    def step(engine: Engine, batch: int) -> dict:
        i = engine.state.iteration
        return {"loss": float(i), "grad_norm": torch.tensor(2.0 * i), "name": "x"}

    trainer = Engine(step)
    run = BusRun(bus_url, run_id, publish_every=3)
    run.attach(trainer)
    with run:
        trainer.run(range(7), max_epochs=2)

    published = [
        (env.iteration, env.data["count"], env.data["outputs"])
        for env in client.read(TOPICS.events(run_id))
        if env.type == "ITERATION_COMPLETED"
    ]
    # Windows: 1-3, 4-6, 7 (epoch end), 8-9, 10-12, 13-14 (epoch end).
    windows = [(1, 3), (4, 6), (7, 7), (8, 9), (10, 12), (13, 14)]
    expected = []
    for first, last in windows:
        mean = (first + last) / 2
        expected.append((last, last - first + 1, {"loss": mean, "grad_norm": 2 * mean}))
    assert published == expected


def test_a_stop_by_the_program_publishes_the_open_window_then_terminate(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    def step(engine: Engine, batch: int) -> float:
        if engine.state.iteration == 5:
            engine.terminate()
        return 1.0

    trainer = Engine(step)
    run = BusRun(bus_url, run_id, publish_every=3)
    run.attach(trainer)
    with run:
        trainer.run(range(7), max_epochs=3)
    end = run.finish()

    events = client.read(TOPICS.events(run_id))
    tail = [(env.type, env.iteration, env.data.get("count")) for env in events[-5:]]
    assert tail == [
        ("ITERATION_COMPLETED", 3, 3),
        ("ITERATION_COMPLETED", 5, 2),
        ("TERMINATE", 5, None),
        ("COMPLETED", 5, None),
        ("RUN_FINISHED", 5, None),
    ]
    finished = dict(events[-1].data)
    assert isinstance(finished.pop("duration_s"), float)
    assert finished == {
        "status": "terminated",
        "reason": "terminated by the program",
        "by": None,
        "voter": None,
        "epochs": 0,
        "iteration": 5,
    }
    assert (end.status, end.reason, end.by, end.epochs, end.iteration) == (
        "terminated",
        "terminated by the program",
        None,
        0,
        5,
    )


def test_the_reason_a_handler_gives_its_terminate_is_run_finished_s_reason(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    def step(engine: Engine, batch: int) -> float:
        return float("nan") if engine.state.iteration == 4 else 1.0

    trainer = Engine(step)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())
    run = BusRun(bus_url, run_id)
    run.attach(trainer)
    with run:
        trainer.run(range(7), max_epochs=3)

    finished = client.read(TOPICS.events(run_id))[-1]
    assert finished.type == "RUN_FINISHED"
    assert (finished.data["status"], finished.data["by"]) == ("terminated", None)
    assert finished.data["reason"] == "the output of iteration 4 is NaN or inf"


def test_early_stopping_says_why_it_stopped() -> None:
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.1])
    trainer = Engine(lambda engine, batch: 0.0)
    handler = EarlyStopping(2, lambda engine: next(scores), trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    trainer.run([0], max_epochs=10)
    # Best 0.7 in the second epoch; the third and fourth bring no improvement: patience 2 runs
    # out in the fourth, whose (0-based) index is 3.
    assert trainer.state.epoch == 3
    assert trainer.stop_reason == "EarlyStopping: no improvement in 2 evaluations (best score 0.7)"


class Steps(EventEnum):
    BACKWARD_COMPLETED = "backward_completed"
    OPTIMIZER_STEPPED = "optimizer_stepped"


def test_custom_events_are_published_under_their_name(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    def step(engine: Engine, batch: int) -> float:
        engine.fire_event(Steps.BACKWARD_COMPLETED)
        engine.fire_event(Steps.OPTIMIZER_STEPPED)
        return 0.0

    trainer = Engine(step)
    trainer.register_events(Steps.BACKWARD_COMPLETED)
    run = BusRun(bus_url, run_id)
    run.attach(trainer)
    trainer.register_events(Steps.OPTIMIZER_STEPPED)  # registered after attach: published too
    with run:
        trainer.run(range(2))

    events = client.read(TOPICS.events(run_id))
    assert types(events)[3:9] == [
        "BACKWARD_COMPLETED",
        "OPTIMIZER_STEPPED",
        "ITERATION_COMPLETED",
        "BACKWARD_COMPLETED",
        "OPTIMIZER_STEPPED",
        "ITERATION_COMPLETED",
    ]
    custom = [env for env in events if env.type in ("BACKWARD_COMPLETED", "OPTIMIZER_STEPPED")]
    assert [(env.data, env.iteration) for env in custom[:2]] == [({"split": "train"}, 1)] * 2


def test_an_exception_is_published_then_raised_and_the_run_fails(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    def step(engine: Engine, batch: int) -> float:
        if engine.state.iteration == 2:
            raise ValueError("loss exploded")
        return 1.0

    trainer = Engine(step)
    run = BusRun(bus_url, run_id)
    run.attach(trainer)
    with pytest.raises(ValueError, match="loss exploded"), run:
        trainer.run(range(5))

    events = client.read(TOPICS.events(run_id))
    assert types(events) == [
        "RUN_STARTED",
        "STARTED",
        "EPOCH_STARTED",
        "ITERATION_COMPLETED",
        "EXCEPTION_RAISED",
        "RUN_FINISHED",
    ]
    raised = events[4]
    assert (raised.epoch, raised.iteration) == (0, 2)
    assert raised.data["split"] == "train"
    assert raised.data["error_type"] == "ValueError"
    assert raised.data["message"] == "loss exploded"
    assert "ValueError: loss exploded" in raised.data["traceback"]
    assert "in step" in raised.data["traceback"]
    assert events[-1].data["status"] == "failed"
    assert events[-1].data["reason"] == "ValueError: loss exploded"


def test_user_exception_handlers_still_handle_the_exception(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    def step(engine: Engine, batch: int) -> float:
        raise KeyError("batch")

    handled = []
    trainer = Engine(step)
    run = BusRun(bus_url, run_id)
    run.attach(trainer)
    trainer.add_event_handler(Events.EXCEPTION_RAISED, lambda engine, exc: handled.append(exc))
    with run:
        trainer.run(range(5))  # handled: nothing is raised

    assert [type(exc) for exc in handled] == [KeyError]
    events = client.read(TOPICS.events(run_id))
    assert types(events)[-2:] == ["EXCEPTION_RAISED", "RUN_FINISHED"]
    # The run ended on an exception, handled or not.
    assert events[-1].data["status"] == "failed"


def test_an_evaluator_failure_is_published_for_both_splits(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    def broken(engine: Engine, batch: int) -> float:
        raise RuntimeError("bad batch")

    trainer = Engine(lambda engine, batch: 0.0)
    evaluator = Engine(broken)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([1]))
    run = BusRun(bus_url, run_id)
    run.attach(trainer)
    run.attach(evaluator, "val")
    with pytest.raises(RuntimeError, match="bad batch"), run:
        trainer.run(range(2))

    raised = [
        (env.data["split"], env.data["error_type"])
        for env in client.read(TOPICS.events(run_id))
        if env.type == "EXCEPTION_RAISED"
    ]
    assert raised == [("val", "RuntimeError"), ("train", "RuntimeError")]


def test_an_engine_run_outside_start_and_finish_is_refused(bus_url: str, run_id: str) -> None:
    trainer = Engine(lambda engine, batch: 0.0)
    run = BusRun(bus_url, run_id)
    run.attach(trainer)
    try:
        with pytest.raises(RuntimeError, match=r"before BusRun.start\(\)"):
            trainer.run(range(2))
        run.start()
        trainer.run(range(2))
        run.finish()
        with pytest.raises(RuntimeError, match=r"after BusRun.finish\(\)"):
            trainer.run(range(2))
    finally:
        run.close()


def test_the_context_manager_reports_an_error_outside_the_engine(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    run = BusRun(bus_url, run_id)
    run.attach(Engine(lambda engine, batch: 0.0))
    with pytest.raises(OSError), run:
        raise OSError("disk gone")
    finished = client.read(TOPICS.events(run_id))[-1]
    assert finished.type == "RUN_FINISHED"
    assert (finished.data["status"], finished.data["reason"]) == ("failed", "OSError: disk gone")


def test_close_without_finish_still_announces_the_end(
    bus_url: str, client: BusClient, run_id: str
) -> None:
    run = BusRun(bus_url, run_id)
    run.start()
    run.close()
    assert [env.type for env in client.read(TOPICS.registry())] == ["RUN_STARTED", "RUN_FINISHED"]
    assert client.read(TOPICS.registry())[-1].data["status"] == "failed"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"publish_every": 0}, "publish_every must be an int >= 1, got 0"),
        ({"policy": "most"}, "policy 'most' is not a voting policy"),
        ({"policy": 0}, "policy 0 is not a voting policy"),
        ({"rank": 2, "world_size": 2}, "rank 2 must be below world_size 2"),
        ({"heartbeat_timeout": -1}, "heartbeat_timeout must be a number"),
        ({"run_id": "has space"}, "run id 'has space' is not usable in a topic name"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs: dict, message: str) -> None:
    kwargs = {"run_id": "r1", **kwargs}
    with pytest.raises(ValueError, match=message):
        BusRun("memory://bad-arguments", kwargs.pop("run_id"), **kwargs)


def test_attach_refuses_an_engine_or_a_split_twice() -> None:
    run = BusRun("memory://attach-twice", "r1")
    try:
        trainer = Engine(lambda engine, batch: 0.0)
        run.attach(trainer)
        with pytest.raises(ValueError, match="already attached"):
            run.attach(trainer, "val")
        with pytest.raises(ValueError, match="split 'train' of run r1 is already taken"):
            run.attach(Engine(lambda engine, batch: 0.0))
    finally:
        run.close()


def test_the_secret_comes_from_the_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRAINER_BUS_SECRET", "from-env")
    run = BusRun("memory://secret-env", "r1")
    other = BusRun("memory://secret-env", "r2", secret="given")
    try:
        assert (run.secret, other.secret) == ("from-env", "given")
        assert run.control.verifier.enabled
    finally:
        run.close()
        other.close()


@pytest.mark.parametrize("voter", [True, False], ids=["a voter waits", "no voter"])
def test_the_start_and_for_a_voter_each_epochs_figures_are_written_without_the_linger(
    bus_url: str, client: BusClient, run_id: str, voter: bool
) -> None:
    # Outside barrier mode a voter judges each epoch as soon as its figures are on the bus; a
    # linger (here an hour, so that nothing else writes) must not hold them, nor RUN_STARTED,
    # which workers wait for to join. Without a voter the figures wait for the next round.
    if voter:
        client.append(TOPICS.control(run_id), joined(run_id, "voter"))
    publisher = ThreadedPublisher(lambda: open_bus(bus_url), flush_interval=3600)
    run = BusRun(bus_url, run_id, publisher=publisher, heartbeat_timeout=3600)
    trainer, _ = train_and_validate(run)
    events = TOPICS.events(run_id)

    def written(epoch: int, split: str) -> bool:
        return any(
            env.type == "EPOCH_COMPLETED" and env.epoch == epoch and env.data["split"] == split
            for env in client.read(events)
        )

    def previous_epoch_written(engine: Engine) -> None:
        previous = engine.state.epoch - 1  # the epoch about to start, less one
        wait_until(lambda: written(previous, "train") and written(previous, "val"), "figures")

    if voter:
        trainer.add_event_handler(Events.EPOCH_STARTED(lambda _, n: n > 1), previous_epoch_written)
    try:
        with run:
            wait_until(lambda: "RUN_STARTED" in types(client.read(events)), "RUN_STARTED")
            trainer.run([1, 2, 3], max_epochs=3)
            assert written(1, "val") is voter
        run.finish()
    finally:
        publisher.close()
    assert types(client.read(events)).count("EPOCH_COMPLETED") == 6  # finish() wrote the rest
