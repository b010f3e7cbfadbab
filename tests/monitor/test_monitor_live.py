"""The monitor against a live run: `trainer run --bus` and `trainer worker` processes on a
private Redis, watched by the monitor from before the run starts until a voter stops it.

What the rendered text must show is read back from the run's streams with redis-py and the
envelope codec (stack_harness), not from the monitor.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from stack.stack_harness import Stack

from trainer.cli import main
from workers.monitor.app import MonitorOptions, monitor

RUN = "watched"
HANG_GUARD = 120.0


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """Processes on the session's private Redis (flushed), working in the test's directory."""
    s = Stack(redis_url, tmp_path)
    yield s
    s.close()


def kept_checkpoints(stack: Stack) -> dict[str, list[str]]:
    """File name -> aliases of the checkpoints saved and not pruned, as the streams say."""
    kept: dict[str, list[str]] = {}
    for e in stack.events(RUN, "CHECKPOINT_SAVED", "CHECKPOINT_PRUNED"):
        name = os.path.basename(e.data["path"])
        if e.type == "CHECKPOINT_PRUNED":
            kept.pop(name, None)
            continue
        for aliases in kept.values():
            aliases[:] = [a for a in aliases if a not in e.data["aliases"]]
        kept[name] = list(e.data["aliases"])
    return kept


def test_a_live_run_stopped_by_a_voter_is_shown_to_its_end(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    config = stack.config(
        train={"epochs": 3, "epoch_length": 5},
        # min_delta 1.0: no epoch ever improves enough, so the voter stops the second epoch
        early_stopping={"patience": 1, "min_delta": 1.0},
        checkpoint={"n_saved": 1, "n_best": 1},
    )
    out = Console(record=True, width=120, force_terminal=False)
    status: list[int] = []
    # The monitor runs first, with no run id: it waits for the run and follows it.
    watcher = threading.Thread(
        target=lambda: status.append(asyncio.run(monitor(MonitorOptions(stack.url), out)))
    )
    watcher.start()
    workers = [
        stack.worker("metrics", RUN),
        stack.worker("checkpoint", RUN),
        stack.worker("early-stop", RUN, "--name", "es-1"),
    ]
    trainer = stack.trainer(config, RUN)
    watcher.join(HANG_GUARD)
    assert not watcher.is_alive(), "the monitor did not end with the run"
    assert status == [0]
    trainer.succeeded()
    for w in workers:
        w.succeeded()
    text = out.export_text()

    assert f"run {RUN} (digits)" in text
    finish = stack.finished(RUN)
    assert (finish.data["status"], finish.data["by"]) == ("terminated", "es-1")
    assert f"status: terminated by es-1: {finish.data['reason']}" in " ".join(text.split())
    latest: dict[tuple[str, str], float] = {}
    for e in stack.events(RUN, "METRICS"):
        for name, value in e.data["values"].items():
            latest[(e.data["split"], name)] = value
    assert {split for split, _ in latest} == {"train", "val"}
    for (split, name), value in latest.items():
        row = next(line for line in text.splitlines() if line.split()[:2] == [split, name])
        assert f"{value:.4f}" in row
    joined = {
        e.data["name"]
        for e in stack.envelopes(stack.topics.control(RUN))
        if e.type == "WORKER_JOINED"
    }
    assert len(joined) == 3 and "es-1" in joined
    assert all(name in text for name in joined)
    assert "stop @ epoch 2" in text  # the voter's last vote, on the second epoch
    kept = kept_checkpoints(stack)
    assert kept
    for name, aliases in kept.items():
        row = next(line for line in text.splitlines() if name in line)
        assert ", ".join(aliases) in row

    # A tail reader only: the groups on the events stream are the workers' own, and nothing
    # else read by the monitor has a group at all.
    raw = stack.raw()
    groups = {g["name"].decode() for g in raw.xinfo_groups(stack.topics.events(RUN))}
    assert groups == {"metrics", "checkpoint", "early-stop:es-1"}
    for topic in (stack.topics.control(RUN), stack.topics.registry()):
        assert raw.xinfo_groups(topic) == []

    # The command itself, on the finished run: once, and replayed fast.
    capsys.readouterr()
    assert main(["monitor", "--bus", stack.url, "--run", RUN, "--once"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"run {RUN} (digits)" in printed and "status: terminated by es-1" in printed
    assert main(["monitor", "--bus", stack.url, "--replay", "--speed", "1000"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"run {RUN} (digits)" in printed and "status: terminated by es-1" in printed
