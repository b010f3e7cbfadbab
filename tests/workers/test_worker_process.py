"""A worker as its own process: `workers.runtime.main` ends gracefully on SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from fake_trainer import HANG_GUARD, FakeTrainer, control, eventually, votes_of

from bus import open_bus

ROOT = Path(__file__).resolve().parents[2]

# What `trainer worker early-stop --bus URL --run ID --name NAME` comes down to; it also says
# whether anything imported torch on the way.
SCRIPT = """
import sys
from workers.runtime import RuntimeOptions, main
options = RuntimeOptions(bus_url=sys.argv[1], run_id=sys.argv[2], name=sys.argv[3], heartbeat=0.2)
status = main("early-stop", options, {"patience": 2})
print("torch imported:", "torch" in sys.modules)
sys.exit(status)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_ends_a_worker_process_with_status_0_after_worker_left(
    redis_url: str, sig: signal.Signals
) -> None:
    rid, name = f"run-{uuid.uuid4().hex[:8]}", f"voter-{uuid.uuid4().hex[:6]}"
    bus = open_bus(redis_url)
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, redis_url, rid, name],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await eventually(lambda: control(bus, rid, "WORKER_JOINED"), "WORKER_JOINED")
        trainer = FakeTrainer(bus, rid, config={"early_stopping": {"split": "val"}})
        await trainer.start()
        await trainer.metrics(0, "val", {"accuracy": 0.5})
        await eventually(lambda: votes_of(bus, rid, name), "the vote on epoch 0")

        proc.send_signal(sig)
        status = await asyncio.to_thread(proc.wait, HANG_GUARD)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ctl = await control(bus, rid)
        await bus.close()

    assert status == 0, err
    assert [env.type for env in ctl][-1] == "WORKER_LEFT"
    assert ctl[-1].data == {"kind": "early-stop", "name": name}
    assert "torch imported: False" in out
    # Structured lines naming the worker, its kind and the run.
    left = [line for line in err.splitlines() if "event=left" in line]
    assert len(left) == 1, err
    assert f"worker={name} kind=early-stop run={rid}" in left[0]
    assert f"signal={sig.name}" in err


def test_voters_and_the_runtime_never_import_torch() -> None:
    code = (
        "import sys, workers.runtime, workers.kinds, workers.early_stop, workers.nan_guard, "
        "workers.budget\n"
        "from workers.kinds import load_kind\n"
        "for kind in ('early-stop', 'nan-guard', 'budget'): load_kind(kind)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_main_refuses_bad_options_with_status_2(capfd: pytest.CaptureFixture[str]) -> None:
    from workers.runtime import RuntimeOptions, main

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        options = RuntimeOptions(bus_url="memory://x", run_id="r")
        assert main("early-stop", options, {"patience": 0}) == 2
    finally:  # main set up logging for its process; this one is pytest's
        root.handlers[:], root.level = handlers, level
    err = capfd.readouterr().err
    assert "level=error" in err and "early-stop --patience 0 is not a positive int" in err


class WorkerProcess:
    """`trainer worker ...` as its own process, its log in a file the test can read meanwhile."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log = tmp_path / f"worker-{uuid.uuid4().hex[:6]}.log"
        self._out = open(self.log, "w")  # noqa: SIM115 (closed in wait)
        argv = [sys.executable, "-m", "trainer.cli", "worker", *args]
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        """What the process logged so far."""
        return self.log.read_text()

    async def wait(self) -> int:
        """Its exit status (hang-guarded: a worker that does not end is killed, and fails)."""
        try:
            return await asyncio.to_thread(self.proc.wait, HANG_GUARD)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running:\n{self.output()}") from None
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL it if it still runs (a test that failed before it ended must not leak it)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


async def test_sigterm_while_a_worker_leaves_after_its_run_finished_still_exits_0(
    redis_url: str, tmp_path: Path
) -> None:
    rid = f"run-{uuid.uuid4().hex[:8]}"
    bus = open_bus(redis_url)
    worker = WorkerProcess(tmp_path, "early-stop", "--bus", redis_url, "--run", rid)
    try:
        trainer = FakeTrainer(bus, rid, config={"early_stopping": {"patience": 2}})
        await trainer.start()
        await eventually(lambda: control(bus, rid, "WORKER_JOINED"), "WORKER_JOINED")
        await trainer.finish()
        await eventually(lambda: 'event="run finished"' in worker.output(), "the run's end")
        # SIGTERM again and again while the worker lingers, leaves and exits on its own: one of
        # them lands in each phase of its way out (after its loop closed, too).
        while worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.005)
        status = await worker.wait()
    finally:
        worker.kill()
        await bus.close()
    assert status == 0, worker.output()
    assert "event=exit" in worker.output()


async def test_a_checkpoint_worker_waiting_for_metrics_says_so_and_stops_on_sigterm(
    redis_url: str, tmp_path: Path
) -> None:
    rid = f"run-{uuid.uuid4().hex[:8]}"
    config = {"train": {"epochs": 3}, "checkpoint": {"score": "accuracy"}}
    bus = open_bus(redis_url)
    args = ("--bus", redis_url, "--run", rid, "--score-timeout", "3600")
    worker = WorkerProcess(tmp_path, "checkpoint", *args)
    try:
        # Two ranks: the scores come only as METRICS, and no metrics worker runs.
        ranks = [FakeTrainer(bus, rid, config=config, rank=r, world_size=2) for r in range(2)]
        for rank in ranks:
            await rank.start()
        await eventually(lambda: control(bus, rid, "WORKER_JOINED"), "WORKER_JOINED")
        content = b"weights"
        path = tmp_path / ".incoming" / "checkpoint_10.pt"
        path.parent.mkdir()
        path.write_bytes(content)
        ready = {
            "path": str(path),
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "epoch": 0,
            "iteration": 10,
            "dir": str(tmp_path),
            "epoch_end": True,
        }
        await ranks[0].send(ranks[0].envelope("CHECKPOINT_READY", ready, epoch=0, iteration=10))
        line = await eventually(
            lambda: [x for x in worker.output().splitlines() if "event=waiting" in x],
            "the worker to say what it waits for",
        )
        worker.proc.send_signal(signal.SIGTERM)  # ... while it waits: it stops, it does not wait
        status = await worker.wait()
        left = await control(bus, rid, "WORKER_LEFT")
    finally:
        worker.kill()
        await bus.close()
    assert status == 0, worker.output()
    assert "kind=checkpoint" in line[0] and "waits_for=metrics" in line[0], line
    assert "epoch=1/3" in line[0] and "split=val" in line[0], line
    assert len(left) == 1
    assert path.exists()  # not filed unscored: left pending for a replica or the next start


HELP_CASES = [
    (["--help"], 0, "COMMAND"),
    (["run", "--help"], 0, "--resume"),
    (["worker", "--help"], 0, "--follow"),
    (["worker", "checkpoint", "--help"], 0, "--score-timeout"),
    (["worker"], 2, "usage: trainer worker"),
]


def test_help_exits_0_and_a_worker_without_a_kind_exits_2_with_the_usage() -> None:
    for args, expected, shown in HELP_CASES:
        done = subprocess.run(
            [sys.executable, "-m", "trainer.cli", *args], cwd=ROOT, capture_output=True, text=True
        )
        assert done.returncode == expected, (args, done.stdout, done.stderr)
        assert shown in (done.stdout if expected == 0 else done.stderr), (args, done)
    assert "required: KIND" in done.stderr
