"""`trainer web`'s sweep page in a real browser (Debian's chromium through Playwright): it lists
a sweep's trials with their values and curves, and updates live as the bus moves: a new epoch
of a trial, a trial pruned (by whom, at which rung).

The sweep's envelopes are written by the test, in the order and shape the coordinator, the
agents and the trials write them (`trainer sweep` end to end is test_sweep_e2e.py), on a
private Redis; the page reads them with the web view's tails.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from redis_server import RedisServer
from stack.stack_harness import eventually
from web.web_harness import WebServer, browser

from bus import Envelope, Topics, encode
from bus.messages import (
    EPOCH_COMPLETED,
    RUN_FINISHED,
    RUN_STARTED,
    SWEEP_STARTED,
    TRIAL,
    TRIAL_ENDED,
    TRIAL_STARTED,
)
from workers.web import WebOptions

SWEEP = "web-sweep"
TOPICS = Topics()
GUARD = 30.0
OBJECTIVE = {"metric": "accuracy", "split": "val", "mode": "max"}
PARAMS = [{"optim.lr": 0.01}, {"optim.lr": 1e-5}]
REASON = "rung 1 (epoch 1): accuracy 0.1100 below the cutoff 0.6000 of 2 trials"


class Writer:
    """Appends envelopes to the private Redis as the sweep's parts would."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def put(self, topic: str, env: Envelope) -> None:
        self.client.xadd(topic, {b"env": encode(env)})

    def sweep(self, type_: str, data: dict[str, Any]) -> None:
        topic = TOPICS.sweeps() if type_ == SWEEP_STARTED else TOPICS.sweep_events(SWEEP)
        self.put(topic, Envelope(type_, SWEEP, "sweep:test:1", data))

    def run(self, trial: int, type_: str, data: dict[str, Any], epoch: int = 0) -> None:
        env = Envelope(type_, f"{SWEEP}-t{trial:03d}", "trainer:0", data, epoch=epoch)
        self.put(TOPICS.events(env.run_id), env)
        if type_ in (RUN_STARTED, RUN_FINISHED):
            self.put(TOPICS.registry(), env)

    def accuracy(self, trial: int, epoch: int, value: float) -> None:
        data = {"split": "val", "metrics": {"accuracy": value}, "metric_states": {}}
        self.run(trial, EPOCH_COMPLETED, data, epoch=epoch)


def started_data(config: dict[str, Any]) -> dict[str, Any]:
    """SWEEP_STARTED's data for a grid over two learning rates."""
    return {
        "params": {"optim.lr": "choice(0.01, 1e-05)"},
        "trials": 2,
        "sampler": "grid",
        "objective": OBJECTIVE,
        "config": config,
        "started_at": 1.0,
    }


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Writer, WebServer, Any]]:
    server = RedisServer().start()
    writer = Writer(server.url)
    config = {"train": {"epochs": 3}}
    writer.sweep(SWEEP_STARTED, started_data(config))
    for trial, params in enumerate(PARAMS):
        order = {
            "trial": trial,
            "run_id": f"{SWEEP}-t{trial:03d}",
            "params": params,
            "config": config,
            "nproc": 1,
        }
        writer.put(TOPICS.trials(SWEEP), Envelope(TRIAL, SWEEP, "sweep:test:1", order))
        writer.sweep(
            TRIAL_STARTED,
            {"trial": trial, "run_id": order["run_id"], "agent": "agent-a", "resumed_from": None},
        )
        started = {
            "config": config,
            "rank": 0,
            "world_size": 1,
            "host": "h",
            "pid": 1,
            "resumed_from": None,
            "sweep": {"id": SWEEP, "trial": trial, "params": params, "objective": OBJECTIVE},
        }
        writer.run(trial, RUN_STARTED, started)
        writer.accuracy(trial, 0, [0.62, 0.11][trial])
    options = WebOptions(bus_url=server.url, runs_dir=tmp_path_factory.mktemp("runs"))
    web = WebServer(options).start()
    try:
        with browser() as chrome:
            page = chrome.new_page()
            yield writer, web, page
            page.close()
    finally:
        web.stop()
        writer.client.close()
        server.close()


def _rows(page: Any) -> list[list[str]]:
    return page.eval_on_selector_all(
        "#trials tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))"
    )


def _curve(page: Any, trial: int) -> list[float | None]:
    data = page.evaluate("window.chartData['val/accuracy'] || null")
    return [] if data is None else data["series"].get(f"trial {trial}", [])


def test_the_page_lists_the_trials_with_their_values_and_curves(live) -> None:
    _, web, page = live
    page.goto(f"{web.url}/sweeps/{SWEEP}")
    # Each trial's events are read by a tail of their own, so they may come in either order.
    eventually(
        lambda: _curve(page, 0) == [0.62] and _curve(page, 1) == [0.11],
        GUARD,
        "both trials' first epoch",
    )
    rows = _rows(page)
    assert rows[0][0] == "0" and rows[0][1] == f"{SWEEP}-t000" and "optim.lr=0.01" in rows[0][2]
    assert rows[0][3] == "running" and rows[0][5] == "0.6200"
    assert _curve(page, 0) == [0.62] and _curve(page, 1) == [0.11]
    assert "0/2 done" in page.text_content("#progress")
    shown = f"bus {web.options.shown_url} · "
    eventually(lambda: page.text_content("#bus").startswith(shown), GUARD, "the bus's state")


def test_a_new_epoch_and_a_pruned_trial_show_up_live(live) -> None:
    writer, _, page = live
    writer.accuracy(0, 1, 0.81)
    eventually(lambda: _curve(page, 0) == [0.62, 0.81], GUARD, "trial 0's second epoch")
    finished = {
        "status": "terminated",
        "reason": REASON,
        "by": "pruner-x",
        "voter": "pruner-x",
        "epochs": 1,
        "iteration": 8,
    }
    writer.run(1, RUN_FINISHED, finished)
    writer.sweep(
        TRIAL_ENDED,
        {"trial": 1, "run_id": f"{SWEEP}-t001", "agent": "agent-a", **finished, "exit": 0},
    )
    eventually(lambda: _rows(page)[1][3] == "pruned", GUARD, "trial 1 pruned")
    assert _rows(page)[1][6] == "pruner-x at rung 1 (epoch 1)"
    assert "1 pruned" in page.text_content("#progress")
    assert "best val/accuracy 0.8100 (trial 0)" in page.text_content("#progress")


def test_the_runs_page_links_the_sweep_and_an_unknown_sweep_is_a_404(live) -> None:
    _, web, page = live
    page.goto(f"{web.url}/")
    eventually(lambda: page.is_visible("#sweeps-box"), GUARD, "the sweeps list")
    assert page.get_attribute("#sweeps a", "href") == f"/sweeps/{SWEEP}"
    answer = httpx.get(f"{web.url}/api/sweeps/nope", timeout=GUARD)
    assert answer.status_code == 404 and "no sweep 'nope'" in answer.json()["error"]


def test_requests_that_come_together_each_answer_the_whole_sweep(live) -> None:
    # A page asks for a sweep and its stream at once: whichever request comes second waits for
    # the history the first one started reading, rather than answering what is read so far.
    writer, web, _ = live
    other = "web-sweep-together"
    writer.put(TOPICS.sweeps(), Envelope(SWEEP_STARTED, other, "sweep:test:2", started_data({})))
    for trial in range(2):
        started = {
            "trial": trial,
            "run_id": f"{other}-t{trial:03d}",
            "agent": "agent-a",
            "resumed_from": None,
        }
        writer.put(
            TOPICS.sweep_events(other), Envelope(TRIAL_STARTED, other, "sweep:test:2", started)
        )

    def ask(_: int) -> dict[str, Any]:
        return httpx.get(f"{web.url}/api/sweeps/{other}", timeout=GUARD).json()

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    assert [len(answer["trials"]) for answer in answers] == [2, 2, 2, 2]
