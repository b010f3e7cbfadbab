"""compose.yaml checked without a Docker engine: the Compose specification's JSON schema, then
what the schema cannot know: every command is a real `trainer` command with valid options and
config, every `depends_on` waits on a healthcheck, the secrets are required (and never
committed), Redis is not published, every other variable has a value."""

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
    MissingVariable,
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
# The variables a user must set (in .env): nothing starts without them.
REQUIRED = ("REDIS_PASSWORD", "TRAINER_BUS_SECRET")
SECRETS = {"REDIS_PASSWORD": "0123abcd" * 8, "TRAINER_BUS_SECRET": "fedc9876" * 8}
DEFAULTS = interpolate(SPEC, SECRETS)  # what `docker compose up` sees with only .env made
PORT_FILE = ROOT / "compose.redis-port.yaml"


@pytest.mark.parametrize("path", [COMPOSE_FILE, PORT_FILE], ids=lambda p: p.name)
def test_the_file_follows_the_compose_specification(path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
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


@pytest.mark.parametrize("missing", REQUIRED)
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_without_a_secret_compose_refuses_naming_it_and_what_to_do(missing, how):
    env = {**SECRETS, missing: ""}
    if how == "unset":
        del env[missing]
    with pytest.raises(MissingVariable) as refused:
        interpolate(SPEC, env)
    message = str(refused.value)
    assert message.startswith(f"required variable {missing} is missing a value: "), message
    assert ".env" in message and "README" in message, message


def test_the_secrets_are_required_and_every_other_variable_has_a_default():
    used = variables(SPEC)
    assert {name for name, _, _ in used} >= set(REQUIRED)
    for name, op, _ in used:
        if name in REQUIRED:
            assert op == ":?", f"${{{name}}} must be required (`:?`), empty included"
        else:
            assert op in ("-", ":-"), f"${{{name}}} has no default: `docker compose up` would fail"


def test_the_example_env_file_left_unfilled_is_refused_too():
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert set(example) == set(REQUIRED)
    with pytest.raises(MissingVariable):
        interpolate(SPEC, example)


def test_the_env_file_is_neither_committed_nor_copied_into_the_image():
    for ignore in (".gitignore", ".dockerignore"):
        assert ".env" in (ROOT / ignore).read_text().splitlines(), ignore


def test_redis_requires_the_password_and_is_not_published_on_the_host():
    for name, service in DEFAULTS["services"].items():
        assert "ports" not in service, f"service {name} publishes {service['ports']} by default"
    command = DEFAULTS["services"]["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == SECRETS["REDIS_PASSWORD"]
    # Publishing is opt-in, and then on this machine only unless REDIS_HOST_IP says otherwise.
    ports = interpolate(load(PORT_FILE), {})["services"]["redis"]["ports"]
    assert ports == ["127.0.0.1:6379:6379"]


def test_every_trainer_service_reaches_redis_and_shares_the_runs_volume():
    password = SECRETS["REDIS_PASSWORD"]
    for name in OURS:
        service = DEFAULTS["services"][name]
        env = environment(service)
        # The port inside the compose network, whatever compose.redis-port.yaml publishes.
        assert env.get("TRAINER_BUS_URL") == f"redis://:{password}@redis:6379/0", name
        assert env.get("TRAINER_BUS_SECRET") == SECRETS["TRAINER_BUS_SECRET"], name
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
