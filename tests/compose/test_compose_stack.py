"""compose.yaml run for real, without Docker: every service's command as a local process with
that service's environment, the Redis address and the volume paths rewritten to the test's.

A broken command, option or variable in compose.yaml fails here the way `docker compose up`
would fail for a user.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import yaml
from compose_file import ROOT, environment, interpolate, load, volume_mounts
from stack.stack_harness import Proc, eventually

from trainer.tracking.reader import read_run

WORKERS = ("metrics", "checkpoint", "tracking", "early-stop")
EPOCHS = 4


def test_the_stack_of_compose_yaml_trains_tracks_and_is_monitored(redis_url: str, tmp_path: Path):
    spec = interpolate(load(), {})  # as `docker compose up` reads it with nothing set
    services = spec["services"]
    assert set(WORKERS) <= set(services)
    volumes = {"runs": tmp_path / "runs"}  # the named volume shared by the services
    config = _job_config(ROOT / "examples" / "digits.yaml", tmp_path / "config.yaml")
    binds = {"./examples/digits.yaml": config}  # the config compose mounts, made quick here

    def start(name: str, *extra: str, service: str | None = None) -> Proc:
        argv, env = _local(services[service or name], redis_url, volumes, binds)
        return Proc(name, [*argv, *extra], tmp_path, env)

    procs: list[Proc] = []
    try:
        procs += [start(name) for name in WORKERS]
        # The monitor service, started first, takes up the newest run once it starts and
        # watches it to its end.
        monitor = start("monitor")
        trainer = start("trainer")
        procs += [monitor, trainer]
        run_dir = eventually(lambda: _first_row(volumes["runs"]), 120, "the first epoch tracked")
        # Attached mid-run: a second tracker (own group, own directory) back-fills the run.
        late = start(
            "tracking-late", "--group", "late", "--dir", str(tmp_path / "late"), service="tracking"
        )
        procs.append(late)

        trainer.succeeded(180)
        shown = monitor.succeeded(60)
        run_id = run_dir.name
        assert run_id in shown
        assert re.search(r"completed|terminated", shown), shown

        tracked = eventually(lambda: _finished(run_dir), 60, "the tracking worker's final status")
        epochs = tracked.meta["epochs"]
        assert epochs >= 1
        for split in ("train", "val"):
            logged = sorted(
                r["epoch"] for r in tracked.rows if any(k.startswith(f"{split}/") for k in r)
            )
            assert logged == list(range(1, epochs + 1)), (split, logged)
        assert (run_dir / "checkpoints" / "manifest.json").is_file()
        assert tracked.artifacts["checkpoints"]["aliases"]["latest"]

        backfilled = eventually(
            lambda: _finished(tmp_path / "late" / run_id), 60, "the late tracker's back-fill"
        )
        assert _comparable(backfilled) == _comparable(tracked)

        for proc in [*procs[: len(WORKERS)], late]:
            proc.signal(signal.SIGTERM)  # `docker compose down` stops them the same way
        for proc in [*procs[: len(WORKERS)], late]:
            assert proc.wait(60) == 0, proc.output()
    finally:
        for proc in procs:
            proc.stop()


def _job_config(example: Path, path: Path) -> Path:
    """The mounted example, slowed down (same numbers) so that there is a mid-run to attach to."""
    cfg = yaml.safe_load(example.read_text())
    cfg["data"]["name"] = "slow_digits:build"
    cfg["extra"] = {"batch_delay": 0.01}
    cfg["train"] = {**cfg.get("train", {}), "epochs": EPOCHS, "progress_bar": False}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _local(
    service: dict[str, Any], redis_url: str, volumes: dict[str, Path], binds: dict[str, Path]
) -> tuple[list[str], dict[str, str]]:
    """A service's command and environment with container paths and Redis made local."""
    paths: dict[str, Path] = {}
    for source, target in volume_mounts(service):
        local = volumes.get(source) or binds.get(source)
        assert local is not None, f"volume {source} is neither a named volume nor a known bind"
        paths[target] = local

    def localize(word: str) -> str:
        for target, local in paths.items():
            word = re.sub(rf"(?<![\w.]){re.escape(target)}(?=/|$)", str(local), word)
        return word

    command = service["command"]
    assert command[0] == "trainer"
    argv = [sys.executable, "-m", "trainer.cli", *map(localize, command[1:])]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "stack")]),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "120",
    }
    for key, value in environment(service).items():
        env[key] = redis_url if key == "TRAINER_BUS_URL" else localize(value)
    return argv, env


def _first_row(runs: Path) -> Path | None:
    for run_dir in runs.glob("*/metrics.jsonl") if runs.is_dir() else ():
        if run_dir.stat().st_size:
            return run_dir.parent
    return None


def _finished(run_dir: Path):
    try:
        record = read_run(run_dir)
    except Exception:
        return None
    return record if record.meta.get("status") in ("completed", "terminated") else None


def _comparable(record) -> dict[str, Any]:
    """What two trackers of one run must agree on (not where, nor the TensorBoard file name)."""
    return {
        "meta": {k: v for k, v in record.meta.items() if k != "record_keys"},
        "rows": sorted(sorted(r.items()) for r in record.rows),
        "summary": record.summary,
        "artifacts": record.artifacts,
    }
