"""Whole stacks as users run them: `trainer run --bus` and `trainer worker` as separate processes.

Every process is the real command (`python -m trainer.cli ...`) with its output in a log file
that a failing assertion shows. Reading the bus back uses redis-py and the envelope codec only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import yaml

from bus import DecodeError, Envelope, Topics, decode

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "digits.yaml"
HERE = Path(__file__).resolve().parent


def eventually(check: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    """Poll `check()` until it returns something truthy; fail after `timeout` s (a hang guard)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
        time.sleep(0.05)


class Proc:
    """One `trainer ...` process of a stack, its output going to a log file."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log = cwd / f"{name}.log"
        self._out = open(self.log, "w")  # noqa: SIM115 (closed when the process is over)
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        """Everything the process printed so far."""
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text()

    def wait(self, timeout: float = 120.0) -> int:
        """Wait for the process to exit; fail with its output if it does not in time."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"{self.name} did not exit within {timeout} s:\n{self.output()}"
            ) from None
        self._out.close()
        return code

    def succeeded(self, timeout: float = 120.0) -> str:
        """Wait for exit status 0 and return the output; fail showing it otherwise."""
        code = self.wait(timeout)
        out = self.output()
        assert code == 0, f"{self.name} exited with {code}:\n{out}"
        return out

    def signal(self, sig: int) -> None:
        """Send `sig` to the process."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        """SIGKILL the process if it still runs (test teardown)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if not self._out.closed:
            self._out.close()


class Stack:
    """Starts the processes of one test and reads its runs back from Redis."""

    def __init__(self, url: str, cwd: Path) -> None:
        self.url = url
        self.cwd = cwd
        self.topics = Topics()
        self.procs: list[Proc] = []
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)]),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("TRAINER_BUS_SECRET", None)
        self._redis = redis.Redis.from_url(url)

    def config(self, name: str = "job.yaml", **sections: dict[str, Any]) -> Path:
        """examples/digits.yaml with `sections` merged over it, written into the test's dir."""
        cfg = yaml.safe_load(EXAMPLE.read_text())
        cfg["run"]["dir"] = str(self.cwd / "runs")
        cfg.setdefault("train", {})["progress_bar"] = False
        for section, values in sections.items():
            if isinstance(values, dict):
                cfg.setdefault(section, {}).update(values)
            else:
                cfg[section] = values
        path = self.cwd / name
        path.write_text(yaml.safe_dump(cfg))
        return path

    def start(self, name: str, *args: str | Path, env: dict[str, str] | None = None) -> Proc:
        """Start `trainer ARGS...` as a process named `name`."""
        argv = [sys.executable, "-m", "trainer.cli", *map(str, args)]
        return self._spawn(name, argv, env)

    def start_script(
        self, name: str, script: Path, *args: str | Path, env: dict[str, str] | None = None
    ) -> Proc:
        """Start `python SCRIPT ARGS...` as a process named `name`."""
        return self._spawn(name, [sys.executable, str(script), *map(str, args)], env)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None) -> Proc:
        proc = Proc(name, argv, self.cwd, {**self.env, **(env or {})})
        self.procs.append(proc)
        return proc

    def trainer(self, config: Path, run_id: str, *args: str | Path, **kw: Any) -> Proc:
        """`trainer run CONFIG --bus URL --run-id ID ...`."""
        return self.start(
            kw.pop("name", "trainer"),
            "run",
            config,
            "--bus",
            self.url,
            "--run-id",
            run_id,
            *args,
            **kw,
        )

    def worker(self, kind: str, run_id: str, *args: str | Path, **kw: Any) -> Proc:
        """`trainer worker KIND --bus URL --run ID ...`."""
        return self.start(
            kw.pop("name", kind), "worker", kind, "--bus", self.url, "--run", run_id, *args, **kw
        )

    def envelopes(self, topic: str) -> list[Envelope]:
        """Every envelope of a topic, in stream order (entries that do not decode are left out)."""
        out = []
        for _, fields in self._redis.xrange(topic):
            try:
                out.append(decode(fields.get(b"env", b"")))
            except DecodeError:  # garbage tests write undecodable entries on purpose
                continue
        return out

    def events(self, run_id: str, *types: str) -> list[Envelope]:
        """The run's events of the given types (all when none are given)."""
        found = self.envelopes(self.topics.events(run_id))
        return [e for e in found if not types or e.type in types]

    def finished(self, run_id: str) -> Envelope | None:
        """The run's RUN_FINISHED envelope, once published."""
        done = self.events(run_id, "RUN_FINISHED")
        return done[-1] if done else None

    def raw(self) -> redis.Redis:
        """A plain redis-py client on the stack's server."""
        return self._redis

    def close(self) -> None:
        """Kill whatever still runs."""
        for proc in self.procs:
            proc.stop()
        self._redis.close()


def manifest(checkpoint_dir: Path) -> dict[str, Any]:
    """The checkpoint manifest of a run's checkpoint directory."""
    return json.loads((checkpoint_dir / "manifest.json").read_text())
