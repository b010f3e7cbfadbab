"""Running a trial as its own `trainer run` process: what `trainer agent` (and `trainer sweep`
with --bus) do for each trial.

The trial is the command a person would type, on the sweep's bus (as TRAINER_BUS_URL), with
the workers of its config in its own process (`--with-workers`: metrics, checkpoint,
tracking... beside the trainer, publishing on the bus where the pruner sees them), its run id
and directory fixed by the sweep, `--resume latest` when it is taken over, and `--nproc N` for
trials of N ranks. Its output goes to `trial.log` in its run directory. The process dies with
its agent (Linux: PR_SET_PDEATHSIG), so a lost agent never leaves a trial running that another
agent resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from workers.sweeps.agent import TrialJob

# The variable `trainer run` reads its bus from (trainer.cli.environment.BUS_URL_ENV).
BUS_URL_ENV = "TRAINER_BUS_URL"

# Seconds a trial's process has to end after SIGTERM before it is killed.
STOP_GRACE = 10.0
LOG_FILE = "trial.log"


def trial_argv(job: TrialJob, config_path: Path) -> list[str]:
    """The `trainer run` command line of a trial (its bus comes as TRAINER_BUS_URL: a
    password in a URL on a command line would show in `ps` and in its log)."""
    order = job.order
    argv = [sys.executable, "-m", "trainer.cli", "run", str(config_path)]
    argv += ["--run-id", order.run_id, "--run-dir", str(job.run_dir)]
    argv += ["--with-workers", "--sweep-trial", json.dumps(order.sweep, separators=(",", ":"))]
    if order.nproc > 1:
        argv += ["--nproc", str(order.nproc)]
    if job.resume:
        argv += ["--resume", "latest"]
    return argv


def _die_with_agent() -> None:
    """In the trial's process before it runs: the kernel sends it SIGTERM if the agent dies."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ProcessRunner:
    """Runs each trial as a `trainer run` process on `bus_url`; its exit status."""

    def __init__(self, bus_url: str, env: dict[str, str] | None = None) -> None:
        self.bus_url = bus_url
        self.env = env

    async def __call__(self, job: TrialJob) -> int:
        """Run the trial's process to its end (stopped with SIGTERM if cancelled)."""
        job.run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="trial-") as scratch:
            config_path = Path(scratch) / f"{job.order.run_id}.yaml"
            config_path.write_text(yaml.safe_dump(job.order.config, sort_keys=False))
            argv = trial_argv(job, config_path)
            env = {**(self.env if self.env is not None else os.environ), BUS_URL_ENV: self.bus_url}
            with open(job.run_dir / LOG_FILE, "ab") as out:
                out.write(f"$ {' '.join(argv)}\n".encode())
                out.flush()
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # its own group: the agent's Ctrl-C is the agent's
                    preexec_fn=_die_with_agent,
                )
                try:
                    return await proc.wait()
                except asyncio.CancelledError:
                    await _stop(proc)
                    raise


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the trial's process group (its ranks too), SIGKILL after STOP_GRACE."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
