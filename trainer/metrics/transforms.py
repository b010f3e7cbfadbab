"""Output transforms (engine output -> metric input) and input conversion and validation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

PRED_KEYS: tuple[str, ...] = ("y_pred", "pred", "preds", "logits")
TARGET_KEYS: tuple[str, ...] = ("y", "label", "labels", "target", "targets")


def _pick(output: Mapping[str, Any], keys: tuple[str, ...], role: str) -> Any:
    # A plain loop: this runs for every metric on every batch, so no list is built unless the
    # output turns out to be ambiguous.
    found = None
    for key in keys:
        if key in output:
            if found is not None:
                several = [k for k in keys if k in output]
                raise KeyError(
                    f"output dict has several {role} keys {several}: keep one or pass an "
                    "output_transform"
                )
            found = key
    if found is None:
        raise KeyError(
            f"output dict has no {role}: expected one of {list(keys)}, got keys {sorted(output)}"
        )
    return output[found]


def default_output_transform(output: Any) -> tuple[Any, Any]:
    """Return `(y_pred, y)` from a pair or from a dict with prediction and target keys."""
    if isinstance(output, Mapping):
        return _pick(output, PRED_KEYS, "prediction"), _pick(output, TARGET_KEYS, "target")
    if isinstance(output, (tuple, list)) and len(output) == 2:
        return output[0], output[1]
    raise TypeError(
        f"cannot read (y_pred, y) from an output of type {type(output).__qualname__}: return a "
        f"(y_pred, y) pair or a dict with one of {list(PRED_KEYS)} and one of {list(TARGET_KEYS)}, "
        "or give the metric an output_transform"
    )


def loss_output_transform(output: Any) -> Any:
    """Return `output["loss"]` from a dict output, or the output itself when it is a number."""
    if isinstance(output, Mapping):
        if "loss" not in output:
            raise KeyError(f"output dict has no 'loss' key (keys: {sorted(output)})")
        return output["loss"]
    return output


def identity(output: Any) -> Any:
    """Return the output unchanged."""
    return output


def as_tensor(value: Any, what: str) -> torch.Tensor:
    """Convert a tensor, numpy array, list or number to a detached tensor; `what` names it."""
    if isinstance(value, torch.Tensor):
        # detach() only where there is a graph to cut: it costs a new tensor per batch.
        return value.detach() if value.requires_grad else value
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(f"{what} is a numpy array of Python objects, not of numbers")
        # torch warns about read-only arrays (e.g. broadcast views): hand it a copy instead.
        return torch.from_numpy(array if array.flags.writeable else array.copy())
    if isinstance(value, (bool, int, float, list, tuple)):
        try:
            return torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                f"{what} is not a number or a rectangular list of numbers: {exc}"
            ) from exc
    raise TypeError(
        f"{what} must be a tensor, a numpy array, a list or a number, "
        f"got {type(value).__qualname__}"
    )


def is_integral(t: torch.Tensor) -> bool:
    """Tell whether a tensor holds integer or boolean values by dtype."""
    return not (t.dtype.is_floating_point or t.dtype.is_complex)


def check_same_shape(metric: str, y_pred: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ValueError showing both shapes unless `y_pred` and `y` have the same shape."""
    if y_pred.shape != y.shape:
        raise ValueError(
            f"{metric}: y_pred has shape {tuple(y_pred.shape)} but y has shape {tuple(y.shape)}; "
            "they must match"
        )


def pair_as_tensors(metric: str, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack a `(y_pred, y)` pair (or a dict) into two tensors, 0-d ones as one sample."""
    # Every batch of every classification metric passes here, so the usual input (a pair of
    # tensors outside autograd, as the default output transform returns it) takes no calls.
    if type(output) is tuple and len(output) == 2:
        tp, ty = output
    else:
        tp, ty = default_output_transform(output)
    if not isinstance(tp, torch.Tensor) or tp.requires_grad:
        tp = as_tensor(tp, f"{metric}: y_pred")
    if not isinstance(ty, torch.Tensor) or ty.requires_grad:
        ty = as_tensor(ty, f"{metric}: y")
    # A plain number is one sample, so that scalars go through the same batched code.
    return (tp.reshape(1) if tp.ndim == 0 else tp), (ty.reshape(1) if ty.ndim == 0 else ty)
