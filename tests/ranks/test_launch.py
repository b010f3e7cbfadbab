"""`trainer run --nproc N`: what it refuses before starting anything, and the one line it prints
when a rank fails (from torch's launcher summary, else from the ranks' own records)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from trainer.checkpoint_store import capture_rng_state
from trainer.cli import main
from trainer.cli.launch import (
    RankEnding,
    failure_line,
    recorded_failures,
    summary_failures,
    torchrun_argv,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "digits.yaml"

# The end of what torch.distributed.run printed when rank 1 of 2 was SIGKILLed (torch 2.13).
SUMMARY = """
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
======================================================
trainer.cli FAILED
------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-02_01:36:41
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 29017)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_01:36:40
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 29018)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 29018
======================================================
"""


def run_main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    """The CLI in this process; (exit status, stderr)."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


def test_several_ranks_on_an_in_memory_bus_are_refused_in_one_line(
    capsys, tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("TRAINER_BUS_URL", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    status, err = run_main(
        capsys,
        "run",
        EXAMPLE,
        f"run.dir={tmp_path}/runs",
        "--nproc",
        "2",
        "--bus",
        "memory://here",
    )
    assert status == 2
    assert err.count("\n") == 1
    assert err.startswith("trainer: error: --nproc 2 with --bus memory://here: the in-memory bus")
    assert "leave --bus (and TRAINER_BUS_URL) out" in err
    assert not (tmp_path / "runs").exists()


def test_a_number_of_ranks_below_one_is_refused(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    status, err = run_main(capsys, "run", EXAMPLE, f"run.dir={tmp_path}/runs", "--nproc", "0")
    assert status == 2 and "--nproc 0" in err
    assert not (tmp_path / "runs").exists()


def test_without_a_bus_the_ranks_run_the_embedded_default(tmp_path) -> None:
    argv = torchrun_argv(2, None, [], bus_url=None, run_id="r1", run_dir=tmp_path, resume=None)
    assert argv[7:] == ["trainer.cli", "run", "--run-id", "r1", "--run-dir", str(tmp_path)]


def test_the_ranks_run_the_same_command_on_one_run_id_and_directory(tmp_path) -> None:
    argv = torchrun_argv(
        2,
        "job.yaml",
        ["train.epochs=3"],
        bus_url="redis://h:6379/0",
        run_id="r1",
        run_dir=tmp_path,
        resume=tmp_path / "checkpoints" / "c.pt",
    )
    assert argv[1:7] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
    ]
    assert argv[7:] == [
        "trainer.cli",
        "run",
        "job.yaml",
        "train.epochs=3",
        "--bus",
        "redis://h:6379/0",
        "--run-id",
        "r1",
        "--run-dir",
        str(tmp_path),
        "--resume",
        str(tmp_path / "checkpoints" / "c.pt"),
    ]


def test_the_failed_rank_is_named_first_with_how_it_ended() -> None:
    failures = summary_failures(SUMMARY)
    assert failures == [RankEnding(1, -9, 29018), RankEnding(0, 1, 29017)]
    assert failure_line(failures, 1) == (
        "the job failed: rank 1 (pid 29018) was killed by SIGKILL; "
        "then rank 0 (pid 29017) exited with status 1"
    )


def test_without_a_summary_the_ranks_records_tell(tmp_path) -> None:
    ranks = tmp_path / ".ranks"
    ranks.mkdir()
    for rank, pid in ((0, 100), (1, 101)):
        (ranks / f"{rank}.json").write_text(json.dumps({"rank": rank, "pid": pid}))
    (ranks / "0.exit.json").write_text(json.dumps({"status": 1}))
    assert summary_failures("no summary here") == []
    line = failure_line(recorded_failures(tmp_path, 2), 1)
    assert line == (
        "the job failed: rank 1 (pid 101) ended without reporting how (killed before it could); "
        "then rank 0 (pid 100) exited with status 1"
    )


def test_a_checkpoint_of_two_ranks_is_not_resumed_by_three(
    capsys, tmp_path, monkeypatch, redis_url
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    checkpoint = tmp_path / "two_ranks.pt"
    rng = capture_rng_state()
    torch.save(
        {"model": {}, "optimizer": {}, "trainer": {}, "rng": {"ranks": [rng, rng]}}, checkpoint
    )
    status, err = run_main(
        capsys,
        "run",
        EXAMPLE,
        f"run.dir={tmp_path}/runs",
        "--nproc",
        "3",
        "--bus",
        redis_url,
        "--resume",
        checkpoint,
    )
    assert status == 2 and err.count("\n") == 1, err
    assert "saved by a job of 2 rank(s), resumed by one of 3" in err and "--nproc 2" in err
    assert not (tmp_path / "runs").exists()
