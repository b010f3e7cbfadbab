"""A worker as its own process: `workers.runtime.main` ends gracefully on SIGTERM and SIGINT."""

from __future__ import annotations

import asyncio
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
