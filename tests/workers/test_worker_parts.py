"""The runtime's small parts: kinds by name, the context's settings, the structured log lines."""

from __future__ import annotations

import logging

import pytest

from bus import Envelope
from workers.context import RunContext, config_value
from workers.kinds import KINDS, load_kind
from workers.logs import LogfmtFormatter, worker_log

CONFIG = {
    "checkpoint": {"n_saved": None, "n_best": 1},
    "early_stopping": {"patience": 3, "metric": "loss"},
}


def test_load_kind_names_the_known_kinds_for_an_unknown_one() -> None:
    assert {"metrics", "checkpoint", "early-stop", "nan-guard", "budget"} <= set(KINDS)
    for name in ("early-stop", "nan-guard", "budget"):
        kind = load_kind(name)
        assert kind.kind == name and kind.votes is True
    with pytest.raises(ValueError, match="unknown worker kind 'early_stop': use one of metrics"):
        load_kind("early_stop")


async def test_setting_prefers_the_option_then_the_config_then_the_default(
    worker_ctx: RunContext,
) -> None:
    ctx = worker_ctx
    assert ctx.setting(None, "early_stopping.patience", 5) == 5  # config not known yet
    started = {"config": CONFIG, "world_size": 4}
    ctx.learn_started(Envelope("RUN_STARTED", "r", "trainer:0", started))
    assert ctx.world_size == 4 and ctx.config == CONFIG
    assert ctx.setting(7, "early_stopping.patience", 5) == 7
    assert ctx.setting(None, "early_stopping.patience", 5) == 3
    assert ctx.setting(None, "early_stopping.mode", "max") == "max"
    # null in the config is a choice ("keep all"), not a gap for the default to fill
    assert ctx.setting(None, "checkpoint.n_saved", 2) is None
    assert ctx.setting(None, "checkpoint.n_best.deeper", 0) == 0
    assert config_value(CONFIG, "missing.key", "d") == "d"


def test_log_lines_are_key_value_pairs_with_the_workers_context_first() -> None:
    log = worker_log("workers.test", worker="w-1", kind="early-stop", run="r1")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    log.logger.addHandler(handler)
    log.logger.setLevel(logging.INFO)
    try:
        log.info("vote", extra={"stop": True, "epoch": 3, "reason": 'no "gain"\nat all'})
        logging.getLogger("bus.consumer").addHandler(handler)
        logging.getLogger("bus.consumer").warning("retrying %s", "x")
    finally:
        log.logger.removeHandler(handler)
        logging.getLogger("bus.consumer").removeHandler(handler)
    lines = [LogfmtFormatter().format(record) for record in records]
    assert lines[0].split(" ", 2)[1] == "level=info"
    assert lines[0].split(" ", 2)[2] == (
        "worker=w-1 kind=early-stop run=r1 event=vote stop=true epoch=3 "
        'reason="no \\"gain\\"\\nat all"'
    )
    assert lines[1].split(" ", 1)[1] == 'level=warning logger=bus.consumer event="retrying x"'
