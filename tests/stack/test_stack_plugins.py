"""A worker kind of your own over Redis: examples/workers/memory_guard.py's guard as a process of
its own, voting on the memory the trainer's probe puts in ITERATION_COMPLETED outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stack_harness import ROOT, Stack, eventually

GUARD = "examples.workers.memory_guard"


def joined(stack: Stack) -> list[tuple[str, bool]]:
    """(kind, votes) of each WORKER_JOINED on run "mem"'s control topic."""
    control = stack.envelopes(stack.topics.control("mem"))
    return [(e.data["kind"], e.data["votes"]) for e in control if e.type == "WORKER_JOINED"]


def test_a_kind_by_import_path_joins_under_its_kind_and_stops_the_run(
    stack: Stack, tmp_path: Path
) -> None:
    config = stack.config(
        train={"epochs": 2, "epoch_length": 4},
        checkpoint={"every": None},
        early_stopping={"patience": None},
        bus={"probes": [f"{GUARD}:memory_mb"]},
    )
    # As the README runs it: the `trainer` command from the repository's root, no PYTHONPATH.
    env = {k: v for k, v in stack.env.items() if k != "PYTHONPATH"}
    log = tmp_path / "guard.log"
    command = str(Path(sys.executable).parent / "trainer")
    options = ["--bus", stack.url, "--run", "mem", "--limit-mb", "1", "--heartbeat", "0.5"]
    with open(log, "w") as out:
        guard = subprocess.Popen(
            [command, "worker", f"{GUARD}:MemoryGuard", *options],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # Joined before the trainer starts: it is counted (and votes) from the first epoch on.
        eventually(lambda: joined(stack), 120, "the guard's WORKER_JOINED")
        stack.trainer(config, "mem").succeeded()
        assert guard.wait(120) == 0, log.read_text()
    finally:
        if guard.poll() is None:
            os.killpg(guard.pid, 9)
            guard.wait()
    assert joined(stack) == [("memory-guard", True)]
    outputs = [e.data["outputs"] for e in stack.events("mem", "ITERATION_COMPLETED")]
    assert outputs and all(o["probe/memory_mb"] > 1 for o in outputs)
    finished = stack.finished("mem")
    assert finished is not None
    assert (finished.data["status"], finished.data["epochs"]) == ("terminated", 1)
    assert finished.data["voter"].startswith("memory-guard-")
    assert finished.data["reason"].startswith("probe/memory_mb ")
