"""Turn classification inputs (probabilities, logits, labels, indicators) into labels."""

from __future__ import annotations

import torch

from trainer.metrics.transforms import check_same_shape, is_integral


def integer_labels(
    metric: str, y: torch.Tensor, what: str, scores_shape: torch.Size | None = None
) -> torch.Tensor:
    """Return `y` as int64 labels, refusing non-integer floats and labels outside [0, C).

    C is `scores_shape[1]` when the labels go with scores of that shape, else unbounded.
    """
    if y.dtype is not torch.int64:  # int64 labels (the usual case) need no conversion
        if not is_integral(y) and not torch.equal(y, y.round()):
            raise ValueError(
                f"{metric}: {what} must hold integer class labels, got fractional values"
            )
        y = y.long()
    if y.numel():
        # One pass for both bounds: this check runs on every batch.
        lowest, highest = (int(v) for v in torch.aminmax(y))
        if lowest < 0:
            raise ValueError(f"{metric}: {what} must hold class labels >= 0, got {lowest}")
        if scores_shape is not None and highest >= scores_shape[1]:
            raise ValueError(
                f"{metric}: {what} has label {highest} but y_pred scores only "
                f"{scores_shape[1]} classes (shape {tuple(scores_shape)})"
            )
    return y


def _flat(t: torch.Tensor) -> torch.Tensor:
    """`t` as one dim; 1-d tensors are returned as they are (reshape costs a view per batch)."""
    return t if t.ndim == 1 else t.reshape(-1)


def _check_binary(metric: str, labels: torch.Tensor, what: str) -> None:
    if labels.numel() and int(labels.max()) > 1:
        raise ValueError(
            f"{metric}: {what} must be 0/1 for binary or multilabel inputs, got label "
            f"{int(labels.max())}"
        )


def _threshold(metric: str, y_pred: torch.Tensor, threshold: float) -> torch.Tensor:
    """Return 0/1 labels from probabilities, refusing values outside [0, 1] (likely logits)."""
    if y_pred.numel() and (float(y_pred.min()) < 0.0 or float(y_pred.max()) > 1.0):
        raise ValueError(
            f"{metric}: float y_pred of the same shape as y is read as probabilities, but it has "
            f"values outside [0, 1] (min {float(y_pred.min()):g}, max {float(y_pred.max()):g}); "
            "apply torch.sigmoid in the output_transform if these are logits"
        )
    return (y_pred > threshold).long()


def class_labels(
    metric: str, y_pred: torch.Tensor, y: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Return flat predicted and true labels and the class count the scores imply (0 if none).

    Accepted: scores `(N, C, ...)` with labels `(N, ...)` (argmax over C; C == 1 is read as
    binary probabilities), float probabilities of y's shape (thresholded), or integer labels of
    y's shape.
    """
    if y_pred.ndim == y.ndim + 1:
        shape = y_pred.shape
        # Plain size comparisons first; the trailing dims only matter beyond (N, C) with (N,).
        if shape[0] != y.shape[0] or (y.ndim > 1 and shape[2:] != y.shape[1:]):
            raise ValueError(
                f"{metric}: scores y_pred of shape {tuple(shape)} do not fit labels y of "
                f"shape {tuple(y.shape)}: expected y_pred (N, C, ...) for y (N, ...)"
            )
        num_classes = shape[1]
        if num_classes == 1:
            y_pred = y_pred.squeeze(1)
        else:
            true = _flat(integer_labels(metric, y, "y", shape))
            return _flat(y_pred.argmax(dim=1)), true, num_classes
    check_same_shape(metric, y_pred, y)
    true = _flat(integer_labels(metric, y, "y"))
    if is_integral(y_pred):
        return _flat(integer_labels(metric, y_pred, "y_pred")), true, 0
    _check_binary(metric, true, "y")
    return _flat(_threshold(metric, y_pred, threshold)), true, 2


def multilabel_indicators(
    metric: str, y_pred: torch.Tensor, y: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return 0/1 int64 indicators `(N, C, ...)` from multilabel probabilities or labels."""
    check_same_shape(metric, y_pred, y)
    if y.ndim < 2:
        raise ValueError(
            f"{metric}: multilabel inputs must have shape (N, C, ...), got {tuple(y.shape)}"
        )
    true = integer_labels(metric, y, "y")
    _check_binary(metric, true, "y")
    if is_integral(y_pred):
        pred = integer_labels(metric, y_pred, "y_pred")
        _check_binary(metric, pred, "y_pred")
    else:
        pred = _threshold(metric, y_pred, threshold)
    return pred, true
