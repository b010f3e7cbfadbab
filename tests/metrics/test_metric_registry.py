"""Metric identity on the wire: every built-in metric survives state -> message -> msgpack ->
rebuilt metric, and merged halves compute what the whole data computes (and scikit-learn)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from trainer.metrics import (
    Accuracy,
    ConfusionMatrix,
    F1Score,
    Metric,
    Precision,
    Recall,
    RunningAverage,
    registry,
)
from trainer.metrics.registry import (
    BUILTIN_METRICS,
    MetricMessageError,
    MetricNotPortable,
    UnknownMetricClass,
    metric_from_message,
    metric_from_settings,
    metric_state_message,
    portable_metric_states,
    register_metric,
    registered_metrics,
    scalar_values,
)

from ._catalogue import CASES, SCALAR_CASES, Case, _labels, _logits, feed
from ._data import close

ALL_CASES = [
    *CASES,
    *SCALAR_CASES,
    Case("confusion-normalized", lambda: ConfusionMatrix(normalize="true"), _labels),
    Case("precision-per-class", lambda: Precision(average=None), _logits),
    Case("f1-weighted-7", lambda: F1Score(average="weighted", num_classes=7), _labels),
]


def _np(x: Any) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _pred_labels(y_pred: Any) -> np.ndarray:
    p = _np(y_pred)
    if p.ndim == 2 and not np.issubdtype(p.dtype, np.integer):
        return p.argmax(1) if p.shape[1] > 3 else (p > 0.5).astype(int)  # logits vs multilabel
    return (p > 0.5).astype(int) if np.issubdtype(p.dtype, np.floating) else p


def _confusion(y_pred: Any, y: Any, normalize: str | None = None) -> np.ndarray:
    pred, true = _pred_labels(y_pred), _np(y)
    labels = list(range(int(max(pred.max(), true.max())) + 1))
    return skm.confusion_matrix(true, pred, labels=labels, normalize=normalize)


# What scikit-learn (or numpy, for plain means) says each case computes on the whole data.
REFERENCE: dict[str, Callable[[Any, Any], Any]] = {
    "accuracy-binary": lambda p, y: skm.accuracy_score(_np(y), _pred_labels(p)),
    "accuracy-multiclass": lambda p, y: skm.accuracy_score(_np(y), _pred_labels(p)),
    "accuracy-labels": lambda p, y: skm.accuracy_score(_np(y), _np(p)),
    "accuracy-multilabel": lambda p, y: skm.accuracy_score(_np(y), _pred_labels(p)),
    "top2": lambda p, y: skm.top_k_accuracy_score(_np(y), _np(p), k=2, labels=range(4)),
    "precision-macro": lambda p, y: skm.precision_score(
        _np(y), _np(p), average="macro", zero_division=0
    ),
    "precision-binary": lambda p, y: skm.precision_score(
        _np(y), _pred_labels(p), average="binary", zero_division=0
    ),
    "recall-weighted": lambda p, y: skm.recall_score(
        _np(y), _pred_labels(p), average="weighted", zero_division=0
    ),
    "recall-per-class": lambda p, y: skm.recall_score(
        _np(y), _np(p), average=None, labels=range(7), zero_division=0
    ),
    "f1-micro": lambda p, y: skm.f1_score(_np(y), _np(p), average="micro", zero_division=0),
    "f1-multilabel": lambda p, y: skm.f1_score(
        _np(y), _pred_labels(p), average="macro", zero_division=0
    ),
    "confusion": _confusion,
    "confusion-normalized": lambda p, y: _confusion(p, y, "true"),
    "precision-per-class": lambda p, y: skm.precision_score(
        _np(y), _pred_labels(p), average=None, labels=range(4), zero_division=0
    ),
    "f1-weighted-7": lambda p, y: skm.f1_score(_np(y), _np(p), average="weighted", zero_division=0),
    "mse": lambda p, y: skm.mean_squared_error(_np(y), _np(p)),
    "mae": lambda p, y: skm.mean_absolute_error(_np(y), _np(p)),
    "rmse": lambda p, y: math.sqrt(skm.mean_squared_error(_np(y), _np(p))),
    "r2": lambda p, y: skm.r2_score(_np(y), _np(p)),
    "r2-1d": lambda p, y: skm.r2_score(_np(y), _np(p)),
    "loss-fn": lambda p, y: skm.mean_squared_error(_np(y), _np(p)),
    "loss-output": lambda p, y: float(np.mean(_np(p))),
    "average": lambda p, y: float(np.mean(_np(p))),
}


@pytest.fixture
def clean_registry() -> Any:
    """Registrations made by a test are undone after it."""
    saved = dict(registry._by_name)
    yield
    registry._by_name.clear()
    registry._by_name.update(saved)


def over_msgpack(message: dict) -> dict:
    """What a subscriber decodes: the message packed and unpacked by msgpack, nothing else."""
    return msgpack.unpackb(msgpack.packb(message, use_bin_type=True), raw=False)


def test_every_builtin_metric_is_registered_and_covered_here() -> None:
    assert set(BUILTIN_METRICS) <= set(registered_metrics().values())
    covered = {type(case.make()) for case in ALL_CASES} | {RunningAverage}
    assert set(BUILTIN_METRICS) <= covered
    assert set(REFERENCE) == {case.name for case in ALL_CASES}


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merged_halves_after_a_wire_trip_compute_the_whole(case: Case, seed: int) -> None:
    y_pred, y = case.data(np.random.default_rng(seed), 40)
    cut = 11 + seed * 7
    whole = feed(case, case.make(), y_pred, y)
    halves = [
        feed(case, case.make(), y_pred[:cut], y[:cut]),
        feed(case, case.make(), y_pred[cut:], y[cut:]),
    ]
    messages = [over_msgpack(metric_state_message(half)) for half in halves]
    assert {m["class"] for m in messages} == {type(whole).__name__}
    # The aggregator's way: a twin built from settings alone, every rank's state merged in.
    twin = metric_from_settings(messages[0]["class"], messages[0]["settings"])
    for message in messages:
        twin.merge(metric_from_message(message).state_dict())
    assert close(twin.compute(), whole.compute())
    assert close(whole.compute(), REFERENCE[case.name](y_pred, y))
    # And a rebuilt metric with its state loaded merges the other half like the original.
    rebuilt = metric_from_message(messages[0])
    rebuilt.merge(messages[1]["state"])
    assert close(rebuilt.compute(), whole.compute())


def test_running_average_travels_and_merges_by_its_documented_rule() -> None:
    # RunningAverage has no exact merge: merging gives the mean of the ranks' averages.
    src = RunningAverage(src=Accuracy(), alpha=0.9)
    plain = RunningAverage(alpha=0.9, output_transform=lambda out: out)
    g = np.random.default_rng(5)
    for _ in range(6):
        src.update((torch.from_numpy(g.random(8)), torch.from_numpy(g.integers(0, 2, 8))))
        plain.update(float(g.random()))
    messages = [over_msgpack(metric_state_message(m)) for m in (src, plain)]
    assert messages[0]["settings"] == {"alpha": 0.9, "epoch_bound": True}
    twin = metric_from_settings("RunningAverage", messages[0]["settings"])
    for message in messages:
        twin.merge(message["state"])
    assert twin.compute() == pytest.approx((src.compute() + plain.compute()) / 2)
    assert metric_from_message(messages[0]).compute() == pytest.approx(src.compute())


@pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.name)
def test_settings_are_msgpack_native_and_rebuild_the_same_identity(case: Case) -> None:
    metric = case.make()
    settings = metric.settings()
    assert settings is not None
    assert over_msgpack(settings) == settings  # nothing a callable or a tensor
    rebuilt = metric_from_settings(type(metric).__name__, settings)
    assert type(rebuilt) is type(metric)
    assert rebuilt.settings() == settings


def test_settings_name_what_compute_depends_on() -> None:
    assert Precision(average="weighted", num_classes=3).settings() == {
        "average": "weighted",
        "num_classes": 3,
        "is_multilabel": False,
        "threshold": 0.5,
    }
    assert ConfusionMatrix(num_classes=4, normalize="all").settings() == {
        "num_classes": 4,
        "normalize": "all",
        "threshold": 0.5,
    }
    assert Recall(average=None).settings()["average"] is None


def test_an_unknown_class_names_itself_and_the_registered_ones() -> None:
    with pytest.raises(UnknownMetricClass) as info:
        metric_from_settings("Perplexity", {})
    assert "'Perplexity'" in str(info.value)
    assert "Accuracy" in str(info.value) and "R2Score" in str(info.value)


class _Counter(Metric):
    """A user metric: counts updates, scaled by a setting."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(lambda out: out)
        self.scale = scale
        self.add_state("n", 0, "sum", torch.int64)

    def update(self, output: Any) -> None:
        self._state["n"] += 1

    def compute(self) -> float:
        return self.scale * self._state["n"]

    def settings(self) -> dict[str, Any]:
        return {"scale": self.scale}


@pytest.mark.usefixtures("clean_registry")
def test_a_user_metric_travels_once_registered() -> None:
    counter = _Counter(scale=2.0)
    counter.update(None)
    with pytest.raises(MetricNotPortable, match="register_metric"):
        metric_state_message(counter)
    assert register_metric(_Counter, name="tests.Counter") is _Counter
    message = over_msgpack(metric_state_message(counter))
    assert message == {"class": "tests.Counter", "settings": {"scale": 2.0}, "state": {"n": 1}}
    assert metric_from_message(message).compute() == 2.0
    with pytest.raises(ValueError, match="already registered"):
        register_metric(Accuracy, name="tests.Counter")


@pytest.mark.usefixtures("clean_registry")
def test_a_metric_that_cannot_travel_is_left_out_with_its_reason() -> None:
    class Opaque(_Counter):
        def settings(self) -> dict[str, Any] | None:
            return None

    class Callables(_Counter):
        def settings(self) -> dict[str, Any]:
            return {"fn": print}

    register_metric(Opaque)
    register_metric(Callables)
    metrics = {"acc": Accuracy(), "opaque": Opaque(), "callables": Callables()}
    states, skipped = portable_metric_states(metrics)
    assert list(states) == ["acc"]
    assert "settings() returned None" in skipped["opaque"]
    assert "settings['fn'] is a builtin_function_or_method" in skipped["callables"]


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        ([1, 2], "must be a map"),
        ({"class": "Accuracy", "state": {}}, "lacks the keys ['settings']"),
        ({"class": 3, "settings": {}, "state": {}}, "'class' must be a str"),
        ({"class": "Accuracy", "settings": {"bogus": 1}, "state": {}}, "bogus"),
        ({"class": "Accuracy", "settings": {}, "state": {"correct": 1}}, "missing ['total']"),
        ({"class": "Accuracy", "settings": {}, "state": {"correct": "x", "total": 1}}, "correct"),
    ],
)
def test_a_malformed_message_is_refused_naming_where_it_came_from(
    message: Any, fragment: str
) -> None:
    with pytest.raises(MetricMessageError) as info:
        metric_from_message(message, "metric_states['acc']")
    assert "metric_states['acc']" in str(info.value)
    assert fragment in str(info.value)


def test_scalar_values_keep_numbers_and_expand_dicts() -> None:
    assert scalar_values("acc", 0.5) == {"acc": 0.5}
    assert scalar_values("n", 3) == {"n": 3.0}
    assert scalar_values("one", torch.tensor([0.25])) == {"one": 0.25}
    assert scalar_values("cm", torch.eye(3)) == {}
    assert scalar_values("both", {"p": 0.5, "r": torch.tensor(0.25), "per": torch.ones(3)}) == {
        "p": 0.5,
        "r": 0.25,
    }
