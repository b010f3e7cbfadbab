"""examples/workers/memory_guard.py: a kind of your own and a probe, from the config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ._run import EXAMPLES, ROOT, printed, read_json, run_cli

GUARD = "examples.workers.memory_guard"
CHEAP = ["train.epochs=2", "train.epoch_length=4", "checkpoint.every=null"]


def test_the_guard_stops_an_embedded_run_once_the_probe_passes_its_limit(tmp_path):
    # As the README runs it: the `trainer` command from the repository's root, no PYTHONPATH.
    # (A process of its own: in pytest's, `examples` is tests/examples.)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "trainer"),
            "run",
            "examples/digits.yaml",
            *CHEAP,
            f"run.dir={tmp_path}",
            "train.progress_bar=false",
            f"bus.probes=[{GUARD}:memory_mb]",
            f"workers=[metrics,{GUARD}:MemoryGuard]",
            "extra.memory_guard.limit_mb=1",
        ],
        cwd=ROOT,
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = read_json(Path(printed(r"^outputs: (.+)$", done.stdout)) / "metrics.json")
    assert (result["status"], result["epochs"]) == ("terminated", 1)
    assert result["voter"].startswith("memory-guard-")  # the class's kind names it on the bus
    assert result["reason"].startswith("probe/memory_mb ")
    assert "passed the limit of 1 MB at iteration 1" in result["reason"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "workers=[metrics,json:Guard]",
            "trainer: error: worker kind 'json:Guard' (config 'workers[1]', set by override "
            "'workers=[metrics,json:Guard]'): module 'json' has no attribute 'Guard'; "
            "check the name after ':'",
        ),
        (
            "workers=[metrics,json:dumps]",
            "trainer: error: worker kind 'json:dumps' (config 'workers[1]', set by override "
            "'workers=[metrics,json:dumps]'): json:dumps is a function, not a subclass of "
            "workers.base.Worker; derive the class from Worker",
        ),
        (
            "bus.probes=[no_such_pkg.probes:mb]",
            "trainer: error: probe 'no_such_pkg.probes:mb' (config 'bus.probes[0]', set by "
            "override 'bus.probes=[no_such_pkg.probes:mb]'): no module 'no_such_pkg' on the "
            "path: run from the directory that holds it, put that directory on PYTHONPATH, or "
            "pip install its package",
        ),
    ],
)
def test_a_bad_import_path_in_the_config_is_refused_before_anything_is_made(
    capsys, tmp_path, override, expected
):
    status, _, err = run_cli(
        capsys, "run", EXAMPLES / "digits.yaml", f"run.dir={tmp_path}/runs", override
    )
    assert (status, err) == (2, expected + "\n")
    assert not (tmp_path / "runs").exists()
