"""Classification metrics against scikit-learn on random data fed in batches."""

from __future__ import annotations

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from trainer.metrics import (
    Accuracy,
    ConfusionMatrix,
    F1Score,
    Precision,
    Recall,
    TopKCategoricalAccuracy,
)

from ._data import close, fed, multiclass_scores, rng

SKLEARN_SCORE = {Precision: skm.precision_score, Recall: skm.recall_score, F1Score: skm.f1_score}


# --------------------------------------------------------------------------- Accuracy


def test_binary_accuracy_thresholds_probabilities_at_one_half() -> None:
    g = rng(0)
    probs = torch.from_numpy(g.random(97))
    y = torch.from_numpy(g.integers(0, 2, 97))
    got = fed(Accuracy(), probs, y).compute()
    assert got == pytest.approx(skm.accuracy_score(y.numpy(), probs.numpy() > 0.5))


def test_binary_accuracy_reads_a_single_score_column_as_probabilities() -> None:
    g = rng(1)
    probs = torch.from_numpy(g.random((50, 1)))
    y = torch.from_numpy(g.integers(0, 2, 50))
    got = fed(Accuracy(), probs, y).compute()
    assert got == pytest.approx(skm.accuracy_score(y.numpy(), probs.numpy()[:, 0] > 0.5))


def test_binary_accuracy_honours_a_custom_threshold() -> None:
    g = rng(2)
    probs, y = g.random(60), g.integers(0, 2, 60)
    got = fed(Accuracy(threshold=0.8), probs, y).compute()
    assert got == pytest.approx(skm.accuracy_score(y, probs > 0.8))


def test_multiclass_accuracy_from_logits() -> None:
    logits, y = multiclass_scores(3, 101, 5)
    got = fed(Accuracy(), logits, y).compute()
    assert got == pytest.approx(skm.accuracy_score(y.numpy(), logits.argmax(1).numpy()))


def test_multiclass_accuracy_from_labels() -> None:
    g = rng(4)
    y_pred, y = g.integers(0, 6, 80), g.integers(0, 6, 80)
    got = fed(Accuracy(), torch.from_numpy(y_pred), torch.from_numpy(y)).compute()
    assert got == pytest.approx(skm.accuracy_score(y, y_pred))


def test_multiclass_accuracy_with_extra_dims_argmaxes_over_dim_one() -> None:
    # Segmentation-style scores (N, C, H) with labels (N, H): every position is a sample.
    g = rng(5)
    scores, y = g.normal(size=(12, 4, 3)), g.integers(0, 4, (12, 3))
    got = fed(Accuracy(), torch.from_numpy(scores), torch.from_numpy(y)).compute()
    assert got == pytest.approx(skm.accuracy_score(y.ravel(), scores.argmax(1).ravel()))


def test_multilabel_accuracy_is_subset_accuracy() -> None:
    g = rng(6)
    y_pred, y = g.integers(0, 2, (90, 3)), g.integers(0, 2, (90, 3))
    got = fed(Accuracy(is_multilabel=True), y_pred, y).compute()
    assert got == pytest.approx(skm.accuracy_score(y, y_pred))


def test_multilabel_accuracy_thresholds_probabilities() -> None:
    g = rng(7)
    probs, y = g.random((70, 4)), g.integers(0, 2, (70, 4))
    got = fed(Accuracy(is_multilabel=True), probs, y).compute()
    assert got == pytest.approx(skm.accuracy_score(y, (probs > 0.5).astype(int)))


@pytest.mark.filterwarnings("ignore:'k' .* greater than or equal to 'n_classes'")
@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_top_k_accuracy(k: int) -> None:
    g = rng(8 + k)
    scores, y = g.normal(size=(83, 6)), g.integers(0, 6, 83)
    got = fed(TopKCategoricalAccuracy(k=k), scores, y).compute()
    expected = skm.top_k_accuracy_score(y, scores, k=k, labels=np.arange(6))
    assert got == pytest.approx(expected)


# --------------------------------------------------------------------------- P / R / F1


@pytest.mark.parametrize("cls", [Precision, Recall, F1Score])
@pytest.mark.parametrize("average", ["macro", "micro", "weighted", None])
def test_multiclass_scores_from_logits(cls: type, average: str | None) -> None:
    logits, y = multiclass_scores(10, 120, 4)
    got = fed(cls(average=average), logits, y).compute()
    expected = SKLEARN_SCORE[cls](y.numpy(), logits.argmax(1).numpy(), average=average)
    assert close(got, expected)


@pytest.mark.parametrize("cls", [Precision, Recall, F1Score])
@pytest.mark.parametrize("average", ["macro", "weighted"])
def test_multiclass_scores_from_labels_with_missing_classes(cls: type, average: str) -> None:
    # Labels 0, 2, 5 only: absent classes neither count in the macro mean nor weigh.
    g = rng(11)
    y_pred, y = g.choice([0, 2, 5], 60), g.choice([0, 2, 5, 2], 60)
    got = fed(cls(average=average), y_pred, y).compute()
    assert close(got, SKLEARN_SCORE[cls](y, y_pred, average=average))


@pytest.mark.parametrize("cls", [Precision, Recall, F1Score])
def test_zero_division_scores_zero_like_sklearn(cls: type) -> None:
    # Class 2 is never predicted (precision 0/0) and class 3 never occurs (recall 0/0).
    y = np.array([0, 1, 2, 2, 1, 0])
    y_pred = np.array([0, 1, 1, 3, 1, 0])
    for average in ("macro", "weighted", None):
        got = fed(cls(average=average), y_pred, y, n_batches=2).compute()
        expected = SKLEARN_SCORE[cls](y, y_pred, average=average, zero_division=0)
        assert close(got, expected), average


@pytest.mark.parametrize("cls", [Precision, Recall, F1Score])
def test_binary_average_is_the_positive_class_score(cls: type) -> None:
    g = rng(12)
    probs, y = g.random(77), g.integers(0, 2, 77)
    got = fed(cls(average="binary"), probs, y).compute()
    assert got == pytest.approx(SKLEARN_SCORE[cls](y, (probs > 0.5).astype(int)))


def test_binary_average_refuses_multiclass_labels() -> None:
    metric = fed(Precision(average="binary"), np.array([0, 1, 2]), np.array([0, 2, 1]))
    with pytest.raises(ValueError, match="binary"):
        metric.compute()


@pytest.mark.parametrize("cls", [Precision, Recall, F1Score])
@pytest.mark.parametrize("average", ["macro", "micro", "weighted", None])
def test_multilabel_scores(cls: type, average: str | None) -> None:
    g = rng(13)
    y_pred, y = g.integers(0, 2, (64, 5)), g.integers(0, 2, (64, 5))
    got = fed(cls(average=average, is_multilabel=True), y_pred, y).compute()
    assert close(got, SKLEARN_SCORE[cls](y, y_pred, average=average))


def test_per_class_scores_cover_num_classes() -> None:
    metric = fed(Recall(average=None, num_classes=4), np.array([0, 1, 1]), np.array([0, 1, 0]), 1)
    expected = skm.recall_score(
        [0, 1, 0], [0, 1, 1], average=None, labels=[0, 1, 2, 3], zero_division=0
    )
    assert close(metric.compute(), expected)


def test_label_beyond_num_classes_is_an_error() -> None:
    with pytest.raises(ValueError, match="num_classes=3"):
        Precision(num_classes=3).update(([0, 3], [0, 1]))


def test_unknown_average_is_an_error() -> None:
    with pytest.raises(ValueError, match="'samples'"):
        F1Score(average="samples")


# --------------------------------------------------------------------------- ConfusionMatrix


def test_confusion_matrix_from_logits() -> None:
    logits, y = multiclass_scores(14, 90, 4)
    got = fed(ConfusionMatrix(), logits, y).compute()
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), skm.confusion_matrix(y, logits.argmax(1)))


def test_confusion_matrix_grows_with_the_labels_seen() -> None:
    g = rng(15)
    y_pred, y = g.integers(0, 5, 40), g.integers(0, 5, 40)
    y_pred[-1] = y[-1] = 6  # a late, larger label: the matrix grows mid-stream
    got = fed(ConfusionMatrix(), y_pred, y).compute()
    expected = skm.confusion_matrix(y, y_pred, labels=np.arange(7))
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("normalize", ["true", "pred", "all"])
def test_confusion_matrix_normalized(normalize: str) -> None:
    logits, y = multiclass_scores(16, 50, 3)
    got = fed(ConfusionMatrix(normalize=normalize), logits, y).compute()
    expected = skm.confusion_matrix(y, logits.argmax(1), normalize=normalize)
    np.testing.assert_allclose(got.numpy(), expected)


def test_binary_confusion_matrix_from_probabilities() -> None:
    g = rng(17)
    probs, y = g.random(45), g.integers(0, 2, 45)
    got = fed(ConfusionMatrix(num_classes=2), probs, y).compute()
    expected = skm.confusion_matrix(y, probs > 0.5, labels=[0, 1])
    np.testing.assert_array_equal(got.numpy(), expected)
