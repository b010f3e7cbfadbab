"""WebOptions: what `trainer web` serves, where it listens, and the secrets it must never show."""

from __future__ import annotations

import ipaddress
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bus import DEFAULT_NAMESPACE, InvalidTopic, Topics
from bus.urls import redact
from workers.web.errors import WebError

# Hosts that only this machine reaches: the page needs no token there (an SSH tunnel lands here).
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
# A token shorter than this is guessable by anyone who can reach the port.
MIN_TOKEN_LENGTH = 8
TOKEN_HINT = 'python3 -c "import secrets; print(secrets.token_urlsafe(24))"'


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address, IPv6 with or without brackets) is this machine only."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def default_source() -> str:
    """The `source` of the TERMINATE envelopes this page sends: `web:<host>:<pid>`."""
    return f"web:{socket.gethostname()}:{os.getpid()}"


@dataclass
class WebOptions:
    """Everything `trainer web` needs; `token` and `secret` never appear in its repr."""

    bus_url: str
    runs_dir: Path = Path("runs")
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)  # signs TERMINATE (TRAINER_BUS_SECRET)
    namespace: str = DEFAULT_NAMESPACE
    source: str = field(default_factory=default_source)
    block: float = 1.0  # seconds a live read waits for new entries
    sse_retry_ms: int = 1000  # how long a browser waits before it reconnects a dropped stream
    max_watched: int = 20  # live runs followed at once for the runs list's progress
    idle_seconds: float = 120.0  # a run nobody looks at stops being followed after this

    @property
    def shown_url(self) -> str:
        """The bus URL without its password: the only form of it a page or a log may show."""
        return redact(self.bus_url)

    @property
    def local_only(self) -> bool:
        """Whether the server listens on loopback only (then no other machine reaches it)."""
        return is_loopback(self.host)

    def hidden(self) -> list[str]:
        """The strings no response may contain: the token, the signing secret, the password."""
        try:
            password = urlsplit(self.bus_url).password
        except ValueError:
            password = None
        return [s for s in (self.token, self.secret, password) if s]

    def check(self) -> None:
        """Raise WebError naming the first option that cannot work, and how to fix it."""
        try:
            Topics(self.namespace)
        except InvalidTopic as exc:
            raise WebError(f"--namespace: {exc}") from None
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise WebError(f"--port {self.port!r}: use a TCP port from 1 to 65535 (0: any free)")
        if not self.host.strip():
            raise WebError("--host '': use an address to listen on, e.g. 127.0.0.1 or 0.0.0.0")
        if self.token is not None:
            if len(self.token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in self.token):
                raise WebError(
                    f"the token must be at least {MIN_TOKEN_LENGTH} characters without spaces; "
                    f"make one with: {TOKEN_HINT}"
                )
        elif not self.local_only:
            raise WebError(
                f"--host {self.host} listens beyond this machine, so anyone who reaches the port "
                "could stop runs: pass --token T (or set TRAINER_WEB_TOKEN), or keep the default "
                "127.0.0.1 and open it through `ssh -L 8080:localhost:8080 HOST`"
            )
        if self.secret is not None and not self.secret:
            raise WebError("TRAINER_BUS_SECRET is set but empty: unset it or give the secret")
        for name, value in (("block", self.block), ("idle_seconds", self.idle_seconds)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise WebError(f"{name} {value!r}: use a number of seconds > 0")
