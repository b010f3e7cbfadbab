"""What metrics accept: output shapes of the step, input kinds, and the errors for bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from trainer.metrics import (
    Accuracy,
    ConfusionMatrix,
    F1Score,
    MeanAbsoluteError,
    MeanSquaredError,
    Precision,
    R2Score,
    Recall,
    RootMeanSquaredError,
    TopKCategoricalAccuracy,
    default_output_transform,
)
from trainer.metrics.transforms import PRED_KEYS, TARGET_KEYS

# --------------------------------------------------------------------------- output transform


@pytest.mark.parametrize("pred_key", PRED_KEYS)
@pytest.mark.parametrize("target_key", TARGET_KEYS)
def test_default_transform_reads_every_documented_key(pred_key: str, target_key: str) -> None:
    y_pred, y = object(), object()
    output = {pred_key: y_pred, target_key: y, "loss": 0.1}
    picked = default_output_transform(output)
    assert picked[0] is y_pred and picked[1] is y


def test_default_transform_passes_a_pair_through() -> None:
    y_pred, y = object(), object()
    assert default_output_transform((y_pred, y)) == (y_pred, y)


def test_default_transform_names_missing_keys_and_lists_what_is_there() -> None:
    with pytest.raises(KeyError, match=r"target.*'loss', 'y_pred'"):
        default_output_transform({"y_pred": 1, "loss": 2})


def test_default_transform_refuses_ambiguous_keys() -> None:
    with pytest.raises(KeyError, match=r"\['y_pred', 'logits'\]"):
        default_output_transform({"y_pred": 1, "logits": 2, "y": 3})


def test_default_transform_refuses_an_unreadable_output() -> None:
    with pytest.raises(TypeError, match="float"):
        default_output_transform(0.5)


def test_engine_style_dict_outputs_feed_metrics() -> None:
    metric = Accuracy()
    for output in ({"logits": torch.tensor([[0.1, 0.9]]), "target": torch.tensor([1])},):
        metric.update(metric.output_transform(output))
    assert metric.compute() == 1.0


# --------------------------------------------------------------------------- input kinds

LABELS_PRED, LABELS_TRUE = [0, 2, 1, 1, 0, 2, 2], [0, 1, 1, 1, 0, 2, 0]
VALUES_PRED, VALUES_TRUE = [0.5, 2.0, -1.0, 3.5, 0.0], [1.0, 2.5, -1.0, 2.0, 0.25]


def _kinds(values: list[Any]) -> dict[str, Any]:
    return {"list": values, "numpy": np.array(values), "tensor": torch.tensor(values)}


@pytest.mark.parametrize("kind", ["list", "numpy", "tensor"])
@pytest.mark.parametrize(
    ("make", "reference"),
    [
        (Accuracy, skm.accuracy_score),
        (Precision, lambda y, p: skm.precision_score(y, p, average="macro")),
        (
            lambda: Recall(average="weighted"),
            lambda y, p: skm.recall_score(y, p, average="weighted"),
        ),
        (lambda: F1Score(average="micro"), lambda y, p: skm.f1_score(y, p, average="micro")),
    ],
    ids=["accuracy", "precision", "recall", "f1"],
)
def test_label_inputs_of_every_kind(kind: str, make: Any, reference: Any) -> None:
    metric = make()
    metric.update((_kinds(LABELS_PRED)[kind], _kinds(LABELS_TRUE)[kind]))
    assert metric.compute() == pytest.approx(reference(LABELS_TRUE, LABELS_PRED))


@pytest.mark.parametrize("kind", ["list", "numpy", "tensor"])
@pytest.mark.parametrize(
    ("cls", "reference"),
    [
        (MeanSquaredError, skm.mean_squared_error),
        (MeanAbsoluteError, skm.mean_absolute_error),
        (RootMeanSquaredError, skm.root_mean_squared_error),
        (R2Score, skm.r2_score),
    ],
)
def test_value_inputs_of_every_kind(kind: str, cls: type, reference: Any) -> None:
    metric = cls()
    metric.update((_kinds(VALUES_PRED)[kind], _kinds(VALUES_TRUE)[kind]))
    assert metric.compute() == pytest.approx(reference(VALUES_TRUE, VALUES_PRED))


def test_plain_numbers_are_one_sample_each() -> None:
    mse, accuracy = MeanSquaredError(), Accuracy()
    for y_pred, y in zip(VALUES_PRED, VALUES_TRUE, strict=True):
        mse.update((y_pred, y))
    for y_pred, y in zip(LABELS_PRED, LABELS_TRUE, strict=True):
        accuracy.update((y_pred, y))
    assert mse.compute() == pytest.approx(skm.mean_squared_error(VALUES_TRUE, VALUES_PRED))
    assert accuracy.compute() == pytest.approx(skm.accuracy_score(LABELS_TRUE, LABELS_PRED))


def test_numpy_scalars_are_numbers() -> None:
    metric = MeanAbsoluteError()
    metric.update((np.float32(1.5), np.float64(0.5)))
    assert metric.compute() == pytest.approx(1.0)


def test_tensors_that_require_grad_are_accepted() -> None:
    y_pred = torch.tensor([0.5, 1.5], requires_grad=True)
    metric = MeanSquaredError()
    metric.update((y_pred * 2, torch.tensor([1.0, 3.0])))
    assert metric.compute() == pytest.approx(0.0)


def test_scalar_metrics_compute_to_python_floats() -> None:
    accuracy, mse = Accuracy(), MeanSquaredError()
    accuracy.update((torch.tensor([1, 0]), torch.tensor([1, 1])))
    mse.update((torch.tensor([1.0]), torch.tensor([0.0])))
    assert type(accuracy.compute()) is float and type(mse.compute()) is float


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make",
    [
        Accuracy,
        MeanSquaredError,
        MeanAbsoluteError,
        RootMeanSquaredError,
        R2Score,
        Precision,
        ConfusionMatrix,
        lambda: Accuracy(is_multilabel=True),
    ],
)
def test_mismatched_shapes_show_both_shapes(make: Any) -> None:
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5, 3\)"):
        make().update((torch.rand(4, 3), torch.randint(0, 2, (5, 3))))


@pytest.mark.parametrize("make", [Accuracy, Precision, ConfusionMatrix])
def test_scores_that_do_not_fit_the_labels_show_both_shapes(make: Any) -> None:
    with pytest.raises(ValueError, match=r"\(8, 3\).*\(6,\)"):
        make().update((torch.rand(8, 3), torch.randint(0, 3, (6,))))


def test_top_k_shows_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(8, 3\).*\(8, 1\)"):
        TopKCategoricalAccuracy(k=2).update((torch.rand(8, 3), torch.zeros(8, 1)))


def test_label_outside_the_scored_classes_is_an_error() -> None:
    with pytest.raises(ValueError, match="label 3"):
        Accuracy().update((torch.rand(2, 3), torch.tensor([0, 3])))


def test_fractional_labels_are_an_error() -> None:
    with pytest.raises(ValueError, match="integer class labels"):
        Accuracy().update((torch.rand(2, 3), torch.tensor([0.0, 1.5])))


def test_negative_labels_are_an_error() -> None:
    with pytest.raises(ValueError, match="-1"):
        Recall().update(([0, 1], [0, -1]))


def test_float_predictions_outside_unit_interval_are_taken_for_logits() -> None:
    with pytest.raises(ValueError, match="sigmoid"):
        Accuracy().update((torch.tensor([-2.0, 3.0]), torch.tensor([0, 1])))


def test_binary_probabilities_need_binary_targets() -> None:
    with pytest.raises(ValueError, match="0/1"):
        Accuracy().update((torch.tensor([0.2, 0.7]), torch.tensor([0, 2])))


def test_unreadable_input_names_the_culprit() -> None:
    with pytest.raises(TypeError, match=r"MeanSquaredError: y_pred.*str"):
        MeanSquaredError().update(("abc", [1.0]))
