"""ProgressBar writes one bar per epoch, with rate and chosen values, to the given file."""

from __future__ import annotations

import io

import torch

from trainer import Events
from trainer.handlers import ProgressBar

from .toy import make_toy


def test_one_bar_per_epoch_with_rate_metrics_and_output() -> None:
    toy = make_toy(n_batches=5)
    toy.trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(acc=0.75, ignored=1.0), priority=5
    )
    out = io.StringIO()
    ProgressBar(persist=True, file=out).attach(
        toy.trainer, metric_names=["acc"], output_transform=lambda loss: {"loss": loss}
    )
    toy.trainer.run(toy.data, max_epochs=2)
    text = out.getvalue()
    assert "Epoch [1/2]" in text and "Epoch [2/2]" in text
    assert text.count("5/5") >= 2
    assert "it/s" in text
    assert "loss=" in text
    assert "acc=0.75" in text
    assert "ignored" not in text


def test_all_metrics_and_tensor_outputs() -> None:
    toy = make_toy(n_batches=2)
    toy.trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(f1=0.5), priority=5
    )
    out = io.StringIO()
    ProgressBar(persist=True, file=out).attach(
        toy.trainer, metric_names="all", output_transform=lambda loss: (torch.tensor(loss), 7)
    )
    toy.trainer.run(toy.data)
    text = out.getvalue()
    assert "f1=0.5" in text and "output_0=" in text and "output_1=7" in text


def test_a_terminated_epoch_closes_its_bar() -> None:
    toy = make_toy(n_batches=5)
    stop = toy.trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=3), lambda e: e.terminate()
    )
    out = io.StringIO()
    ProgressBar(persist=True, file=out).attach(toy.trainer)
    toy.trainer.run(toy.data, max_epochs=2)
    assert "3/5" in out.getvalue() and "Epoch [2/2]" not in out.getvalue()
    # A later run starts a fresh bar rather than continuing the abandoned one.
    stop.remove()
    out.seek(0)
    out.truncate()
    toy.trainer.run(toy.data, max_epochs=1)
    assert "Epoch [1/1]" in out.getvalue() and "5/5" in out.getvalue()
    assert "6/5" not in out.getvalue()


def test_disabled_bars_write_nothing() -> None:
    for disable in (True, None):  # None: tqdm disables itself when the file is not a terminal
        toy = make_toy(n_batches=3)
        out = io.StringIO()
        ProgressBar(file=out, disable=disable).attach(toy.trainer)
        toy.trainer.run(toy.data, max_epochs=2)
        assert out.getvalue() == ""
