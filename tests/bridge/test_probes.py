"""Probes: values a step does not return, put into ITERATION_COMPLETED outputs without editing
the job (config `bus.probes`, BusRun(probes=...))."""

from __future__ import annotations

from typing import Any

import pytest

from trainer import Engine
from trainer.bridge import BusRun
from trainer.bridge.outputs import Probes
from trainer.plugins import PluginError

from ._bus import TOPICS, BusClient


def iteration_of(engine: Engine) -> dict[str, float]:
    """A probe: the engine's iteration, and one value with nothing to report."""
    return {"iteration": engine.state.iteration, "nothing": None}


def outputs(client: BusClient, run_id: str) -> list[tuple[str, dict[str, Any]]]:
    events = client.read(TOPICS.events(run_id))
    return [(e.data["split"], e.data["outputs"]) for e in events if e.type == "ITERATION_COMPLETED"]


@pytest.mark.parametrize("bus_url", ["memory"], indirect=True)
def test_probe_values_join_each_published_iteration_as_probe_names(bus_url, client, run_id) -> None:
    # By import path, as the config names it, and as a function; the step's own outputs stay.
    run = BusRun(
        bus_url,
        run_id,
        probes=["tests.bridge.test_probes:iteration_of", lambda engine: {"mb": 12}],
    )
    trainer = Engine(lambda engine, batch: {"loss": float(batch)})
    run.attach(trainer)
    with run:
        trainer.run([1.0, 3.0], max_epochs=1)
    assert outputs(client, run_id) == [
        ("train", {"loss": 1.0, "probe/iteration": 1.0, "probe/mb": 12.0}),
        ("train", {"loss": 3.0, "probe/iteration": 2.0, "probe/mb": 12.0}),
    ]


@pytest.mark.parametrize("bus_url", ["memory"], indirect=True)
def test_a_coalesced_window_reads_the_probes_when_it_is_published(bus_url, client, run_id) -> None:
    run = BusRun(bus_url, run_id, publish_every=2, probes=[iteration_of])
    trainer = Engine(lambda engine, batch: batch)
    run.attach(trainer)
    with run:
        trainer.run([1.0, 3.0, 5.0], max_epochs=1)
    # The step's output is the window's mean; the probe is read at publishing (not averaged).
    assert outputs(client, run_id) == [
        ("train", {"output": 2.0, "probe/iteration": 2.0}),
        ("train", {"output": 5.0, "probe/iteration": 3.0}),
    ]


def test_a_probe_that_returns_no_mapping_of_numbers_is_named() -> None:
    with pytest.raises(TypeError, match=r"probe .*<lambda> returned a list: return a mapping"):
        Probes.load([lambda engine: [1.0]], str).read(None)  # type: ignore[union-attr]
    with pytest.raises(TypeError, match=r"returned 'mb': 'big', which is not a number"):
        Probes.load([lambda engine: {"mb": "big"}], str).read(None)  # type: ignore[union-attr]


def test_no_probes_cost_nothing_and_bad_paths_are_named_with_their_origin() -> None:
    def where(index: int) -> str:
        return f"config 'bus.probes[{index}]'"

    assert Probes.load([], where) is None
    with pytest.raises(PluginError) as caught:
        Probes.load(["json:nothere"], where)
    assert str(caught.value) == (
        "probe 'json:nothere' (config 'bus.probes[0]'): module 'json' has no attribute "
        "'nothere'; check the name after ':'"
    )
    with pytest.raises(PluginError, match=r"'json:__name__' .* is a str, not a function"):
        Probes.load(["json:__name__"], where)
