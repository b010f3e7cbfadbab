"""Timer: consistent values and step counts (no wall-clock expectations)."""

from __future__ import annotations

import math

from trainer import Events
from trainer.handlers import Timer

from .toy import make_toy


def test_iteration_and_run_timers_on_a_real_engine() -> None:
    toy = make_toy(n_batches=4)
    per_iteration = Timer(average=True).attach(
        toy.trainer,
        start=Events.STARTED,
        resume=Events.ITERATION_STARTED,
        pause=Events.ITERATION_COMPLETED,
        step=Events.ITERATION_COMPLETED,
    )
    whole_run = Timer().attach(toy.trainer)
    step_times = []
    toy.trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda: step_times.append(per_iteration.step_time()),
        priority=-1,
    )
    toy.trainer.run(toy.data, max_epochs=3)

    assert per_iteration.step_count == 12
    assert not per_iteration.running and not whole_run.running
    assert all(t > 0 for t in step_times)
    # The average is the total over the steps; the steps add up to the total.
    assert math.isclose(per_iteration.value() * 12, per_iteration.total)
    assert math.isclose(sum(step_times), per_iteration.total)
    # Iterations are part of the run: the run timer measured at least as much.
    assert 0 < per_iteration.total <= whole_run.value()
    # Paused timers do not move.
    assert whole_run.value() == whole_run.value()


def test_a_new_run_resets_the_timer() -> None:
    toy = make_toy(n_batches=2)
    timer = Timer(average=True).attach(toy.trainer, step=Events.ITERATION_COMPLETED)
    toy.trainer.run(toy.data, max_epochs=3)
    assert timer.step_count == 6
    toy.trainer.run(toy.data, max_epochs=1)
    assert timer.step_count == 2


def test_pause_and_resume_are_idempotent() -> None:
    timer = Timer()
    timer.pause()
    frozen = timer.value()
    timer.pause()
    assert timer.value() == frozen
    timer.resume()
    timer.resume()
    timer.step()
    assert timer.running and timer.step_count == 1
    assert frozen <= timer.step_time() <= timer.value()
    assert Timer().step_time() == 0.0
