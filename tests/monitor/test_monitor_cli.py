"""`trainer monitor` through the command's entry point: bad input is one line and status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import redis
from monitor_envelopes import T0, started
from redis_server import free_port

from bus import Topics, encode
from trainer.cli import main

ROOT = Path(__file__).resolve().parents[2]


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `trainer ARGV`, expect exit status 2, and return what it printed on stderr."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_an_unknown_run_names_the_id_the_namespace_and_the_recent_runs(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = redis.Redis.from_url(redis_url)
    for n in range(7):
        client.xadd(Topics().registry(), {"env": encode(started(f"run-{n}", ts=T0 + n))})
    client.close()
    err = usage_error(["monitor", "--bus", redis_url, "--run", "nope"], capsys)
    assert "run 'nope' not found in namespace 'trainer'" in err
    assert "recent runs: run-6, run-5, run-4, run-3, run-2" in err  # the newest 5
    assert "run-1" not in err

    err = usage_error(
        ["monitor", "--bus", redis_url, "--run", "run-6", "--namespace", "lab"], capsys
    )
    assert "run 'run-6' not found in namespace 'lab'" in err
    assert "no run has been announced in this namespace" in err


def test_an_unreachable_redis_is_one_line_naming_the_url_without_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"redis://watcher:s3cret@127.0.0.1:{free_port()}/0"
    err = usage_error(["monitor", "--bus", url], capsys)
    assert f"cannot reach the bus at redis://watcher:***@127.0.0.1:{url.split(':')[-1]}" in err
    assert "s3cret" not in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["monitor"], "--bus URL is required"),
        (["monitor", "--bus", "memory://m", "--speed", "0"], "--speed 0.0: use a number > 0"),
        (["monitor", "--bus", "memory://m", "--run", "no/slash"], "run id 'no/slash'"),
        (["monitor", "--bus", "http://h"], "unsupported bus URL scheme 'http'"),
        (["monitor", "--bus", "memory://m", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_options_are_one_line_and_status_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert says in usage_error(argv, capsys)


def test_the_monitor_command_does_not_import_torch() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from trainer.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['monitor', '--bus', 'memory://m', '--once']) == 0\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
