"""EarlyStopping on a real Engine, against stop epochs reasoned out by hand."""

from __future__ import annotations

import pytest
import torch

from trainer import Engine, Events
from trainer.handlers import EarlyStopping
from trainer.metrics import MeanSquaredError

from .toy import make_toy, scripted


def completed_epochs(trainer: Engine, scores: list[float], **kwargs: object) -> int:
    """Run up to 10 epochs with EarlyStopping fed ``scores``; return how many epochs ran."""
    handler = EarlyStopping(score_function=scripted(scores), trainer=trainer, **kwargs)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, handler)
    epochs = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs.append(e.state.epoch))
    trainer.run([0, 1], max_epochs=10)
    assert epochs == list(range(len(epochs)))
    return len(epochs)


def noop_trainer() -> Engine:
    return Engine(lambda engine, batch: batch)


def test_patience_2_with_scores_1_2_2_2_stops_after_epoch_4() -> None:
    # Epoch 2 improves on 1; epochs 3 and 4 do not improve on 2: the second miss stops.
    assert completed_epochs(noop_trainer(), [1, 2, 2, 2, 3, 4], patience=2) == 4


def test_improvements_reset_the_count() -> None:
    # Misses at epochs 2, 4 and 5 never reach 3 in a row, epochs 7-9 do.
    scores = [5, 4, 6, 6, 5, 7, 7, 6, 7, 8]
    assert completed_epochs(noop_trainer(), scores, patience=3) == 9


def test_min_delta_and_cumulative_delta() -> None:
    scores = [0.0, 0.6, 1.2, 1.8, 2.4, 3.0, 3.6, 4.2, 4.8, 5.4]
    # Each step gains 0.6 <= min_delta: epochs 2 and 3 miss, so the run stops after epoch 3.
    assert completed_epochs(noop_trainer(), scores, patience=2, min_delta=1.0) == 3
    # Cumulative: every second step is 1.2 above the last improvement, so it never stops.
    kwargs = {"patience": 2, "min_delta": 1.0, "cumulative_delta": True}
    assert completed_epochs(noop_trainer(), scores, **kwargs) == 10


def test_min_mode_follows_a_loss() -> None:
    losses = [3.0, 2.0, 2.5, 1.5, 1.6, 1.5, 1.7, 0.5, 0.4, 0.3]
    # Best 1.5 at epoch 4; epochs 5, 6 and 7 do not go below it.
    assert completed_epochs(noop_trainer(), losses, patience=3, mode="min") == 7


def test_attached_to_an_evaluator_it_stops_the_trainer() -> None:
    """A frozen model (lr=0) has a constant validation MSE: patience 2 stops after epoch 3."""
    toy = make_toy(lr=0.0)

    def predict(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple:
        with torch.no_grad():
            return toy.model(batch[0]), batch[1]

    evaluator = Engine(predict)
    MeanSquaredError().attach(evaluator, "mse")
    handler = EarlyStopping(2, lambda e: -e.state.metrics["mse"], toy.trainer)
    evaluator.add_event_handler(Events.COMPLETED, handler)
    toy.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: evaluator.run(toy.data))
    terminated = []
    toy.trainer.add_event_handler(Events.TERMINATE, lambda: terminated.append(True))
    state = toy.trainer.run(toy.data, max_epochs=10)
    assert state.epoch == 2 and state.iteration == 3 * len(toy.data)
    assert terminated == [True]
    assert handler.counter == 2 and handler.best_score < 0


def test_state_dict_resumes_the_count() -> None:
    trainer = noop_trainer()
    first = EarlyStopping(3, scripted([1.0, 0.5, 0.5]), trainer)
    for _ in range(3):
        first(trainer)
    assert not trainer.should_terminate
    second = EarlyStopping(3, scripted([0.9]), trainer)
    second.load_state_dict(first.state_dict())
    second(trainer)
    assert trainer.should_terminate


def test_bad_arguments_name_the_culprit() -> None:
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(0, lambda e: 0.0, noop_trainer())
    with pytest.raises(TypeError, match="score_function"):
        EarlyStopping(1, 0.5, noop_trainer())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="trainer"):
        EarlyStopping(1, lambda e: 0.0, object())  # type: ignore[arg-type]
