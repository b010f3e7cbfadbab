"""Who may use the web view, and what it never shows: the Host check, the token, the Stop
action's rules, and the secrets kept out of every answer. On the in-memory bus, through
uvicorn in a thread (no browser, no Redis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from web_envelopes import finished, metrics, publish, started
from web_harness import WebServer

from bus import Topics, decode, open_bus, verify
from workers.web import WebError, WebOptions
from workers.web.auth import TOKEN_COOKIE

TOKEN = "tok-" + "x" * 20
SECRET = "sign-me-please"
PASSWORD = "hunter2-redis"


def options(tmp_path: Path, **kw: object) -> WebOptions:
    """Options on a fresh in-memory bus whose URL carries PASSWORD (as a Redis URL would)."""
    url = kw.pop("bus_url", f"memory://web-{uuid.uuid4().hex}")
    opts = WebOptions(bus_url=str(url), runs_dir=tmp_path / "runs", **kw)  # type: ignore[arg-type]
    return opts


@contextmanager
def serving(opts: WebOptions, **client: Any) -> Iterator[httpx.Client]:
    """An httpx client of the app served with `opts` (a hang guard bounds every request)."""
    server = WebServer(opts).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30, **client) as c:
            yield c
    finally:
        server.stop()


@pytest.fixture
def client(tmp_path: Path) -> Iterator[httpx.Client]:
    """The app without a token, on loopback, with a signing secret."""
    with serving(options(tmp_path, secret=SECRET)) as c:
        yield c


def control_envelopes(url: str, run: str) -> list:
    """Every envelope on run `run`'s control topic."""

    async def read() -> list:
        bus = open_bus(url)
        try:
            entries = await bus.read(Topics().control(run), "0", count=100, block=None)
        finally:
            await bus.close()
        return [decode(e.payload) for e in entries]

    return asyncio.run(read())


def test_beyond_localhost_the_server_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    with pytest.raises(WebError, match=r"--host 0\.0\.0\.0 listens beyond this machine.*--token"):
        options(tmp_path, host="0.0.0.0").check()
    with pytest.raises(WebError, match="at least 8 characters"):
        options(tmp_path, host="0.0.0.0", token="short").check()
    options(tmp_path, host="0.0.0.0", token=TOKEN).check()
    options(tmp_path, host="::1").check()  # loopback needs none


def test_a_foreign_host_name_is_refused_on_loopback(client: httpx.Client) -> None:
    # DNS rebinding: evil.example resolved to 127.0.0.1 must not read the page or stop runs.
    refused = client.get("/api/info", headers={"host": "evil.example:8080"})
    assert refused.status_code == 403
    assert "answers only to this machine's names" in refused.json()["error"]
    assert client.get("/api/info", headers={"host": "localhost:8080"}).status_code == 200
    assert client.get("/api/info").status_code == 200


def test_with_a_token_every_request_needs_it_and_a_login_sets_a_cookie(tmp_path: Path) -> None:
    with serving(options(tmp_path, token=TOKEN)) as c:
        for path in ("/", "/api/runs", "/static/app.js", "/runs/r1"):
            assert c.get(path).status_code == 401, path
        page = c.get("/", headers={"accept": "text/html"})
        assert page.status_code == 401 and "?token=" in page.text and TOKEN not in page.text
        assert c.get("/?token=wrong-token-123").status_code == 401

        login = c.get(f"/runs/r1?x=1&token={TOKEN}")
        assert login.status_code == 303
        assert login.headers["location"] == "/runs/r1?x=1"  # the token leaves the address
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and TOKEN not in cookie
        assert c.get("/api/info").status_code == 200  # the client kept the cookie
        c.cookies.clear()
        assert c.get("/api/info").status_code == 401
        assert c.get("/api/info", headers={"x-trainer-token": TOKEN}).status_code == 200
        assert c.get("/api/info", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        c.cookies.set(TOKEN_COOKIE, "forged")
        assert c.get("/api/info").status_code == 401


def test_the_stop_action_sends_a_signed_terminate_only_from_this_page(tmp_path: Path) -> None:
    opts = options(tmp_path, secret=SECRET)
    with serving(opts) as c:
        asyncio.run(publish(opts.bus_url, [started("r1"), metrics("r1", 0, 0.5)]))
        stop = "/api/runs/r1/stop"
        # A cross-site form post: no JSON, or another site's Origin.
        assert c.post(stop, data={"reason": "x"}).status_code == 415
        foreign = c.post(stop, json={"reason": "x"}, headers={"origin": "http://evil.example"})
        assert foreign.status_code == 403
        assert c.post(stop, json={"reason": 3}).status_code == 400
        assert c.post(stop, json={"reason": "r" * 501}).status_code == 400
        assert c.post("/api/runs/nope/stop", json={}).status_code == 404
        assert control_envelopes(opts.bus_url, "r1") == []

        origin = str(c.base_url).rstrip("/")
        sent = c.post(stop, json={"reason": "  enough,\n thanks "}, headers={"origin": origin})
        assert sent.status_code == 202, sent.text
        assert sent.json()["signed"] is True and sent.json()["source"] == opts.source
        (env,) = control_envelopes(opts.bus_url, "r1")
        assert (env.type, env.data, env.source) == (
            "TERMINATE",
            {"reason": "enough, thanks"},
            opts.source,
        )
        assert verify(env, SECRET)

        asyncio.run(publish(opts.bus_url, [finished("r1")]))
        for _ in range(200):  # the watch follows the run live; a hang guard bounds the wait
            refused = c.post(stop, json={})
            if refused.status_code == 409:
                break
            asyncio.run(asyncio.sleep(0.02))
        assert refused.status_code == 409 and "already finished" in refused.json()["error"]


def test_no_answer_carries_the_token_the_secret_or_the_bus_password(tmp_path: Path) -> None:
    # The bus password is checked against a real Redis in test_web_live.py; here a run config
    # that carries credentials, and the token and the secret the server holds.
    opts = options(tmp_path, token=TOKEN, secret=SECRET)
    hidden = [TOKEN, SECRET, PASSWORD]
    config = {
        "run": {"name": "digits"},
        "extra": {"mirror": f"redis://admin:{PASSWORD}@db:6379/0", "api_token": "abc123"},
        "note": f"secret is {SECRET}",
    }
    with serving(opts, headers={"x-trainer-token": TOKEN}) as c:
        asyncio.run(publish(opts.bus_url, [started("r1", config), metrics("r1", 0, 0.5)]))
        bodies = [
            c.get(path).text
            for path in (
                "/",
                "/runs/r1",
                "/compare?runs=r1",
                "/api/info",
                "/api/runs",
                "/api/runs/r1",
            )
        ]
        bodies.append(c.get("/api/runs/nope").text)
        bodies.append(c.get("/api/info", headers={"x-trainer-token": "wrong"}).text)
        view = c.get("/api/runs/r1").json()
        assert view["config"]["extra"] == {
            "mirror": "redis://admin:***@db:6379/0",
            "api_token": "***",
        }
        assert view["config"]["note"] == "secret is ***"
        for body in bodies:
            for secret in hidden:
                assert secret not in body
