"""The per-batch shortcuts for common inputs give what the general conversions give.

Logits (N, C) with int64 labels (N,) and a Python float loss skip conversions; every other
input kind goes the general way. Both must count alike and refuse the same bad input.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from trainer.metrics import Accuracy, ConfusionMatrix, Loss

from ._data import batches, multiclass_scores, rng

LABEL_KINDS: dict[str, Any] = {
    "int64 tensor": lambda y: y,
    "int32 tensor": lambda y: y.int(),
    "uint8 tensor": lambda y: y.to(torch.uint8),
    "float tensor of integers": lambda y: y.double(),
    "numpy int64": lambda y: y.numpy(),
    "list": lambda y: y.tolist(),
}


@pytest.mark.parametrize("kind", LABEL_KINDS)
def test_accuracy_of_logits_is_the_same_for_every_label_kind(kind: str) -> None:
    logits, y = multiclass_scores(3, 90, 4)
    metric = Accuracy()
    for y_pred, labels in batches(logits, y, n_batches=4):
        metric.update((y_pred, LABEL_KINDS[kind](labels)))
    reference = skm.accuracy_score(y.numpy(), logits.argmax(dim=1).numpy())
    assert metric.compute() == pytest.approx(reference)


def test_accuracy_reads_dict_outputs_and_pairs_alike() -> None:
    logits, y = multiclass_scores(4, 60, 3)
    from_dicts, from_pairs = Accuracy(), Accuracy()
    for y_pred, labels in batches(logits, y, n_batches=3):
        from_dicts.update(from_dicts.output_transform({"loss": 0.3, "logits": y_pred, "y": labels}))
        from_pairs.update([y_pred.numpy(), labels.numpy()])  # a list, not a tuple: general path
    reference = skm.accuracy_score(y.numpy(), logits.argmax(dim=1).numpy())
    assert from_dicts.compute() == pytest.approx(reference)
    assert from_pairs.compute() == pytest.approx(reference)


def test_logits_that_require_grad_are_counted_like_detached_ones() -> None:
    logits, y = multiclass_scores(5, 40, 3)
    weights = torch.ones(3, requires_grad=True)
    metric = Accuracy()
    metric.update((logits * weights, y))
    reference = skm.accuracy_score(y.numpy(), logits.argmax(dim=1).numpy())
    assert metric.compute() == pytest.approx(reference)


@pytest.mark.parametrize("make", [Accuracy, ConfusionMatrix])
def test_negative_int64_labels_with_logits_are_an_error(make: Any) -> None:
    with pytest.raises(ValueError, match=r">= 0, got -2"):
        make().update((torch.rand(3, 4), torch.tensor([0, -2, 1])))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_label_equal_to_the_class_count_is_an_error(dtype: torch.dtype) -> None:
    with pytest.raises(ValueError, match=r"label 4 .* 4 classes .*\(3, 4\)"):
        Accuracy().update((torch.rand(3, 4), torch.tensor([0, 4, 1], dtype=dtype)))


def test_batch_size_mismatch_of_logits_and_labels_shows_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(4,\)"):
        Accuracy().update((torch.rand(5, 3), torch.tensor([0, 1, 2, 0])))


def test_loss_of_python_floats_is_their_exact_mean() -> None:
    # Float64 values that float32 cannot hold: a detour through a float32 tensor would show.
    values = (rng(6).random(50) * 3.0).tolist()
    metric = Loss()
    for value in values:
        metric.update(metric.output_transform({"loss": value}))
    assert metric.compute() == pytest.approx(math.fsum(values) / len(values), rel=1e-12)


@pytest.mark.parametrize(
    "kind",
    ["float", "int", "float64 tensor", "numpy float64", "one-element array"],
)
def test_loss_is_the_same_for_every_number_kind(kind: str) -> None:
    values = [1.0, 4.0, 2.5, 0.25] if kind != "int" else [1, 4, 2, 7]
    make = {
        "float": float,
        "int": int,
        "float64 tensor": lambda v: torch.tensor(v, dtype=torch.float64),
        "numpy float64": np.float64,
        "one-element array": lambda v: np.array([v]),
    }[kind]
    metric = Loss()
    for value in values:
        metric.update(make(value))
    assert metric.compute() == pytest.approx(float(np.mean(values)), rel=1e-12)
