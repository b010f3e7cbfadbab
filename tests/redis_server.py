"""A private redis-server on a free loopback port, started and stopped by the tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(RuntimeError):
    """The chosen port was taken between free_port() and the server's bind (parallel tests)."""


def _read(s: socket.socket, n: int) -> bytes:
    """Up to `n` bytes from `s`, fewer only if the peer stops sending."""
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


class RedisServer:
    """A real redis-server process; `stop()` and `start()` again keep the port and the data dir."""

    def __init__(
        self,
        port: int | None = None,
        *,
        durable: bool = False,
        extra: list[str] | None = None,
        password: str | None = None,
    ) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH; the README's test command installs it")
        self.exe = exe
        self.port = port or free_port()
        # A port we picked ourselves may be taken by a parallel test before the server binds it.
        self._port_chosen_here = port is None
        self.durable = durable
        self.extra = extra or []
        self.password = password  # --requirepass; the URL and the start-up PING carry it
        self.dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING (on a new port if ours was taken)."""
        for _ in range(3):
            try:
                return self._start()
            except PortTaken:
                self.stop()
                if not self._port_chosen_here:
                    raise
                self.port = free_port()
        return self._start()

    def _start(self) -> RedisServer:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.durable
            else ["--appendonly", "no"]
        )
        args = [
            self.exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            *persistence,
            *self.extra,
            *(["--requirepass", self.password] if self.password else []),
        ]
        hello = f"AUTH {self.password}\r\nPING\r\n" if self.password else "PING\r\n"
        answer = b"+OK\r\n+PONG" if self.password else b"+PONG"
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                if "Address already in use" in err:
                    raise PortTaken(err)
                raise RuntimeError(f"redis-server exited on start: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(hello.encode())
                    if _read(s, len(answer)).startswith(answer):
                        self._check_it_is_ours()
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    def _check_it_is_ours(self) -> None:
        """Fail if the server answering on our port is another one (tests run in parallel)."""
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            pid = client.info("server")["process_id"]
        finally:
            client.close()
        if self.proc is None or pid != self.proc.pid:
            raise PortTaken(f"port {self.port} is answered by another redis-server (pid {pid})")

    def stop(self) -> None:
        """Terminate the server (SIGTERM) and wait for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
