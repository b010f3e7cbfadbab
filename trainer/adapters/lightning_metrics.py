"""A Lightning epoch's logged metrics as EPOCH_COMPLETED's `metrics` and `metric_states`.

Lightning keeps every value a LightningModule logs (`self.log`) in one flat
`trainer.callback_metrics`, named as the user named them (`val_loss`, `train/acc`,
`train_loss_epoch`). Each split's EPOCH_COMPLETED gets its own, under our names:

- a key's split is its prefix (`train`, `training`; `val`, `valid`, `validation`; then `_`, `/`,
  `.` or `-`), which is dropped: `val_loss` is the `val` split's `loss`, `train/acc` the `train`
  split's `acc`, as `trainer run` names its metrics;
- an unprefixed key belongs to the split of the loop that logged it (the validation loop's
  records, when they can be read), else to `train`;
- `<name>_step` values are left out (a step's, not the epoch's), `<name>_epoch` is `<name>`.

`metric_states` carries what another process can merge (the metrics worker, across ranks): a
torchmetrics object logged as such and of a class with a counterpart here (micro accuracy, mean
squared and absolute error, a mean), and a tensor logged with Lightning's default mean reduction
(its batch-size weighted sum and count, as our `Loss`). Anything else is published as a value
only. The validation loop's records are read from Lightning's logger connector (not a public
API): if they cannot be read, prefixes alone decide and only values are published.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from trainer.bridge.outputs import scalar

log = logging.getLogger(__name__)

TRAIN, VAL = "train", "val"
PREFIXES = {
    TRAIN: ("training", "train"),
    VAL: ("validation", "valid", "val"),
}
SEPARATORS = ("_", "/", ".", "-")
STEP_SUFFIX, EPOCH_SUFFIX = "_step", "_epoch"


def split_name(key: str) -> tuple[str | None, str]:
    """(the split `key`'s prefix names, or None; the name without that prefix)."""
    lowered = key.lower()
    for split, prefixes in PREFIXES.items():
        for prefix in prefixes:
            if (
                len(key) > len(prefix) + 1
                and lowered.startswith(prefix)
                and key[len(prefix)] in SEPARATORS
            ):
                return split, key[len(prefix) + 1 :]
    return None, key


def _epoch_key(key: str) -> tuple[str, bool] | None:
    """(the key without `_epoch`, whether it had it); None for a `_step` key."""
    if key.endswith(STEP_SUFFIX):
        return None
    if key.endswith(EPOCH_SUFFIX):
        return key[: -len(EPOCH_SUFFIX)], True
    return key, False


def epoch_metrics(
    callback_metrics: Mapping[str, Any], split: str, logged_by_val: Iterable[str] = ()
) -> dict[str, float]:
    """`split`'s scalar epoch values in `callback_metrics`, under their names without prefix."""
    val_names = set(logged_by_val)
    found: dict[str, float] = {}
    from_epoch_key: set[str] = set()
    for key, value in callback_metrics.items():
        stripped = _epoch_key(str(key))
        if stripped is None:
            continue
        base, is_epoch = stripped
        owner, name = split_name(base)
        if owner is None:
            owner = VAL if base in val_names else TRAIN
        if owner != split or (name in from_epoch_key and not is_epoch):
            continue
        number = scalar(value)
        if number is not None:
            found[name] = number
            if is_epoch:
                from_epoch_key.add(name)
    return found


# ---- metric states ---------------------------------------------------------------------------


def _total(value: Any) -> float:
    return float(value.sum()) if hasattr(value, "sum") else float(value)


def _whole(value: float) -> int | None:
    return int(value) if float(value).is_integer() else None


def _accuracy(metric: Any) -> dict[str, Any] | None:
    """torchmetrics' Binary/MulticlassAccuracy (global, micro, top-1) as our Accuracy."""
    if getattr(metric, "multidim_average", "global") != "global":
        return None
    if getattr(metric, "ignore_index", None) is not None:
        return None
    tp, fp, tn, fn = (_total(getattr(metric, k)) for k in ("tp", "fp", "tn", "fn"))
    name = type(metric).__name__
    if name == "BinaryAccuracy":
        correct, total = tp + tn, tp + tn + fp + fn
    elif name == "MulticlassAccuracy":
        if getattr(metric, "average", None) != "micro" or getattr(metric, "top_k", 1) != 1:
            return None
        correct, total = tp, tp + fn
    else:
        return None
    c, t = _whole(correct), _whole(total)
    if c is None or t is None:
        return None
    return {
        "class": "Accuracy",
        "settings": {"is_multilabel": False, "threshold": 0.5},
        "state": {"correct": c, "total": t},
    }


def _errors(ours: str, sums: str) -> Any:
    def state(metric: Any) -> dict[str, Any] | None:
        if getattr(metric, "num_outputs", 1) != 1:
            return None
        if ours == "MeanSquaredError" and getattr(metric, "squared", True) is not True:
            return None  # an RMSE: its state is the same, its value is not
        count = _whole(_total(metric.total))
        if count is None:
            return None
        return {
            "class": ours,
            "settings": {},
            "state": {"sum_errors": _total(getattr(metric, sums)), "count": count},
        }

    return state


def _mean(metric: Any) -> dict[str, Any] | None:
    """torchmetrics' MeanMetric with whole-number weights as our Loss (a weighted mean)."""
    count = _whole(_total(metric.weight))
    if count is None:
        return None
    return {
        "class": "Loss",
        "settings": {},
        "state": {"total": _total(metric.mean_value), "count": count},
    }


TORCHMETRICS = {
    "BinaryAccuracy": _accuracy,
    "MulticlassAccuracy": _accuracy,
    "MeanSquaredError": _errors("MeanSquaredError", "sum_squared_error"),
    "MeanAbsoluteError": _errors("MeanAbsoluteError", "sum_abs_error"),
    "MeanMetric": _mean,
}


def torchmetric_state(metric: Any) -> dict[str, Any] | None:
    """A torchmetrics object's state as our metric state message, or None when it has none."""
    mapper = TORCHMETRICS.get(type(metric).__name__)
    if mapper is None:
        return None
    try:
        return mapper(metric)
    except (AttributeError, TypeError, ValueError):
        return None


def _logged_mean(record: Any) -> dict[str, Any] | None:
    """A tensor logged with the mean reduction: its weighted sum and batch count, as our Loss."""
    if not getattr(record.meta, "is_mean_reduction", False):
        return None
    count = _whole(float(record.cumulated_batch_size))
    if not count:
        return None
    return {
        "class": "Loss",
        "settings": {},
        "state": {"total": float(record.value), "count": count},
    }


def loop_records(loop: Any) -> list[Any]:
    """The epoch-level records a Lightning loop logged (its `_results`), or [] if unreadable."""
    try:
        results = loop._results
        return [r for r in results.values() if getattr(r.meta, "on_epoch", False)]
    except AttributeError:
        return []


def record_names(records: Iterable[Any]) -> set[str]:
    """The names the records were logged under."""
    return {r.meta.name for r in records}


def metric_states(records: Iterable[Any], split: str, names: Iterable[str]) -> dict[str, Any]:
    """`metric_states` of `split`: the records whose state maps onto one of ours, by our name."""
    wanted = set(names)
    states: dict[str, Any] = {}
    for record in records:
        stripped = _epoch_key(record.meta.name)
        if stripped is None:
            continue
        owner, name = split_name(stripped[0])
        if (owner or split) != split or name not in wanted:
            continue
        try:
            if getattr(record, "is_tensor", True):
                state = _logged_mean(record)
            else:
                state = torchmetric_state(record.value)
        except (AttributeError, TypeError, ValueError) as exc:
            log.debug("metric %r of split %r: no state (%s)", record.meta.name, split, exc)
            state = None
        if state is not None:
            states[name] = state
    return states
