"""`trainer web` refusing to start: one line on stderr, status 2, no password shown."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from redis_server import free_port

from trainer.cli import main


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `trainer ARGV`, expect exit status 2, and return the one line it printed."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_listening_beyond_localhost_without_a_token_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRAINER_WEB_TOKEN", raising=False)
    argv = ["web", "--bus", "redis://127.0.0.1:1/0", "--runs", str(tmp_path), "--host", "0.0.0.0"]
    err = usage_error(argv, capsys)
    assert "--host 0.0.0.0 listens beyond this machine" in err and "--token" in err
    err = usage_error([*argv, "--token", "short"], capsys)
    assert "at least 8 characters" in err


def test_an_unreachable_bus_with_no_stored_run_is_one_line_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    url = f"redis://viewer:pa55word@127.0.0.1:{port}/0"
    err = usage_error(["web", "--bus", url, "--runs", str(tmp_path / "none")], capsys)
    assert f"cannot reach the bus at redis://viewer:***@127.0.0.1:{port}/0" in err
    assert "holds no finished run to show" in err
    assert "pa55word" not in err


def test_the_bus_is_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRAINER_BUS_URL", raising=False)
    err = usage_error(["web", "--runs", str(tmp_path)], capsys)
    assert "--bus URL is required" in err and "TRAINER_BUS_URL" in err


def test_a_port_in_use_is_one_line_before_anything_is_served(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["web", "--bus", "redis://127.0.0.1:1/0", "--runs", str(tmp_path)]
        err = usage_error([*argv, "--port", str(port)], capsys)
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_a_wildcard_host_is_said_to_listen_on_every_interface(
    tmp_path: Path, redis_url: str
) -> None:
    import signal
    import subprocess
    import sys

    port = free_port()
    argv = [sys.executable, "-m", "trainer.cli", "web", "--bus", redis_url, "--runs", str(tmp_path)]
    argv += ["--host", "0.0.0.0", "--port", str(port), "--token", "a-long-token"]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = server.stdout.readline()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    # The URL to open here, and plainly that every interface hears it (no token shown).
    assert f"serving http://127.0.0.1:{port}/ (listening on every interface, 0.0.0.0)" in first
    assert "a-long-token" not in first
