"""The web view in a real browser against a live run: `trainer run --bus` (slowed by the
slow_digits plugin) and metrics, tracking and checkpoint workers as processes on a private Redis
that requires a password, with a signing secret, and the page served with a token.

The tests share that one run, in file order: a point appears, a dropped stream resumes, nothing
secret is shown, a stop without the token is refused, the Stop button stops the run, and the
finished run is served from the tracking store once Redis is down. What the page must show is
read back from the streams with redis-py and the envelope codec, never from the app.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis_server import RedisServer, free_port
from stack.stack_harness import Proc, Stack, eventually
from web_harness import WebServer, browser

from bus import Envelope, decode, verify
from bus.stream_ids import parse_id
from trainer import tracking
from trainer.tracking.reader import read_meta, read_run
from workers.web import WebOptions

RUN = "webrun"
PASSWORD = "redis-pa55-for-web"
SECRET = "bus-secret-for-web"
TOKEN = "web-token-0123456789"
REASON = "enough for this test"
STARTUP_GUARD = 180.0  # processes importing torch on a busy 2-core machine
GUARD = 30.0  # anything else the page or the run must do


@dataclass
class Live:
    """The run's processes, the web server and the browser the tests share."""

    redis: RedisServer
    url: str
    stack: Stack
    trainer: Proc
    server: WebServer
    chrome: Any
    store: Path

    def metrics(self) -> list[tuple[str, Envelope]]:
        """(entry id, envelope) of every final METRICS on the run's events stream."""
        raw = self.stack.raw().xrange(self.stack.topics.events(RUN))
        found = []
        for entry_id, fields in raw:
            env = decode(fields[b"env"])
            if env.type == "METRICS" and not env.data.get("running"):
                found.append((entry_id.decode(), env))
        return found

    def iteration(self) -> int:
        """The trainer's latest iteration, from its newest event."""
        newest = self.stack.raw().xrevrange(self.stack.topics.events(RUN), count=20)
        return max(
            (e.iteration for _, f in newest if (e := decode(f[b"env"])).source == "trainer:0"),
            default=0,
        )

    @contextmanager
    def page(self, path: str, base: str | None = None) -> Iterator[Any]:
        """A fresh browser context logged in with the token (`?token=`), showing `path`."""
        context = self.chrome.new_context(viewport={"width": 1280, "height": 1000})
        try:
            page = context.new_page()
            page.set_default_timeout(GUARD * 1000)
            login = f"{'&' if '?' in path else '?'}token={TOKEN}"
            page.goto(f"{base or self.server.url}{path}{login}")
            assert "token=" not in page.url  # the login redirect cleans the address
            yield page
        finally:
            context.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Redis with a password, the run with its workers, the web server and Chromium."""
    cwd = tmp_path_factory.mktemp("web-live")
    server = RedisServer().start()
    # Set after start: the server's readiness PING would be refused under --requirepass.
    redis.Redis(port=server.port).config_set("requirepass", PASSWORD)
    url = f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0"
    stack = Stack(url, cwd)
    web = None
    try:
        config = stack.config(
            data={"name": "slow_digits:build"},
            train={"epochs": 500, "epoch_length": 4},
            early_stopping={"patience": None},
            checkpoint={"every": 1, "n_saved": 2, "n_best": 1},
            # A config value holding a password: the page must show it masked.
            extra={"batch_delay": 0.05, "mirror": url},
        )
        signed = {"TRAINER_BUS_SECRET": SECRET}
        store = cwd / "store"
        stack.worker("metrics", RUN, env=signed)
        stack.worker("tracking", RUN, "--dir", store, env=signed)
        stack.worker("checkpoint", RUN, env=signed)
        trainer = stack.trainer(config, RUN, env=signed)
        options = WebOptions(url, runs_dir=store, token=TOKEN, secret=SECRET, sse_retry_ms=300)
        web = WebServer(options).start()
        with browser() as chrome:
            yield Live(server, url, stack, trainer, web, chrome, store)
    finally:
        if web is not None:
            web.stop()
        stack.close()
        server.close()


def until(page: Any, expression: str, what: str) -> Any:
    """Poll a JavaScript expression in the page until it is truthy (a hang guard bounds it)."""
    # Playwright's wait_for_function evaluates strings with eval, which the page's
    # Content-Security-Policy forbids (as it should); page.evaluate is not bound by it.
    expression = expression.replace("$(", "document.querySelector(")
    return eventually(lambda: page.evaluate(expression), GUARD, what)


def answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (with any status)."""
    try:
        httpx.get(url, timeout=GUARD)
    except httpx.TransportError:
        return False
    return True


def wait_for_metrics(live: Live, count: int) -> list[tuple[str, Envelope]]:
    """The run's METRICS once there are at least `count` (processes start slowly)."""

    def enough() -> list[tuple[str, Envelope]] | None:
        if live.trainer.proc.poll() is not None:
            raise AssertionError(f"the trainer exited:\n{live.trainer.output()}")
        found = live.metrics()
        return found if len(found) >= count else None

    return eventually(enough, STARTUP_GUARD, f"{count} METRICS on the run's events")


def on_chart(page: Any, env: Envelope) -> bool:
    """Whether every value of a METRICS envelope is drawn on the page's chart at its epoch."""
    charts = page.evaluate("window.chartData")
    x, split = env.data["epoch"] + 1, env.data["split"]
    for name, value in env.data["values"].items():
        chart = charts.get(name)
        if chart is None or x not in chart["x"] or split not in chart["series"]:
            return False
        if chart["series"][split][chart["x"].index(x)] != pytest.approx(value):
            return False
    return True


def test_a_published_metric_point_appears_on_the_chart(live: Live) -> None:
    wait_for_metrics(live, 1)
    with live.page(f"/runs/{RUN}") as page:
        until(page, "window.receivedPoints.length > 0", "a first point on the page")
        published = len(live.metrics())
        _, env = wait_for_metrics(live, published + 1)[published]  # one published from now on
        eventually(lambda: on_chart(page, env), GUARD, "the new METRICS point on the chart")
        assert page.text_content("#status") == "running"


def test_a_dropped_stream_resumes_after_its_last_event_id_and_misses_no_point(
    live: Live, tmp_path: Path
) -> None:
    server, web = live.server, live.server.web
    with live.page(f"/runs/{RUN}") as page:
        until(page, "window.streamOpens === 1 && window.receivedPoints.length > 1", "points")
        connects = len(web.stream_connects)
        # The server ends the stream and holds the browser's reconnection while the run goes
        # on, so points are published that only the resumed stream can bring.
        server.call(lambda: web.drop_streams(hold=True))
        eventually(lambda: len(web.stream_connects) > connects, GUARD, "the browser to reconnect")
        resumed_after = web.stream_connects[connects]
        held = len(live.metrics())
        wait_for_metrics(live, held + 2)
        server.call(web.release_streams)

        newest, _ = live.metrics()[-1]
        has_newest = f"window.receivedPoints.some((p) => p.id === {json.dumps(newest)})"
        until(page, has_newest, "the newest METRICS on the page")
        received = page.evaluate("window.receivedPoints")
        first = [p["id"] for p in received if p["conn"] == 1]
        second = [p["id"] for p in received if p["conn"] == 2]
        # The browser resumed from the last point it had, and was sent only what followed it.
        assert resumed_after == first[-1]
        assert all(parse_id(i) > parse_id(resumed_after) for i in second)
        published = [(i, env) for i, env in live.metrics() if parse_id(i) <= parse_id(newest)]
        missed_while_held = [i for i, _ in published if parse_id(i) > parse_id(resumed_after)]
        assert len(missed_while_held) >= 2
        # Every METRICS the stream holds up to the newest is on the page, and on its chart.
        assert {i for i, _ in published} <= set(first + second)
        for _, env in published:
            eventually(lambda env=env: on_chart(page, env), GUARD, f"{env.data} on the chart")
        page.screenshot(path=str(tmp_path / "web-run.png"), full_page=True)


def test_no_page_or_answer_shows_the_secret_the_token_or_the_redis_password(live: Live) -> None:
    hidden = (PASSWORD, SECRET, TOKEN)
    headers = {"x-trainer-token": TOKEN}
    with httpx.Client(base_url=live.server.url, headers=headers, timeout=GUARD) as client:
        paths = ["/", f"/runs/{RUN}", f"/compare?runs={RUN}", "/static/app.js", "/api/info"]
        paths += ["/api/runs", f"/api/runs/{RUN}", "/api/runs/unknown-run"]
        bodies = {path: client.get(path).text for path in paths}
        bodies["401"] = client.get("/api/info", headers={"x-trainer-token": "wrong-token"}).text
        for path in (f"/api/runs/{RUN}/stream", "/api/runs/stream"):
            chunks = []
            with client.stream("GET", path) as response:
                for chunk in response.iter_text():
                    chunks.append(chunk)
                    if "event: state" in "".join(chunks) or "event: runs" in "".join(chunks):
                        break
            bodies[path] = "".join(chunks)
    view = json.loads(bodies[f"/api/runs/{RUN}"])
    assert view["config"]["extra"]["mirror"] == f"redis://:***@127.0.0.1:{live.redis.port}/0"
    assert json.loads(bodies["/api/info"])["bus"]["url"] == view["config"]["extra"]["mirror"]
    for where, body in bodies.items():
        for secret in hidden:
            assert secret not in body, f"{where} shows {secret!r}"


def test_a_stop_without_the_token_is_refused_and_the_run_goes_on(live: Live) -> None:
    stop = f"{live.server.url}/api/runs/{RUN}/stop"
    before = live.iteration()
    with httpx.Client(timeout=GUARD) as client:
        assert client.post(stop, json={"reason": "no token"}).status_code == 401
        wrong = {"x-trainer-token": "not-the-token"}
        assert client.post(stop, json={"reason": "bad"}, headers=wrong).status_code == 401
    eventually(lambda: live.iteration() > before + 4, GUARD, "the run to go on")
    control = live.stack.envelopes(live.stack.topics.control(RUN))
    assert [e for e in control if e.type == "TERMINATE"] == []
    assert live.stack.finished(RUN) is None


def test_the_stop_button_stops_the_run_and_the_page_names_who_stopped_it(live: Live) -> None:
    source = live.server.options.source
    with live.page(f"/runs/{RUN}") as page:
        page.click("#stop")
        page.fill("#stop-reason", REASON)
        page.click("#stop-confirm")
        finish = eventually(lambda: live.stack.finished(RUN), GUARD, "RUN_FINISHED")
        assert (finish.data["status"], finish.data["by"], finish.data["reason"]) == (
            "terminated",
            source,
            REASON,
        )
        said = json.dumps(f"terminated by {source}: {REASON}")
        until(page, f"$('#status-line').textContent.includes({said})", "who stopped it")
        assert page.text_content("#status") == "terminated"
        assert page.is_hidden("#stop-box")
    (terminate,) = [
        e for e in live.stack.envelopes(live.stack.topics.control(RUN)) if e.type == "TERMINATE"
    ]
    assert terminate.source == source and verify(terminate, SECRET)
    live.trainer.succeeded(GUARD)


def test_a_finished_run_renders_from_the_tracking_store_with_redis_stopped(live: Live) -> None:
    if live.stack.finished(RUN) is None:
        pytest.fail("the run has not finished: this test follows the Stop test (file order)")
    run_dir = live.store / RUN
    eventually(
        lambda: read_meta(run_dir).get("status") == "terminated", GUARD, "the tracked status"
    )
    final = {(e.data["split"], e.data["epoch"] + 1): e.data["values"] for _, e in live.metrics()}
    eventually(lambda: len(read_run(run_dir).rows) >= len(final), GUARD, "the tracked metrics rows")
    live.redis.stop()
    # A second finished run, logged straight to the store, to compare with on one chart.
    with tracking.run("digits", id="other", dir=live.store, mode="offline") as other:
        for epoch in (1, 2, 3):
            other.log({"epoch": epoch, "val/accuracy": 0.1 * epoch}, step=epoch)

    port = free_port()
    env = {"TRAINER_WEB_TOKEN": TOKEN, "TRAINER_BUS_SECRET": SECRET}
    argv = ["web", "--bus", live.url, "--runs", live.store, "--port", str(port)]
    web = live.stack.start("web", *argv, env=env)
    eventually(lambda: "serving http://" in web.output(), STARTUP_GUARD, "trainer web to start")
    eventually(lambda: answers(f"http://127.0.0.1:{port}/api/info"), GUARD, "its port to answer")
    said = web.output()
    assert f"cannot reach the bus at redis://:***@127.0.0.1:{live.redis.port}/0" in said
    assert "Serving the 2 run(s) of" in said and PASSWORD not in said and TOKEN not in said

    base = f"http://127.0.0.1:{port}"
    with live.page("/", base) as page:
        page.wait_for_selector(f"#runs a[href='/runs/{RUN}']")
        row = page.text_content(f"#runs tr:has(a[href='/runs/{RUN}'])")
        assert "terminated" in row and REASON in row
    with live.page(f"/runs/{RUN}", base) as page:
        source = live.server.options.source
        until(page, "$('#status-line').textContent.includes('tracking store')", "the store")
        assert f"terminated by {source}: {REASON}" in page.text_content("#status-line")
        points = sum(map(len, final.values()))
        until(page, f"window.receivedPoints.length >= {points}", "the stored points")
        charts = page.evaluate("window.chartData")
        for (split, x), values in final.items():
            for name, value in values.items():
                chart = charts[name]
                assert chart["series"][split][chart["x"].index(x)] == pytest.approx(value)
    with live.page(f"/compare?runs={RUN},other", base) as page:
        until(page, "Object.keys(window.chartData).length > 0", "the comparison chart")
        chart = page.evaluate("window.chartData")["val/accuracy"]
        assert set(chart["series"]) == {RUN, "other"}
        assert [chart["series"]["other"][chart["x"].index(x)] for x in (1, 2, 3)] == pytest.approx(
            [0.1, 0.2, 0.3]
        )
        assert chart["series"][RUN][chart["x"].index(1)] == pytest.approx(
            final[("val", 1)]["accuracy"]
        )
        page.screenshot(path=str(live.store.parent / "web-compare.png"))
    web.signal(signal.SIGTERM)
    assert web.wait(GUARD) == 0
