"""Several ranks on one run: stops and checkpoints agreed through torch.distributed.

Two ranks are two fresh processes (`_rank_program.py`) joined in a gloo group on a localhost
port, each with an Engine whose every step all-reduces a tensor, so a rank that stopped alone
would leave the other hanging in that collective (until the group's timeout fails it: the
tests would fail, not hang). Each rank attaches a BusRun to the test's private Redis and writes
what it observed; the test reads the bus back through the bus API.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from redis_server import RedisServer

from bus import Envelope
from trainer import Engine, Events
from trainer.bridge import BusRun
from trainer.checkpoint_store import RNGState, capture_rng_state
from trainer.distributed import (
    CAUSE_BYTES,
    DistributedRNGState,
    decode_cause,
    encode_cause,
    init_from_env,
    world,
)

from ._bus import TOPICS, BusClient, control, joined, types, wait_until

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROGRAM = HERE / "_rank_program.py"
WORLD = 2
# Hang guard of each rank process (never a timing assertion).
RANK_TIMEOUT = 120.0
# The ranks agree every K iterations, and an epoch has EPOCH_LENGTH of them.
K = 5
EPOCH_LENGTH = 8


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Ranks:
    """The two rank processes, their logs and what they wrote."""

    def __init__(self, args: dict[str, Any], out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        env.pop("TRAINER_BUS_SECRET", None)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = [out / f"rank{rank}.log" for rank in range(WORLD)]
        for rank in range(WORLD):
            spec = {**args, "rank": rank, "world_size": WORLD, "port": port, "out": str(out)}
            with open(self.logs[rank], "wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, str(PROGRAM), json.dumps(spec)],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )

    def results(self) -> list[Any]:
        """Each rank's observations, once both exited; fail showing their output otherwise."""
        try:
            for proc in self.procs:
                proc.wait(RANK_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill()
        failures = []
        for rank, proc in enumerate(self.procs):
            if proc.returncode != 0:
                err = self.out / f"rank{rank}.err"
                why = err.read_text() if err.exists() else "no traceback (killed?)"
                failures.append(
                    f"rank {rank} exited {proc.returncode}:\n{why}\n{self.logs[rank].read_text()}"
                )
        assert not failures, "\n".join(failures)
        return [json.loads((self.out / f"rank{r}.json").read_text()) for r in range(WORLD)]

    def kill(self) -> None:
        """Kill the ranks still running (a hang guard's expiry, or a failing test)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def wait_started(self, client: BusClient, run_id: str) -> None:
        """Until both ranks announced `run_id` (commands from then on are not stale history)."""

        def started() -> bool:
            if any(proc.poll() not in (None, 0) for proc in self.procs):
                self.results()  # a rank died: fail with its output
            envs = client.read(TOPICS.events(run_id))
            return sum(env.type == "RUN_STARTED" for env in envs) == WORLD

        try:
            wait_until(started, f"RUN_STARTED of both ranks of {run_id}")
        except AssertionError as exc:
            self.kill()
            logs = "\n".join(f"rank {r}:\n{log.read_text()}" for r, log in enumerate(self.logs))
            raise AssertionError(f"{exc}\n{logs}") from None


TERMINATE_CASES = {
    "both ranks": {"secret_of": {}, "waiter": 0},
    # Rank 0 with a signing secret ignores the unsigned TERMINATE: only rank 1 acts on it.
    "rank 1 only": {"secret_of": {"0": "s3cret"}, "waiter": 1},
}
# Agreement points: every K = 5 iterations and every epoch end (8, 16, ...): 5, 8, 10, 15, 16, 20.
LOCAL_CASES = [
    # TerminateOnNan on rank 1 at iteration 11: both stop at the next agreement point, 15.
    # Its reason, the one TerminateOnNan gives terminate(), is every rank's RUN_FINISHED reason.
    {
        "name": "nan on rank 1",
        "nan_at": {"1": 11},
        "stop": 15,
        "decider": 1,
        "agreements": 4,
        "reason": "the output of iteration 11 is NaN or inf on rank 1",
    },
    # terminate() in ITERATION_STARTED of 12 on rank 1: its step still runs (the collective
    # in it would hang rank 0 otherwise); both stop at 15.
    {
        "name": "iteration started",
        "terminate": {"1": [["ITERATION_STARTED", 12]]},
        "stop": 15,
        "decider": 1,
        "agreements": 4,
    },
    # terminate() at the second EPOCH_COMPLETED on rank 1 (what a barrier tally does): every
    # EPOCH_COMPLETED is an agreement point, so both stop after epoch 2, at 16.
    {
        "name": "epoch completed",
        "terminate": {"1": [["EPOCH_COMPLETED", 2]]},
        "stop": 16,
        "decider": 1,
        "agreements": 5,
    },
    # Both ranks ask before the agreement at 20: the lowest rank's cause wins on both.
    {
        "name": "lowest rank",
        "terminate": {"1": [["ITERATION_COMPLETED", 17]], "0": [["ITERATION_COMPLETED", 19]]},
        "stop": 20,
        "decider": 0,
        "agreements": 6,
    },
]


@dataclass
class Seen:
    """What two ranks did over all the runs: each rank's observations and each run's events."""

    by_rank: list[dict[str, Any]]  # by rank: run name -> what the rank observed
    events: dict[str, list[Envelope]]  # run name -> the run's events topic
    checkpoint_dir: Path

    def ranks(self, name: str) -> list[dict[str, Any]]:
        """What each rank observed in run `name`, by rank."""
        return [seen[name] for seen in self.by_rank]

    def run_finished(self, name: str) -> dict[str, dict[str, Any]]:
        """RUN_FINISHED data of each rank of run `name`, by source."""
        return {env.source: env.data for env in self.events[name] if env.type == "RUN_FINISHED"}


@pytest.fixture(scope="module")
def seen(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seen]:
    """Two ranks doing every run of this module one after the other, in one pair of processes
    (each process costs seconds of torch import); the test plays the operator on the control
    topics."""
    tmp = tmp_path_factory.mktemp("ranks")
    base = f"ranks-{uuid.uuid4().hex[:10]}"
    runs: list[dict[str, Any]] = []
    # (run id, type, data, sender): built when sent, since commands older than the run's
    # start are stale history to it.
    commands: list[tuple[str, str, dict[str, Any], str]] = []
    for n, (reaches, case) in enumerate(TERMINATE_CASES.items()):
        run_id = f"{base}-t{n}"
        runs.append(
            {
                "kind": "terminate",
                "name": f"terminate {reaches}",
                "run_id": run_id,
                "checkpoint_dir": str(tmp / f"ckpt-t{n}"),
                **case,
            }
        )
        commands.append((run_id, "TERMINATE", {"reason": "operator says so"}, "alice"))
    for n, case in enumerate(LOCAL_CASES):
        runs.append({"kind": "local", "run_id": f"{base}-l{n}", **case})
    run_id = f"{base}-v"
    runs.append({"kind": "vote", "name": "vote", "run_id": run_id})
    vote_data = {"stop": True, "reason": "no improvement", "voter": "voter-1", "epoch": 0}
    commands.append((run_id, "VOTE", vote_data, "voter-1"))
    checkpoint_dir = tmp / "ckpt"
    run_id = f"{base}-c"
    runs.append(
        {
            "kind": "checkpoint",
            "name": "checkpoint",
            "run_id": run_id,
            "checkpoint_dir": str(checkpoint_dir),
        }
    )
    commands.append((run_id, "CHECKPOINT_REQUEST", {"reason": "before the upgrade"}, "bob"))

    client = BusClient(redis_server.url)
    # History: the voter registered before the run started (registrations are never stale).
    client.append(TOPICS.control(f"{base}-v"), joined(f"{base}-v", "voter-1"))
    ranks = Ranks({"bus_url": redis_server.url, "k": K, "runs": runs}, tmp / "out")
    try:
        # The runs come one after the other; each waits (bounded) for its command.
        for run_id, type, data, sender in commands:
            ranks.wait_started(client, run_id)
            client.append(TOPICS.control(run_id), control(run_id, type, data, sender))
        by_rank = ranks.results()
        # Read now: the next test's redis_url fixture empties Redis.
        events = {spec["name"]: client.read(TOPICS.events(spec["run_id"])) for spec in runs}
    finally:
        ranks.kill()
        client.close()
    yield Seen(by_rank, events, checkpoint_dir)


# ---- two ranks ---------------------------------------------------------------------------


@pytest.mark.parametrize("reaches", list(TERMINATE_CASES))
def test_terminate_stops_both_ranks_at_the_same_iteration_naming_the_sender(
    reaches: str, seen: Seen
) -> None:
    name = f"terminate {reaches}"
    results = seen.ranks(name)
    # The rank told waits at iteration 3 until it has the TERMINATE: the agreement at
    # iteration K is where both stop, whichever rank's reader had it.
    assert [r["iteration"] for r in results] == [K, K]
    assert [r["steps"] for r in results] == [K, K]
    for r in results:
        assert (r["status"], r["by"], r["reason"]) == ("terminated", "alice", "operator says so")
        assert r["agreements"] == 1 and r["agreement_seconds"] > 0
    if reaches == "rank 1 only":
        assert [r["control_stop"] for r in results] == [None, "alice"]
    finished = seen.run_finished(name)
    assert set(finished) == {"trainer:0", "trainer:1"}
    for data in finished.values():
        assert (data["status"], data["by"], data["reason"], data["iteration"]) == (
            "terminated",
            "alice",
            "operator says so",
            K,
        )
    # The final checkpoint: taken by both ranks at the stop (its RNG states are gathered from
    # both), written and announced by rank 0 alone.
    ready = [env for env in seen.events[name] if env.type == "CHECKPOINT_READY"]
    assert [(env.source, env.data["reason"], env.data["iteration"]) for env in ready] == [
        ("trainer:0", "final", K)
    ]
    final = torch.load(ready[0].data["path"], weights_only=True)
    assert final["trainer"]["iteration"] == K and len(final["rng"]["ranks"]) == WORLD


@pytest.mark.parametrize("case", LOCAL_CASES, ids=[case["name"] for case in LOCAL_CASES])
def test_a_stop_one_ranks_program_decides_stops_every_rank_at_the_next_agreement(
    case: dict[str, Any], seen: Seen
) -> None:
    name, stop, decider = case["name"], case["stop"], case["decider"]
    results = seen.ranks(name)
    assert [r["iteration"] for r in results] == [stop, stop]
    assert [r["steps"] for r in results] == [stop, stop]  # no step skipped on any rank
    assert [r["agreements"] for r in results] == [case["agreements"]] * 2
    finished = seen.run_finished(name)
    assert set(finished) == {"trainer:0", "trainer:1"}
    for data in finished.values():
        assert data["status"] == "terminated"
        assert data["by"] == f"trainer:{decider}"
        said = case.get("reason", f"terminated by the program on rank {decider}")
        assert data["reason"] == said
        assert data["iteration"] == stop
        assert data["epochs"] == stop // EPOCH_LENGTH
    for source in ("trainer:0", "trainer:1"):
        mine = types([env for env in seen.events[name] if env.source == source])
        assert mine[-3:] == ["TERMINATE", "COMPLETED", "RUN_FINISHED"], source
        assert mine.count("EPOCH_COMPLETED") == stop // EPOCH_LENGTH, source


def test_a_barrier_vote_stops_every_rank_after_the_epoch_it_voted_on(seen: Seen) -> None:
    results = seen.ranks("vote")
    # Both ranks wait at the end of epoch 0 for the vote (sent once both have started), and
    # agree on the stop there: at the epoch's last iteration, as an in-process EarlyStopping.
    assert [r["iteration"] for r in results] == [EPOCH_LENGTH, EPOCH_LENGTH]
    assert [r["barriers"] for r in results] == [[0], [0]]
    finished = seen.run_finished("vote")
    assert set(finished) == {"trainer:0", "trainer:1"}
    for data in finished.values():
        assert (data["status"], data["by"], data["reason"], data["epochs"]) == (
            "terminated",
            "voter-1",
            "no improvement",
            1,
        )


def test_a_requested_checkpoint_is_taken_on_every_rank_and_written_once_by_rank_0(
    seen: Seen,
) -> None:
    results = seen.ranks("checkpoint")
    last = 2 * EPOCH_LENGTH
    assert [r["iteration"] for r in results] == [last, last]
    assert [r["status"] for r in results] == ["completed", "completed"]
    ready = [env for env in seen.events["checkpoint"] if env.type == "CHECKPOINT_READY"]
    assert {env.source for env in ready} == {"trainer:0"}
    # The request, agreed at iteration K; each epoch's scheduled one (the final checkpoint is
    # the last scheduled one: same iteration).
    assert sorted((env.data["reason"], env.data["iteration"]) for env in ready) == [
        ("requested", K),
        ("scheduled", EPOCH_LENGTH),
        ("scheduled", last),
    ]
    incoming = seen.checkpoint_dir / ".incoming"
    files = sorted(p.name for p in incoming.iterdir())
    assert files == sorted(f"checkpoint_{i}.pt" for i in (K, EPOCH_LENGTH, last))

    requested = torch.load(incoming / f"checkpoint_{K}.pt", weights_only=True)
    assert requested["trainer"]["iteration"] == K
    rngs = requested["rng"]["ranks"]
    assert len(rngs) == WORLD
    assert set(rngs[0]) >= {"python", "numpy", "torch"}
    assert not torch.equal(rngs[0]["torch"], rngs[1]["torch"])  # seeded apart
    # Each rank restored its own state from rank 0's file: it draws what it drew after the run.
    for rank, r in enumerate(results):
        assert r["draw_after_restore"] == r["draw_after_run"], rank
    assert results[0]["draw_after_run"] != results[1]["draw_after_run"]


# ---- one process -------------------------------------------------------------------------


def test_world_size_1_makes_no_torch_distributed_call(
    monkeypatch: pytest.MonkeyPatch, client: BusClient, tmp_path: Path
) -> None:
    import torch.distributed as dist

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.distributed was called by a one-rank run")

    for name in (
        "is_available",
        "is_initialized",
        "get_rank",
        "get_world_size",
        "get_backend",
        "all_reduce",
        "broadcast",
        "all_gather_object",
        "barrier",
    ):
        monkeypatch.setattr(dist, name, forbidden)
    run_id = f"one-{uuid.uuid4().hex[:10]}"
    trainer = Engine(lambda engine, batch: float(batch))
    run = BusRun(client.url, run_id)
    run.attach(trainer)
    run.checkpoint({"trainer": trainer, "rng": RNGState()}, directory=tmp_path / "ckpt")

    def terminate_at_3(engine: Engine) -> None:
        if engine.state.iteration == 3:
            last = client.append(
                TOPICS.control(run_id), control(run_id, "TERMINATE", {"reason": "enough"}, "eve")
            )[-1]
            wait_until(lambda: run.control.last_id == last, "the TERMINATE to be read")

    trainer.add_event_handler(Events.ITERATION_COMPLETED, terminate_at_3)
    with run:
        trainer.run(range(10), max_epochs=3)
    end = run.finish()
    assert (end.status, end.by, end.iteration) == ("terminated", "eve", 3)  # no agreement: at once
    assert (run.agreements, run.agreement_seconds) == (0, 0.0)


def test_ranks_without_a_process_group_do_not_agree_and_say_so(
    client: BusClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="trainer.bridge.run"):
        run = BusRun(client.url, f"r-{uuid.uuid4().hex[:10]}", rank=1, world_size=2)
    try:
        assert "without an initialised torch.distributed process group" in caplog.text
        assert run.agreements == 0
    finally:
        run.close()


def test_a_bus_run_refuses_a_bad_stop_sync_every(client: BusClient) -> None:
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="stop_sync_every"):
            BusRun(client.url, "r-bad", stop_sync_every=bad)


def test_init_from_env_without_torchrun_initialises_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch.distributed as dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env(5.0) == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_from_env(5.0) == (0, 1)
    assert not dist.is_initialized()
    assert world() == (0, 1)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an int"),
        ({"WORLD_SIZE": "2"}, "RANK, MASTER_ADDR, MASTER_PORT is not"),
    ],
)
def test_init_from_env_names_what_is_wrong_with_the_environment(
    env: dict[str, str], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=match):
        init_from_env(5.0)
    with pytest.raises(ValueError, match="timeout"):
        init_from_env(0)


def test_distributed_rng_state_of_one_process_round_trips_and_takes_a_plain_state() -> None:
    saved = DistributedRNGState().state_dict()
    assert len(saved["ranks"]) == 1
    expected = torch.rand(4)
    DistributedRNGState().load_state_dict(saved)
    assert torch.equal(torch.rand(4), expected)

    plain = capture_rng_state()  # what RNGState (a single-process run) saves
    expected = torch.rand(4)
    DistributedRNGState().load_state_dict(plain)
    assert torch.equal(torch.rand(4), expected)

    with pytest.raises(ValueError, match="RNG states of 2 ranks but this job has 1"):
        DistributedRNGState().load_state_dict({"ranks": [plain, plain]})


@pytest.mark.parametrize(
    "reason", ["short", "x" * 5000, "é" * 2000, "\x01" * 900, '"' * 700, "ok 🚀" * 300]
)
def test_a_stop_cause_fits_its_fixed_size_and_keeps_who_decided(reason: str) -> None:
    cause = {"signal": "TERMINATE", "reason": reason, "by": "alice", "rank": 1}
    data = encode_cause(cause)
    assert len(data) <= CAUSE_BYTES
    back = decode_cause(data + b"\0" * (CAUSE_BYTES - len(data)))
    assert (back["signal"], back["by"], back["rank"]) == ("TERMINATE", "alice", 1)
    if len(reason) < 100:
        assert back["reason"] == reason
    else:
        assert reason.startswith(back["reason"].rstrip("\u2026")) and back["reason"]
