"""compose.yaml run for real, without Docker: every service's command as a local process with
that service's environment, the Redis address and the volume paths rewritten to the test's.
Redis is the redis service's own command (password included) run as a private redis-server.

A broken command, option or variable in compose.yaml fails here the way `docker compose up`
would fail for a user.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from compose_file import ROOT, environment, interpolate, load, volume_mounts
from redis_server import RedisServer
from stack.stack_harness import Proc, eventually

from bus import DecodeError, Envelope, Topics, decode, encode
from bus.signing import verify
from trainer.tracking.reader import read_run

WORKERS = ("metrics", "checkpoint", "tracking", "early-stop")
EPOCHS = 6
# What the user's .env holds (the README makes it with secrets.token_hex).
SECRETS = {"REDIS_PASSWORD": "5ec4e7" * 10, "TRAINER_BUS_SECRET": "b05" * 20}
SPEC = interpolate(load(), SECRETS)  # as `docker compose up` reads it with .env made


@pytest.fixture(scope="module")
def compose_redis() -> Iterator[RedisServer]:
    """The redis service's command (its --requirepass included) as a private redis-server."""
    command = SPEC["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    server = RedisServer(extra=command[1:], password=SECRETS["REDIS_PASSWORD"]).start()
    yield server
    server.close()


def test_redis_refuses_clients_without_the_password_and_its_healthcheck_has_it(
    compose_redis: RedisServer,
):
    stranger = redis.Redis(port=compose_redis.port)
    with pytest.raises(redis.AuthenticationError):
        stranger.ping()
    stranger.close()

    service = SPEC["services"]["redis"]
    kind, check = service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    check = check.replace("redis-cli", f"redis-cli -p {compose_redis.port}")  # 6379 in there
    env = {**os.environ, **environment(service)}
    assert subprocess.run(["sh", "-c", check], env=env).returncode == 0
    # Without the password the check must fail, or a Redis that refuses everyone looks healthy.
    env.pop("REDISCLI_AUTH", None)
    assert subprocess.run(["sh", "-c", check], env=env).returncode != 0


def test_the_stack_of_compose_yaml_trains_tracks_and_is_monitored(
    compose_redis: RedisServer, tmp_path: Path
):
    services = SPEC["services"]
    assert set(WORKERS) <= set(services)
    volumes = {"runs": tmp_path / "runs"}  # the named volume shared by the services
    gate = tmp_path / "gate"  # training waits before epoch 2 until this exists
    config = _job_config(ROOT / "examples" / "digits.yaml", tmp_path / "config.yaml", gate)
    binds = {"./examples/digits.yaml": config}  # the config compose mounts, made quick here

    def start(name: str, *extra: str, service: str | None = None) -> Proc:
        argv, env = _local(services[service or name], compose_redis.port, volumes, binds)
        return Proc(name, [*argv, *extra], tmp_path, env)

    procs: list[Proc] = []
    raw = redis.Redis.from_url(compose_redis.url)  # what the test reads and writes itself
    try:
        procs += [start(name) for name in WORKERS]
        # The monitor service, started first, takes up the newest run once it starts and
        # watches it to its end.
        monitor = start("monitor")
        trainer = start("trainer")
        procs += [monitor, trainer]

        # Anyone who can reach Redis but lacks the secret: their TERMINATE is ignored.
        run_id = eventually(lambda: _training(raw), 120, "the trainer's first iteration")
        forged = Envelope(type="TERMINATE", run_id=run_id, source="mallory", data={"reason": "x"})
        raw.xadd(Topics().control(run_id), {"env": encode(forged)})

        run_dir = eventually(lambda: _first_row(volumes["runs"]), 120, "the first epoch tracked")
        # Attached mid-run: a second tracker (own group, own directory) back-fills the run.
        late = start(
            "tracking-late", "--group", "late", "--dir", str(tmp_path / "late"), service="tracking"
        )
        procs.append(late)
        eventually(lambda: (tmp_path / "late" / run_id).is_dir(), 120, "the late tracker to attach")
        gate.touch()

        out = trainer.succeeded(180)
        shown = monitor.succeeded(60)
        assert run_dir.name == run_id
        assert run_id in shown
        assert re.search(r"completed|terminated", shown), shown

        # The workers signed their control and the trainer obeyed it: the early-stop worker's
        # vote (patience 1, no epoch can improve by min_delta 1.0) ended the run at epoch 2, not
        # the unsigned TERMINATE, which the trainer logged as ignored.
        finished = [e for e in _envelopes(raw, Topics().events(run_id)) if e.type == "RUN_FINISHED"]
        assert finished, "no RUN_FINISHED"
        end = finished[-1].data
        assert (end["status"], end["epochs"]) == ("terminated", 2), end
        assert end["by"].startswith("early-stop-"), end
        assert re.search(r"TERMINATE \S+ from 'mallory' ignored: unsigned", out), out
        control = _envelopes(raw, Topics().control(run_id))
        votes = [e for e in control if e.type == "VOTE"]
        assert votes and all(verify(e, SECRETS["TRAINER_BUS_SECRET"]) for e in votes), votes

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
        raw.close()


def _job_config(example: Path, path: Path, gate: Path) -> Path:
    """The mounted example, held before epoch 2 (same numbers) so that there is a mid-run."""
    cfg = yaml.safe_load(example.read_text())
    cfg["data"]["name"] = "gated_digits:build"
    cfg["extra"] = {"gate": str(gate)}
    cfg["train"] = {**cfg.get("train", {}), "epochs": EPOCHS, "progress_bar": False}
    # The early-stop worker votes stop at epoch 2: nothing improves accuracy by 1.0.
    cfg["early_stopping"] = {**cfg["early_stopping"], "patience": 1, "min_delta": 1.0}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _local(
    service: dict[str, Any], redis_port: int, volumes: dict[str, Path], binds: dict[str, Path]
) -> tuple[list[str], dict[str, str]]:
    """A service's command and environment with container paths and Redis's host made local."""
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
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "compose")]),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "120",
    }
    env.pop("TRAINER_BUS_SECRET", None)  # only what compose.yaml sets
    for key, value in environment(service).items():
        env[key] = localize(value)
    # The URL keeps compose's password: only the host `redis` is the test's server.
    url = env["TRAINER_BUS_URL"]
    env["TRAINER_BUS_URL"] = url.replace("@redis:6379/", f"@127.0.0.1:{redis_port}/")
    assert env["TRAINER_BUS_URL"] != url, f"unexpected bus URL in compose.yaml: {url}"
    return argv, env


def _envelopes(client: redis.Redis, topic: str) -> list[Envelope]:
    out = []
    for _, fields in client.xrange(topic):
        try:
            out.append(decode(fields.get(b"env", b"")))
        except DecodeError:
            continue
    return out


def _training(client: redis.Redis) -> str | None:
    """The id of the run on the bus once its first iteration is published."""
    for key in client.scan_iter(match="trainer:run:*:events"):
        run_id = key.decode().split(":")[2]
        if any(e.type == "ITERATION_COMPLETED" for e in _envelopes(client, key.decode())):
            return run_id
    return None


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
