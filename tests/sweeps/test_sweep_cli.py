"""`trainer sweep` and `trainer agent` from the command line: the SPEC grammar, the `sweep:`
section, and bad input (one line, exit 2, nothing started: no run directory, nothing on the bus).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from test_cli import EXAMPLE, run_main
from test_cli_bad_input import one_line

from bus import BEGINNING, Topics, open_bus, tail
from bus.messages import RUN_STARTED
from trainer import config
from trainer.sweep_spec import Choice, IntRange, SweepSpecError, Uniform, parse_spec, plan_sweep

# A trial that costs next to nothing: one epoch of two iterations, no checkpoints.
TINY = ["train.epochs=1", "train.epoch_length=2", "checkpoint.every=null"]


# -- the SPEC grammar ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("choice(0.1, 0.01)", Choice((0.1, 0.01))),
        ("choice(adam, sgd)", Choice(("adam", "sgd"))),
        ("choice([32], [64, 32])", Choice(([32], [64, 32]))),
        ("choice(true, 'a, b')", Choice((True, "a, b"))),
        ("uniform(0, 1)", Uniform(0.0, 1.0)),
        ("loguniform(1e-4, 1e-1)", Uniform(1e-4, 1e-1, log=True)),
        ("int(16, 256)", IntRange(16, 256)),
        ("  int( 1 ,1 ) ", IntRange(1, 1)),
    ],
)
def test_each_spec_form_reads_its_values(text: str, expected: object) -> None:
    assert parse_spec(text, "--param k") == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("lognormal(1, 2)", "is not one of choice(a, b, ...), uniform(lo, hi)"),
        ("choice()", "choice needs one value or more"),
        ("choice(1,,2)", "cannot read its values"),
        ("choice([1, 2)", "unbalanced brackets"),
        ("uniform(1)", "uniform takes two values"),
        ("uniform(2, 1)", "two finite numbers lo < hi"),
        ("uniform(a, b)", "two finite numbers lo < hi"),
        ("loguniform(0, 1)", "needs 0 < lo"),
        ("int(1.5, 3)", "two integers lo <= hi"),
        ("int(5, 1)", "two integers lo <= hi"),
    ],
)
def test_a_malformed_spec_says_which_and_the_forms(text: str, says: str) -> None:
    with pytest.raises(SweepSpecError) as raised:
        parse_spec(text, "--param optim.lr")
    message = str(raised.value)
    assert message.startswith("--param optim.lr: SPEC") and says in message, message


def test_the_sweep_section_says_what_param_options_say(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"{EXAMPLE.read_text()}\n"
        "sweep:\n"
        "  params:\n"
        "    optim.lr: loguniform(1e-4, 1e-1)\n"
        "    model:\n"
        "      hidden: [[32], [64]]\n"  # a list: choice of its items
        "  trials: 6\n"
        "  parallel: 2\n"
        "  sampler: random\n"
        "  seed: 3\n"
    )
    from_yaml = plan_sweep(config.load(path))
    from_cli = plan_sweep(
        config.load(EXAMPLE),
        ["optim.lr=loguniform(1e-4, 1e-1)", "model.hidden=choice([32], [64])"],
        trials=6,
        parallel=2,
        sampler="random",
        seed=3,
    )
    assert from_yaml == from_cli
    assert from_yaml.params_text() == {
        "optim.lr": "loguniform(0.0001, 0.1)",
        "model.hidden": "choice([32], [64])",
    }
    # The command line wins over the section.
    assert plan_sweep(config.load(path), ["optim.lr=choice(0.1)"], trials=2).trials == 2
    assert plan_sweep(config.load(path), ["optim.lr=choice(0.1)"]).params["optim.lr"] == Choice(
        (0.1,)
    )


def test_a_grid_counts_its_own_trials_and_refuses_ranges_and_too_many() -> None:
    cfg = config.load(EXAMPLE)
    grid = ["optim.lr=choice(0.1, 0.01, 0.001)", "data.batch_size=int(16, 18)"]
    assert plan_sweep(cfg, grid, sampler="grid").trials == 9
    assert plan_sweep(cfg, grid, sampler="grid", trials=4).trials == 4
    with pytest.raises(SweepSpecError, match="the grid has 9 points only"):
        plan_sweep(cfg, grid, sampler="grid", trials=10)
    with pytest.raises(SweepSpecError, match="continuous range, which has no grid"):
        plan_sweep(cfg, ["optim.lr=uniform(0.1, 1)"], sampler="grid")
    with pytest.raises(SweepSpecError, match="how many trials"):
        plan_sweep(cfg, ["optim.lr=uniform(0.1, 1)"], sampler="tpe")


# -- bad input on the command line: one line, exit 2, nothing started ------------------------


@pytest.mark.parametrize(
    ("param", "says"),
    [
        ("optim.learning_rate=loguniform(1e-4, 1e-1)", "did you mean 'optim.lr'?"),
        ("train.batch_size=choice(16, 64)", "did you mean 'data.batch_size'?"),
        ("model.hiden=choice([32])", "did you mean 'model.hidden'?"),
        ("optim.lr=loguniform(1e-4)", "loguniform takes two values, lo and hi"),
        ("optim.lr=normal(0, 1)", "is not one of choice(a, b, ...)"),
        ("optim.lr=choice(-1, 0.1)", "bad value for 'optim.lr'"),
        ("optim.name=choice(adam, lion)", "'lion' is not one of"),
        ("model.hidden=choice(32, 64)", "takes a list"),
        ("optim=choice(1)", "'optim' is a section, not a key"),
        ("optim.lr", "write KEY=SPEC"),
    ],
)
def test_bad_params_are_one_line_and_start_nothing(
    capsys, tmp_path: Path, param: str, says: str
) -> None:
    runs = tmp_path / "runs"
    status, out, err = run_main(
        capsys, "sweep", EXAMPLE, "--param", param, "--trials", "2", f"run.dir={runs}"
    )
    assert status == 2
    line = one_line(err)
    assert says in line, line
    if "unknown config key" in line:
        assert param.partition("=")[0] in line
    assert out == "" and not runs.exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--nproc", "2"], "give --bus redis://"),
        (["--parallel", "0"], "--parallel 0 leaves every trial to agents"),
        (["--trials", "0"], "a sweep runs 1 trial or more"),
        (["--sweep-id", "no spaces"], "not usable in a topic name"),
        (["--sampler", "grid", "--trials", "3"], "the grid has 2 points only"),
    ],
)
def test_sweeps_that_cannot_run_here_are_refused(capsys, tmp_path, args, says) -> None:
    runs = tmp_path / "runs"
    spec = "optim.lr=choice(0.1, 0.01)"
    argv = ["sweep", EXAMPLE, "--param", spec, "--trials", "2", *args, f"run.dir={runs}"]
    status, _, err = run_main(capsys, *argv)
    assert status == 2 and says in one_line(err)
    assert not runs.exists()


def test_nothing_to_sweep_is_refused(capsys, tmp_path) -> None:
    status, _, err = run_main(capsys, "sweep", EXAMPLE, "--trials", "2", f"run.dir={tmp_path}/r")
    assert status == 2 and "nothing to sweep" in one_line(err)


def test_a_sweep_id_the_bus_never_saw_is_refused_by_an_agent(capsys, redis_url) -> None:
    status, out, err = run_main(capsys, "agent", "--bus", redis_url, "--sweep", "nope")
    assert status == 2
    line = one_line(err)
    assert "no sweep 'nope' on the bus" in line and "trainer sweep" in line
    assert out == ""
    # Nothing was started: no queue, no group, nothing on the registry of sweeps.
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys("*") == []
    finally:
        client.close()


def test_an_agent_needs_a_shared_bus(capsys) -> None:
    status, _, err = run_main(capsys, "agent", "--bus", "memory://x", "--sweep", "s")
    assert status == 2 and "in-memory bus lives inside one process" in one_line(err)


# -- a sweep of the sweep: section, in this process -------------------------------------------


def test_without_a_bus_the_sweep_runs_here_and_each_trial_says_it_is_one(capsys, tmp_path):
    runs = tmp_path / "runs"
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"{EXAMPLE.read_text()}\n"
        "sweep:\n"
        "  params:\n"
        "    optim.lr: choice(0.01, 0.003)\n"
        "  sampler: grid\n"
        "  parallel: 2\n"
    )
    status, out, err = run_main(
        capsys, "sweep", path, "--sweep-id", "cli-sweep", f"run.dir={runs}", *TINY
    )
    assert status == 0, err
    assert "sweep id: cli-sweep" in out and "2/2 done" in out
    trials = sorted(runs.glob("cli-sweep-t*"))
    assert [t.name for t in trials] == ["cli-sweep-t000", "cli-sweep-t001"]
    seen = {}
    for trial in trials:
        meta = json.loads((trial / "run.json").read_text())
        assert meta["status"] == "completed"
        seen[meta["sweep"]["trial"]] = meta["sweep"]["params"]["optim.lr"]
        assert meta["config"]["optim"]["lr"] == meta["sweep"]["params"]["optim.lr"]
    assert sorted(seen.values()) == [0.003, 0.01]
    assert (runs / "cli-sweep.png").is_file()


async def _run_started(url: str, run_id: str) -> dict:
    bus = open_bus(url)
    try:
        async for env in tail(bus, Topics().registry(), BEGINNING, follow=False):
            if env.type == RUN_STARTED and env.run_id == run_id:
                return env.data
    finally:
        await bus.close()
    raise AssertionError(f"no RUN_STARTED of {run_id}")


def test_a_trial_run_carries_its_sweep_in_run_started(capsys, tmp_path, redis_url) -> None:
    marker = {"id": "s9", "trial": 4, "params": {"optim.lr": 0.01}}
    status, _, err = run_main(
        capsys,
        "run",
        EXAMPLE,
        "--bus",
        redis_url,
        "--run-id",
        "s9-t004",
        "--run-dir",
        tmp_path / "runs" / "s9-t004",
        "--with-workers",
        "--sweep-trial",
        json.dumps(marker),
        f"run.dir={tmp_path}/runs",
        "train.progress_bar=false",
        *TINY,
    )
    assert status == 0, err
    data = asyncio.run(_run_started(redis_url, "s9-t004"))
    assert data["sweep"] == marker
    # --with-workers: the tracking worker ran in the trial's process and wrote its directory.
    meta = json.loads((tmp_path / "runs" / "s9-t004" / "run.json").read_text())
    assert meta["sweep"] == marker and meta["status"] == "completed"


def test_a_malformed_sweep_trial_marker_is_refused(capsys, tmp_path) -> None:
    status, _, err = run_main(
        capsys, "run", EXAMPLE, "--sweep-trial", '{"id": "s", "trial": -1, "params": {}}'
    )
    assert status == 2 and "--sweep-trial" in one_line(err) and "trial (int >= 0)" in err


def test_run_started_sweep_is_checked_when_present_and_the_sweep_types_are_catalogued() -> None:
    from bus import Rejected
    from bus.messages import EVENTS, REGISTRY, REQUIRED, SWEEP_EVENTS, TRIALS, check_data

    started = {"config": {}, "rank": 0, "world_size": 1, "host": "h", "pid": 1}
    started["resumed_from"] = None
    check_data(RUN_STARTED, started, topic=EVENTS)  # no sweep: an ordinary run
    good = {"id": "s", "trial": 0, "params": {"optim.lr": 0.1}}
    check_data(RUN_STARTED, {**started, "sweep": good}, topic=REGISTRY)
    for bad in ({"id": "", "trial": 0, "params": {}}, {"id": "s", "trial": "0", "params": {}}):
        with pytest.raises(Rejected, match="'sweep' must be a map of id"):
            check_data(RUN_STARTED, {**started, "sweep": bad}, topic=EVENTS)
    assert set(REQUIRED[TRIALS]) == {"TRIAL"}
    assert set(REQUIRED[SWEEP_EVENTS]) == {"TRIAL_STARTED", "TRIAL_ENDED"}
