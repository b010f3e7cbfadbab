"""bus.messages is the one home of the contract: its check, the kinds, and the workers' defaults."""

from __future__ import annotations

import pytest
from test_cli import EXAMPLE, run_main
from test_cli_bad_input import one_line

from bus import Envelope, Rejected
from bus.messages import CONTROL, EVENTS, REQUIRED, TERMINATE, VOTE, WORKER_KINDS, check_data
from trainer.config_schema import CheckpointSection, DistSection, EarlyStoppingSection
from workers.checkpoint import CheckpointWorker
from workers.early_stop import EarlyStopWorker
from workers.kinds import KINDS
from workers.metrics import MetricsWorker

READY = {"path": "/c/x.pt", "size": 3, "sha256": "ab", "epoch": 0, "iteration": 5}


def test_the_check_names_the_missing_key_and_what_the_type_needs() -> None:
    data = {key: value for key, value in READY.items() if key != "sha256"}
    with pytest.raises(Rejected) as raised:
        check_data("CHECKPOINT_READY", data, topic=EVENTS)
    message = str(raised.value)
    assert "CHECKPOINT_READY" in message and "missing keys ['sha256']" in message
    assert "sha256 (str)" in message and "size (int)" in message


def test_the_check_names_a_mistyped_key_with_what_it_must_be() -> None:
    vote = {"stop": "yes", "reason": "r", "voter": "v", "epoch": 1}
    with pytest.raises(Rejected, match=r"^VOTE data 'stop' must be bool, got 'yes'$"):
        check_data(VOTE, vote, topic=CONTROL)
    with pytest.raises(Rejected, match=r"'epoch' must be int, got True"):
        check_data(VOTE, {**vote, "stop": True, "epoch": True}, topic=CONTROL)
    with pytest.raises(Rejected, match=r"'voter' must be a non-empty str"):
        check_data(VOTE, {**vote, "stop": True, "voter": ""}, topic=CONTROL)


def test_the_check_knows_which_topic_a_type_travels_on() -> None:
    check_data(TERMINATE, {"split": "train"}, topic=EVENTS)  # the engine stopped
    with pytest.raises(Rejected, match="missing keys \\['reason'\\]"):
        check_data(TERMINATE, {"split": "train"}, topic=CONTROL)  # stop now: needs a reason
    check_data("MY_EVENT", {}, topic=EVENTS)  # a custom event: not the catalogue's
    check_data(VOTE, {}, topic=EVENTS)  # VOTE travels on control only
    check_data("CHECKPOINT_READY", READY, topic=EVENTS)
    assert set(REQUIRED[EVENTS]) & set(REQUIRED[CONTROL]) == {TERMINATE}


def test_every_kind_of_the_catalogue_has_a_worker_class_and_no_other() -> None:
    assert set(KINDS) == set(WORKER_KINDS)


def test_an_unknown_worker_in_the_config_is_refused_naming_it_and_the_kinds(capsys) -> None:
    status, _, err = run_main(capsys, "run", EXAMPLE, "workers=[metrics,nope]")
    assert status == 2
    line = one_line(err)
    assert "'nope'" in line and "workers[1]" in line
    assert all(kind in line for kind in WORKER_KINDS) and "import path" in line, line


async def test_a_worker_without_config_uses_the_config_schemas_defaults(worker_ctx) -> None:
    settings = EarlyStopWorker(worker_ctx, {}).settings()
    schema = EarlyStoppingSection()
    assert (settings.patience, settings.metric, settings.split, settings.mode) == (
        schema.patience,
        schema.metric,
        schema.split,
        schema.mode,
    )
    assert (settings.min_delta, settings.cumulative_delta) == (
        schema.min_delta,
        schema.cumulative_delta,
    )

    policy, _, mode = CheckpointWorker(worker_ctx, {"score": "accuracy"}).retention()
    section = CheckpointSection()
    assert (policy.keep_last, policy.keep_best, mode) == (
        section.n_saved,
        section.n_best,
        section.mode,
    )
    # The one deliberate difference: no score unless one is named (a run whose config is not
    # the trainer's may publish no `accuracy`).
    assert CheckpointWorker(worker_ctx, {}).retention()[1] is None

    assert MetricsWorker(worker_ctx, {}).rank_timeout() == DistSection().rank_timeout


async def test_the_run_config_still_wins_over_the_schema_defaults(worker_ctx) -> None:
    config = {"early_stopping": {"patience": 2, "metric": "loss", "mode": "min"}}
    worker_ctx.learn_started(Envelope("RUN_STARTED", "r", "trainer:0", {"config": config}))
    settings = EarlyStopWorker(worker_ctx, {}).settings()
    assert (settings.patience, settings.metric, settings.mode) == (2, "loss", "min")
