"""LoopBridge under torch.distributed: a stop seen by one rank stops both at the same step.

Two ranks are two fresh processes (`_loop_rank.py`) in a gloo group, each a loop whose every
step all-reduces a tensor and reports to a LoopBridge on an in-memory bus of its own, so a
TERMINATE reaches one rank only. A rank that stopped alone would leave the other hanging in
the collective until the group's timeout fails it: the test would fail, not hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis_server import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORLD = 2
RANK_TIMEOUT = 120.0  # a hang guard, not an expectation


def run_ranks(tmp_path: Path, **args: object) -> list[dict[str, object]]:
    """Run both ranks to the end; each one's result (fail with the output of one that failed)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("TRAINER_BUS_SECRET", None)
    procs = []
    for rank in range(WORLD):
        spec = {**args, "rank": rank, "world_size": WORLD, "port": port, "out": str(tmp_path)}
        log = open(tmp_path / f"rank{rank}.log", "wb")  # noqa: SIM115 (closed below)
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, str(HERE / "_loop_rank.py"), json.dumps(spec)],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )
    failures = []
    for rank, (proc, log) in enumerate(procs):
        try:
            proc.wait(RANK_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if proc.returncode != 0:
            err = tmp_path / f"rank{rank}.err"
            why = err.read_text() if err.exists() else (tmp_path / f"rank{rank}.log").read_text()
            failures.append(f"rank {rank} exited {proc.returncode}:\n{why}")
    assert not failures, "\n".join(failures)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("signal_rank", [0, 1])
def test_a_terminate_seen_by_one_rank_stops_both_at_the_next_agreement(
    tmp_path: Path, signal_rank: int
) -> None:
    # Agreement every 5 steps (and at epoch ends, 8): seen during step 3, agreed at step 5.
    results = run_ranks(tmp_path, every=5, signal_rank=signal_rank, signal_at=3)
    for result in results:
        assert result["steps"] == [1, 2, 3, 4, 5]
        assert (result["status"], result["by"], result["reason"]) == (
            "terminated",
            "ops",
            "seen by one rank",
        )
