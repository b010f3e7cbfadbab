"""compose.yaml checked without a Docker engine: the Compose specification's JSON schema, then
what the schema cannot know: every command is a real `trainer` command with valid options and
config, every `depends_on` waits on a healthcheck, every variable has a value."""

from __future__ import annotations

import argparse
import subprocess
import sys
from contextlib import redirect_stderr
from io import StringIO

import pytest
from compose_file import (
    COMPOSE_FILE,
    ROOT,
    environment,
    interpolate,
    load,
    variables,
    volume_mounts,
)

from trainer import config
from trainer.cli import build_parser
from trainer.cli.overrides import is_override

SPEC = load()
SERVICES = SPEC["services"]
# Services built from this project's image: they run `trainer` commands.
OURS = [name for name, service in SERVICES.items() if service.get("image") != "redis:7-alpine"]
DEFAULTS = interpolate(SPEC, {})  # what `docker compose up` sees with nothing set


def test_the_file_follows_the_compose_specification():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE_FILE),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stack_has_redis_a_trainer_and_a_worker_of_each_kind():
    assert {"redis", "trainer", "metrics", "checkpoint", "tracking", "early-stop"} <= set(SERVICES)
    assert "--appendonly" in SERVICES["redis"]["command"]  # runs survive a Redis restart
    assert SERVICES["redis"]["healthcheck"]["test"]


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    errors = StringIO()
    try:
        with redirect_stderr(errors):
            return build_parser().parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"`trainer {' '.join(argv)}` does not parse: {errors.getvalue()}")


@pytest.mark.parametrize("name", OURS)
def test_every_command_is_a_real_trainer_command_with_valid_options(name):
    service = DEFAULTS["services"][name]
    command = service["command"]
    assert command[0] == "trainer", f"service {name} runs {command[0]!r}, not the trainer CLI"
    args, extras = _parse(command[1:])
    if args.command == "worker":
        from workers.kinds import load_kind

        kind = load_kind(args.kind)
        kind_parser = argparse.ArgumentParser(prog=f"trainer worker {args.kind}", add_help=False)
        kind.add_arguments(kind_parser)
        errors = StringIO()
        try:
            with redirect_stderr(errors):
                options = kind_parser.parse_args(extras)
        except SystemExit:
            pytest.fail(f"service {name}: bad options {extras}: {errors.getvalue()}")
        kind.check_options(vars(options))
        assert args.run or args.follow, f"service {name} follows no run"
    elif args.command == "run":
        # The config is the file compose mounts at the path the command names.
        mounts = {target: source for source, target in volume_mounts(service)}
        source = mounts.get(args.config)
        assert source, f"service {name}: {args.config} is not mounted"
        overrides = [*args.overrides, *extras]
        assert all(is_override(word) for word in overrides), overrides
        config.load(ROOT / source, overrides)  # raises naming a bad key or value
    else:
        assert args.command == "monitor", f"service {name}: unexpected command {args.command}"


def test_every_depends_on_waits_for_a_service_with_a_healthcheck():
    for name, service in SERVICES.items():
        for needed, how in (service.get("depends_on") or {}).items():
            assert needed in SERVICES, f"service {name} depends on unknown service {needed!r}"
            assert SERVICES[needed].get("healthcheck"), f"{needed} (needed by {name}) has none"
            assert how.get("condition") == "service_healthy", (name, needed, how)


def test_every_variable_used_has_a_value_when_nothing_is_set():
    for name, op, _ in variables(SPEC):
        assert op in ("-", ":-"), f"${{{name}}} has no default: `docker compose up` would fail"


def test_every_trainer_service_reaches_redis_and_shares_the_runs_volume():
    redis_port = 6379  # the port inside the compose network, whatever REDIS_PORT publishes
    for name in OURS:
        service = DEFAULTS["services"][name]
        env = environment(service)
        assert env.get("TRAINER_BUS_URL") == f"redis://redis:{redis_port}/0", name
        if name == "monitor":
            continue  # reads the bus only
        runs = env.get("TRAINER_RUNS_DIR")
        assert runs, f"service {name} sets no TRAINER_RUNS_DIR"
        # Paths in the envelopes (checkpoints, run directories) must mean the same everywhere.
        assert ("runs", runs) in volume_mounts(service), f"{name} does not mount runs at {runs}"
        assert "runs" in SPEC["volumes"]


def test_the_dockerfile_copies_only_what_exists_and_installs_the_cpu_torch():
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"
    assert "download.pytorch.org/whl/cpu" in text and "torch==" in text
