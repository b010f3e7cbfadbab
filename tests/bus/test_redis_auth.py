"""Redis URLs with a password, an ACL user, and TLS (rediss://) against private servers."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from redis_server import RedisServer, free_port

from bus import (
    BEGINNING,
    BusAuthError,
    BusUnavailable,
    Consumer,
    Envelope,
    Topics,
    decode,
    encode,
    open_bus,
    tail,
)

TOPIC = Topics("test").events("run1")
PASSWORD = "s3cret"
SPECIAL = "p@ss:w/rd #1"  # needs percent-encoding in a URL


def configure(server: RedisServer) -> None:
    """Require a password for the default user and add the ACL users the tests log in as."""
    client = redis.Redis(port=server.port)
    # Set after start: the fixture's readiness PING would be refused under --requirepass.
    client.acl_setuser(
        "worker", enabled=True, passwords=["+w0rker"], keys=["test:*"], commands=["+@all"]
    )
    client.acl_setuser(
        "monitor",
        enabled=True,
        passwords=["+m0n"],
        keys=["*"],
        commands=["-@all", "+@read", "+@connection"],
    )
    client.acl_setuser(
        "special", enabled=True, passwords=[f"+{SPECIAL}"], keys=["*"], commands=["+@all"]
    )
    # May write streams but run no scripts (EVAL, EVALSHA, SCRIPT, FCALL...).
    client.acl_setuser(
        "noscript",
        enabled=True,
        passwords=["+n0script"],
        keys=["*"],
        commands=["+@all", "-@scripting"],
    )
    # May run scripts but not XADD, so a script cannot write for it either.
    client.acl_setuser(
        "noxadd", enabled=True, passwords=["+n0xadd"], keys=["*"], commands=["+@all", "-xadd"]
    )
    client.config_set("requirepass", PASSWORD)
    client.close()


def flushed(server: RedisServer) -> RedisServer:
    client = redis.Redis(port=server.port, password=PASSWORD)
    client.flushall()
    client.close()
    return server


@pytest.fixture(scope="module")
def secured_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    configure(server)
    yield server
    server.close()


@pytest.fixture
def secured(secured_server: RedisServer) -> RedisServer:
    """An empty private Redis that requires a password, with ACL users."""
    return flushed(secured_server)


def url(
    server: RedisServer,
    user: str = "",
    password: str = PASSWORD,
    port: int | None = None,
    scheme: str = "redis",
    query: str = "",
) -> str:
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}@" if password else ""
    return f"{scheme}://{auth}127.0.0.1:{port or server.port}/0{query}"


def env(i: int) -> Envelope:
    return Envelope(type="ITERATION_COMPLETED", run_id="run1", source="t", data={"i": i})


async def round_trip(bus_url: str) -> list[int]:
    """Publish two envelopes, consume them through a group, and return what was handled."""
    bus = open_bus(bus_url)
    seen: list[int] = []
    try:
        await bus.append(TOPIC, [encode(env(0)), encode(env(1))])
        c = Consumer(
            bus,
            TOPIC,
            "g",
            lambda e: seen.append(e.data["i"]),
            block=0.05,
            dead_letter_topic="test:deadletter",
        )
        await c.ensure_group()
        for _ in range(100):
            if len(seen) == 2:
                break
            await c.poll_once(block=0.05)
    finally:
        await bus.close()
    return seen


async def test_a_password_in_the_url_authenticates(secured: RedisServer) -> None:
    assert await round_trip(url(secured)) == [0, 1]


async def test_an_acl_user_in_the_url_authenticates(secured: RedisServer) -> None:
    assert await round_trip(url(secured, "worker", "w0rker")) == [0, 1]


async def test_a_percent_encoded_password_with_special_characters_works(
    secured: RedisServer,
) -> None:
    assert await round_trip(url(secured, "special", SPECIAL)) == [0, 1]


@pytest.mark.parametrize("credentials", [("", "wrong"), ("worker", "wrong"), ("", "")])
async def test_refused_credentials_raise_bus_auth_error_without_the_password(
    secured: RedisServer, credentials: tuple[str, str]
) -> None:
    bus = open_bus(url(secured, *credentials))
    try:
        with pytest.raises(BusAuthError) as info:
            await bus.append(TOPIC, [encode(env(0))])
        assert "wrong" not in str(info.value)
    finally:
        await bus.close()


async def test_a_read_only_acl_user_can_tail_but_not_publish(secured: RedisServer) -> None:
    writer = open_bus(url(secured))
    monitor = open_bus(url(secured, "monitor", "m0n"))
    try:
        await writer.append(TOPIC, [encode(env(0))])
        assert [e.data["i"] async for e in tail(monitor, TOPIC, follow=False)] == [0]
        with pytest.raises(BusAuthError, match="XADD"):
            await monitor.append(TOPIC, [encode(env(1))])
    finally:
        await writer.close()
        await monitor.close()


async def test_a_user_without_scripting_rights_still_publishes_batches_in_order(
    secured: RedisServer,
) -> None:
    assert await round_trip(url(secured, "noscript", "n0script")) == [0, 1]
    bus = open_bus(url(secured, "noscript", "n0script"))
    reader = open_bus(url(secured))
    try:
        ids: list[str] = []
        for chunk in range(3):
            batch = [encode(env(i)) for i in range(chunk * 100, chunk * 100 + 100)]
            ids += await bus.append(TOPIC, batch)
        entries = await reader.read(TOPIC, BEGINNING, count=1000, block=None)
        # The round trip's two envelopes come first.
        assert [decode(e.payload).data["i"] for e in entries[2:]] == list(range(300))
        assert [e.id for e in entries[2:]] == ids
        await bus.append(TOPIC, [encode(env(i)) for i in range(300)], maxlen=50)
        assert 50 <= await reader.length(TOPIC) < 602
    finally:
        await bus.close()
        await reader.close()


@pytest.mark.parametrize("user", [("monitor", "m0n"), ("noxadd", "n0xadd")])
async def test_a_user_who_may_not_xadd_cannot_publish_a_batch_either(
    secured: RedisServer, user: tuple[str, str]
) -> None:
    bus = open_bus(url(secured, *user))
    writer = open_bus(url(secured))
    try:
        with pytest.raises(BusAuthError, match="XADD"):
            await bus.append(TOPIC, [encode(env(i)) for i in range(10)])
        assert await writer.length(TOPIC) == 0
    finally:
        await bus.close()
        await writer.close()


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, int, Path]]:
    """A private Redis with a TLS port and a self-signed certificate: (server, port, cert)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not installed: cannot make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    args = shlex.split(
        "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
        "-subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost"
    )
    keys = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run([openssl, *args, *keys], check=True, capture_output=True)
    port = free_port()
    options = {
        "--tls-port": port,
        "--tls-cert-file": cert,
        "--tls-key-file": key,
        "--tls-ca-cert-file": cert,
        "--tls-auth-clients": "no",  # clients prove nothing; the server proves its identity
    }
    server = RedisServer(extra=[str(x) for pair in options.items() for x in pair])
    try:
        server.start()
    except RuntimeError as exc:
        server.close()
        pytest.skip(f"redis-server here cannot serve TLS: {exc}")
    configure(server)
    yield server, port, cert
    server.close()


@pytest.fixture
def tls(tls_server: tuple[RedisServer, int, Path]) -> tuple[RedisServer, int, Path]:
    """An empty private Redis with a TLS port: (server, TLS port, its self-signed cert)."""
    flushed(tls_server[0])
    return tls_server


async def test_rediss_with_a_trusted_certificate_and_a_password_works(
    tls: tuple[RedisServer, int, Path],
) -> None:
    server, port, cert = tls
    assert await round_trip(
        url(server, port=port, scheme="rediss", query=f"?ssl_ca_certs={cert}")
    ) == [0, 1]


async def test_rediss_refuses_a_server_whose_certificate_is_not_trusted(
    tls: tuple[RedisServer, int, Path],
) -> None:
    server, port, _ = tls
    bus = open_bus(url(server, port=port, scheme="rediss"))
    try:
        with pytest.raises(BusUnavailable, match=r"(?i)certificate"):
            await bus.length(TOPIC)
    finally:
        await bus.close()


async def test_tls_options_can_be_passed_as_keyword_options(
    tls: tuple[RedisServer, int, Path],
) -> None:
    server, port, cert = tls
    bus = open_bus(url(server, port=port, scheme="rediss"), ssl_ca_certs=str(cert))
    try:
        await bus.append(TOPIC, [encode(env(5))])
        [entry] = await bus.read(TOPIC, BEGINNING, count=10, block=None)
        assert decode(entry.payload).data == {"i": 5}
    finally:
        await bus.close()
