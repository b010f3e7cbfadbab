"""How fast the web view is, measured in a real browser (Debian's chromium through Playwright).

1. Point latency: from the XADD of an epoch's METRICS on a run's events stream to the chart that
   holds its point being drawn in the page (uPlot's draw hook, `window.drawLog`), p50 and p99
   over --points updates. Target: p99 < 250 ms.
2. Stop latency: from the click on the page's Stop (the confirming "Send TERMINATE") to the end
   of the trainer's last iteration, over --stops runs of an Engine publishing to Redis with
   --step-ms steps. Target: < 100 ms + one iteration.

`trainer web` runs as its own process, on a private redis-server, as a user would run it.

    .venv/bin/python bench/web_latency.py [--points 50] [--stops 10] [--step-ms 20]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "web")]

from redis_server import RedisServer, free_port  # noqa: E402
from web_harness import browser  # noqa: E402

from bus import Envelope, Topics, encode  # noqa: E402
from trainer import Engine, Events  # noqa: E402
from trainer.bridge import BusRun  # noqa: E402

GUARD = 60.0  # seconds any single wait may take before the benchmark gives up
TOPICS = Topics()


def eventually(check: Any, what: str, timeout: float = GUARD) -> Any:
    """Poll `check()` until truthy; raise after `timeout` seconds (a hang guard)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return result


def start_web(url: str, runs: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`trainer web` as a process; its process and base address once it answers."""
    port = free_port()
    argv = [sys.executable, "-m", "trainer.cli", "web", "--bus", url, "--runs", str(runs)]
    proc = subprocess.Popen(
        [*argv, "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{base}/api/info", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    eventually(answers, "trainer web to answer")
    return proc, base


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99 of `values` (inclusive method: defined for small samples)."""
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49], cuts[98]


def point_latency(client: redis.Redis, chrome: Any, base: str, points: int) -> None:
    """Part 1: METRICS XADD to the point drawn on the page."""
    run_id = "bench-points"
    events = TOPICS.events(run_id)
    config = {"run": {"name": "bench"}, "train": {"epochs": points}}
    data = {"config": config, "rank": 0, "world_size": 1, "host": "bench", "pid": os.getpid()}
    started = encode(Envelope("RUN_STARTED", run_id, "trainer:0", {**data, "resumed_from": None}))
    client.xadd(TOPICS.registry(), {"env": started})
    client.xadd(events, {"env": started})
    page = chrome.new_page()
    page.goto(f"{base}/runs/{run_id}")
    eventually(lambda: page.evaluate("window.streamOpens") >= 1, "the page's stream")
    added: dict[str, float] = {}
    for epoch in range(points):
        values = {"accuracy": 0.5 + 0.4 * epoch / points, "loss": 1.0 / (epoch + 1)}
        body = {"split": "val", "epoch": epoch, "values": values, "ranks": [0]}
        env = encode(Envelope("METRICS", run_id, "bench", body, epoch, epoch))
        before = time.time()
        entry = client.xadd(events, {"env": env}).decode()
        added[entry] = before
        time.sleep(0.15)  # one update at a time, as epochs come
    eventually(lambda: page.evaluate("window.drawLog.length") >= 2 * points, "every point drawn")
    drawn: dict[str, float] = {}
    for item in page.evaluate("window.drawLog"):  # one entry per chart (accuracy and loss)
        drawn[item["id"]] = max(drawn.get(item["id"], 0.0), item["at"] / 1000)
    latencies = [drawn[i] - t for i, t in added.items()]
    p50, p99 = percentiles(latencies)
    print(f"1. METRICS XADD to the point drawn in the page, {points} updates:")
    print(
        f"   p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, max {max(latencies) * 1e3:.1f} ms"
        "  (target p99 < 250 ms)"
    )
    page.close()


def one_stop(
    chrome: Any, url: str, base: str, run_id: str, step: float
) -> tuple[float, float, float]:
    """Seconds from the Stop click to the last iteration's end and to the XADD; one iteration."""
    ended: list[float] = []

    def work(engine: Engine, batch: object) -> None:
        time.sleep(step)

    engine = Engine(work)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: ended.append(time.time()))
    run = BusRun(url, run_id)
    run.attach(engine)

    def train() -> None:
        with run:
            engine.run(range(1_000_000), max_epochs=1)

    trainer = threading.Thread(target=train, name=run_id, daemon=True)
    trainer.start()
    page = chrome.new_page()
    page.goto(f"{base}/runs/{run_id}")
    page.click("#stop", timeout=GUARD * 1000)
    page.fill("#stop-reason", "benchmark")
    time.sleep(0.05 + (len(run_id) % 7) * step / 7)  # land at varied points of a step
    page.click("#stop-confirm")
    trainer.join(GUARD)
    if trainer.is_alive():
        raise RuntimeError(f"{run_id} did not stop within {GUARD} s")
    clicked = page.evaluate("window.stopClickedAt") / 1000
    page.close()
    steps = [b - a for a, b in itertools.pairwise(ended)]
    # The TERMINATE's entry id is the Redis clock (this machine's) when it was appended.
    control = redis.Redis.from_url(url).xrange(TOPICS.control(run_id))
    landed = max(int(entry_id.split(b"-")[0]) for entry_id, _ in control) / 1000
    return ended[-1] - clicked, landed - clicked, statistics.median(steps)


def stop_latency(chrome: Any, url: str, base: str, stops: int, step: float) -> None:
    """Part 2: click on Stop to the trainer's last iteration."""
    results = [one_stop(chrome, url, base, f"bench-stop-{i}", step) for i in range(stops)]
    latencies = [r[0] for r in results]
    landed = statistics.median(r[1] for r in results)
    iteration = statistics.median(r[2] for r in results)
    p50, p99 = percentiles(latencies)
    print(f"2. click on Stop to the end of the trainer's last iteration, {stops} runs:")
    print(
        f"   p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, max {max(latencies) * 1e3:.1f} ms; "
        f"one iteration {iteration * 1e3:.1f} ms  (target < 100 ms + one iteration = "
        f"{100 + iteration * 1e3:.0f} ms)"
    )
    print(f"   of which click to TERMINATE on the control stream: p50 {landed * 1e3:.1f} ms")


def main() -> None:
    """Run both parts and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=50, help="METRICS updates (part 1)")
    parser.add_argument("--stops", type=int, default=10, help="runs stopped (part 2)")
    parser.add_argument("--step-ms", type=float, default=20.0, help="iteration length (part 2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    web = None
    try:
        with tempfile.TemporaryDirectory() as runs:
            web, base = start_web(server.url, Path(runs))
            with browser() as chrome:
                point_latency(client, chrome, base, args.points)
                stop_latency(chrome, server.url, base, args.stops, args.step_ms / 1000)
    finally:
        if web is not None:
            web.terminate()
            web.wait(GUARD)
        client.close()
        server.close()


if __name__ == "__main__":
    main()
