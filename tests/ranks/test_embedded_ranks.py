"""`trainer run CONFIG --nproc 2` without --bus: the embedded default across 2 ranks.

No Redis: the ranks share the run through torch.distributed, rank 0 hosts the config's workers
on its in-memory bus and presents the job to them as one publisher with figures reduced over
both ranks. One job of 3 epochs is shared by the module's assertions; a second one resumes a
copy of it under plain torchrun and is stopped by the embedded early-stop worker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from sklearn.metrics import accuracy_score
from stack_harness import ROOT, Proc

from trainer.tasks.mlp import mlp

from .conftest import HERE, kill_ranks
from .paced_digits import write_digits

pytestmark = pytest.mark.heavy(70)  # seconds in the suite: scheduled first

EPOCHS, EPOCH_LENGTH = 3, 6  # iterations per epoch, per rank
LAST = EPOCHS * EPOCH_LENGTH
# The resumed job: up to 6 epochs, stopped by early stopping at the end of its second (epoch 5).
MORE_EPOCHS, STOPPED_AT = 6, 5 * EPOCH_LENGTH
# Hang guards, far above what the runs take: a job that needs them is broken.
JOB_TIMEOUT = 240.0
COLLECTIVE_TIMEOUT = 30.0
LAYOUT = [
    "checkpoints/manifest.json",
    "config.yaml",
    "metrics.json",
    "metrics.jsonl",
    "run.json",
    "summary.json",
]


@dataclass
class Job:
    """A job that ran to its end: its run directory and what it printed."""

    run_dir: Path
    output: str


def environment(cwd: Path) -> dict[str, str]:
    """The ranks' environment: this checkout and paced_digits importable, no bus anywhere."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("TRAINER_BUS_URL", "TRAINER_BUS_SECRET", "WORLD_SIZE", "RANK"):
        env.pop(name, None)
    return env


def run_job(cwd: Path, name: str, argv: list[str | Path]) -> str:
    """Run `argv` in `cwd` to its end (exit 0) and return its output; kill what is left."""
    proc = Proc(name, [str(a) for a in argv], cwd, environment(cwd))
    try:
        return proc.succeeded(JOB_TIMEOUT)
    finally:
        proc.stop()
        kill_ranks(cwd)


def write_config(cwd: Path) -> Path:
    """examples/digits.yaml as 2 ranks run it here: short epochs, every checkpoint kept."""
    import yaml

    digits = write_digits(cwd / "digits.pt")
    cfg = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    cfg["run"]["dir"] = str(cwd / "runs")
    cfg["data"]["name"] = "paced_digits:build"
    cfg["train"] = {"epochs": EPOCHS, "epoch_length": EPOCH_LENGTH, "progress_bar": False}
    cfg["checkpoint"].update({"every": 1, "n_saved": None})
    cfg["dist"] = {"timeout": COLLECTIVE_TIMEOUT}
    cfg["extra"] = {"digits_file": str(digits)}
    path = cwd / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def completed(tmp_path_factory: pytest.TempPathFactory) -> Job:
    """`trainer run job.yaml --nproc 2`, no bus: 3 epochs to the end."""
    cwd = tmp_path_factory.mktemp("embedded")
    config = write_config(cwd)
    argv = [sys.executable, "-m", "trainer.cli", "run", config, "--nproc", "2"]
    output = run_job(cwd, "job", argv)
    (run_dir,) = (cwd / "runs").iterdir()
    return Job(run_dir, output)


@pytest.fixture(scope="module")
def stopped(completed: Job, tmp_path_factory: pytest.TempPathFactory) -> Job:
    """A copy of the completed job resumed by plain torchrun (no bus, no --run-dir) for up to
    6 epochs, with early stopping that no score can satisfy after its first evaluation."""
    cwd = tmp_path_factory.mktemp("resumed")
    config = write_config(cwd)
    shutil.copytree(completed.run_dir, cwd / "runs" / completed.run_dir.name)
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "trainer.cli",
        "run",
        config,
        "--resume",
        "latest",
        f"train.epochs={MORE_EPOCHS}",
        "early_stopping.patience=1",
        "early_stopping.min_delta=1.0",
    ]
    output = run_job(cwd, "resumed", argv)
    return Job(cwd / "runs" / completed.run_dir.name, output)


def checkpoint_at(run_dir: Path, iteration: int) -> dict[str, Any]:
    """The checkpoint of `run_dir` taken at `iteration`."""
    for path in sorted((run_dir / "checkpoints").glob("*.pt")):
        state = torch.load(path, weights_only=True)
        if state["trainer"]["iteration"] == iteration:
            return state
    raise AssertionError(f"no checkpoint of iteration {iteration} under {run_dir}")


def scored(run_dir: Path, iteration: int, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The weights saved at `iteration`, scored by this process on the whole split (x, y)."""
    model = mlp(64, [128], 10)
    model.load_state_dict(checkpoint_at(run_dir, iteration)["model"])
    with torch.no_grad():
        logits = model(x)
    return {
        "accuracy": float(accuracy_score(y.numpy(), logits.argmax(dim=1).numpy())),
        "loss": torch.nn.functional.cross_entropy(logits, y).item(),
    }


def json_of(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_two_ranks_without_a_bus_write_the_run_directory_of_one(completed: Job) -> None:
    run_dir = completed.run_dir
    for name in LAYOUT:
        assert (run_dir / name).is_file(), f"{name} missing: {sorted(run_dir.rglob('*'))}"
    assert re.findall(r"^epoch (\d+)/3", completed.output, re.MULTILINE) == ["1", "2", "3"]
    result = json_of(run_dir / "metrics.json")
    assert (result["status"], result["epochs"], result["iteration"]) == ("completed", 3, LAST)
    # The embedded checkpoint worker filed each epoch's checkpoint, named by its global score.
    manifest = json_of(run_dir / "checkpoints" / "manifest.json")
    assert [c["step"] for c in manifest["checkpoints"]] == [EPOCH_LENGTH * e for e in (1, 2, 3)]
    assert result["latest_checkpoint"] == manifest["latest"]
    # Rank 0 wrote it, holding both ranks' RNG states (each rank draws its own numbers).
    rng = checkpoint_at(run_dir, LAST)["rng"]["ranks"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    tracked = json_of(run_dir / "run.json")
    assert (tracked["status"], tracked["world_size"], tracked["iteration"]) == (
        "completed",
        2,
        LAST,
    )


def test_its_metrics_are_the_whole_validation_sets(completed: Job) -> None:
    _, _, x_val, y_val = torch.load(completed.run_dir.parent.parent / "digits.pt")
    result = json_of(completed.run_dir / "metrics.json")
    final = scored(completed.run_dir, LAST, x_val, y_val)
    assert result["val"]["accuracy"] == pytest.approx(final["accuracy"], abs=1e-12)
    assert result["val"]["loss"] == pytest.approx(final["loss"], rel=1e-5)
    # The tracking rows come from the embedded metrics worker: the whole split's too, per epoch.
    rows = [json.loads(line) for line in (completed.run_dir / "metrics.jsonl").open()]
    val_rows = {row["epoch"]: row for row in rows if "val/accuracy" in row}
    assert sorted(val_rows) == [1, 2, 3]
    for epoch, row in val_rows.items():
        expected = scored(completed.run_dir, EPOCH_LENGTH * epoch, x_val, y_val)
        assert row["val/accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
        assert row["val/loss"] == pytest.approx(expected["loss"], rel=1e-5)
    (last_train,) = [row for row in rows if row["epoch"] == 3 and "train/loss" in row]
    assert last_train["train/loss"] == pytest.approx(result["train"]["loss"], rel=1e-9)


def test_a_vote_of_rank_0s_early_stop_worker_stops_both_ranks_of_a_resumed_job(
    stopped: Job,
) -> None:
    assert "resuming from" in stopped.output
    assert re.findall(r"^epoch (\d+)/6", stopped.output, re.MULTILINE) == ["4", "5"]
    result = json_of(stopped.run_dir / "metrics.json")
    assert (result["status"], result["epochs"], result["iteration"]) == (
        "terminated",
        5,
        STOPPED_AT,
    )
    assert result["by"].startswith("early-stop") and "without improvement" in result["reason"]
    # Both ranks stopped at that iteration: both took part in its final checkpoint and ended well.
    assert len(checkpoint_at(stopped.run_dir, STOPPED_AT)["rng"]["ranks"]) == 2
    for rank in (0, 1):
        assert json_of(stopped.run_dir / ".ranks" / f"{rank}.exit.json") == {"status": 0}
    tracked = json_of(stopped.run_dir / "run.json")
    assert (tracked["status"], tracked["by"]) == ("terminated", result["by"])
