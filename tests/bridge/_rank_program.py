"""One rank of the rank tests: `python _rank_program.py '<json args>'`, one fresh process each.

The rank joins a gloo group on a localhost port (no launcher) and does the runs the args list,
one after the other (a fresh process costs seconds of torch import; a run costs milliseconds):
each an Engine whose every step all-reduces a tensor (a rank left behind would hang there),
attached to a BusRun of its own run id on the test's Redis. It writes what it observed, by run
name, to `<out>/rank<r>.json` (or the traceback to `rank<r>.err`).
"""

from __future__ import annotations

import datetime
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer import Engine, Events
from trainer.bridge import BusRun
from trainer.distributed import DistributedRNGState, world
from trainer.handlers import TerminateOnNan

# Hang guards, not expectations.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)
WAIT_S = 30.0
EPOCH_LENGTH = 8


def wait_for(predicate: Any, what: str) -> None:
    """Poll until `predicate()` holds; raise after WAIT_S seconds."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {WAIT_S} s")
        time.sleep(0.005)


def collective_trainer(rank: int, nan_at: int | None = None) -> tuple[Engine, list[int]]:
    """An engine whose step all-reduces its batch; and the iterations whose step ran."""
    steps: list[int] = []

    def step(engine: Engine, batch: int) -> float:
        total = torch.tensor([float(batch) + torch.rand(()).item()])
        dist.all_reduce(total)
        steps.append(engine.state.iteration)
        if engine.state.iteration == nan_at:
            return float("nan")
        return total.item()

    return Engine(step), steps


def bus_run(args: dict[str, Any], run_id: str, **kw: Any) -> BusRun:
    """This rank's BusRun of `run_id` on the test's bus."""
    rank, size = world()
    return BusRun(
        args["bus_url"],
        run_id,
        rank=rank,
        world_size=size,
        stop_sync_every=args["k"],
        **kw,
    )


def observed(run: BusRun, engine: Engine, steps: list[int]) -> dict[str, Any]:
    """What the test compares across ranks."""
    end = run.finish()
    return {
        "iteration": engine.state.iteration,
        "epochs": end.epochs,
        "status": end.status,
        "by": end.by,
        "reason": end.reason,
        "steps": len(steps),
        "agreements": run.agreements,
        "agreement_seconds": run.agreement_seconds,
    }


def terminate_run(args: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """TERMINATE from the test: the rank that is told to waits at iteration 3 until its control
    reader has it, so the agreement at iteration k is the first to see a stop."""
    rank, _ = world()
    engine, steps = collective_trainer(rank)
    run = bus_run(args, spec["run_id"], secret=spec["secret_of"].get(str(rank)))
    run.attach(engine)
    # Scheduled far away: the only checkpoint is the final one, after the agreed stop.
    to_save = {"trainer": engine, "rng": DistributedRNGState()}
    run.checkpoint(to_save, every=1000, directory=spec["checkpoint_dir"])
    if rank == spec["waiter"]:
        engine.add_event_handler(
            Events.ITERATION_COMPLETED(once=3),
            lambda _: wait_for(lambda: run.control.stop is not None, "the TERMINATE"),
        )
    with run:
        engine.run(range(EPOCH_LENGTH), max_epochs=100)
    result = observed(run, engine, steps)
    result["control_stop"] = None if run.control.stop is None else run.control.stop.by
    run.close()
    return result


def local_run(args: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """A stop decided by the program of one rank (or of several)."""
    rank, _ = world()
    nan_at = spec.get("nan_at", {}).get(str(rank))
    engine, steps = collective_trainer(rank, nan_at)
    if nan_at is not None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())
    for event_name, at in spec.get("terminate", {}).get(str(rank), []):
        event = getattr(Events, event_name)(once=at)
        engine.add_event_handler(event, lambda e: e.terminate())
    run = bus_run(args, spec["run_id"])
    run.attach(engine)
    with run:
        engine.run(range(EPOCH_LENGTH), max_epochs=5)
    result = observed(run, engine, steps)
    run.close()
    return result


def checkpoint_run(args: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """CHECKPOINT_REQUEST from the test, seen by rank 0 before the agreement at iteration k;
    scheduled checkpoints every epoch; every rank's RNG state in the file."""
    rank, _ = world()
    torch.manual_seed(100 + rank)
    engine, steps = collective_trainer(rank)
    model = torch.nn.Linear(3, 2)
    directory = Path(spec["checkpoint_dir"])
    run = bus_run(args, spec["run_id"])
    run.attach(engine)
    run.checkpoint(
        {"model": model, "trainer": engine, "rng": DistributedRNGState()}, directory=directory
    )
    if rank == 0:
        engine.add_event_handler(
            Events.ITERATION_COMPLETED(once=3),
            lambda _: wait_for(lambda: run.control.pending, "the CHECKPOINT_REQUEST"),
        )
    with run:
        engine.run(range(EPOCH_LENGTH), max_epochs=2)
    result = observed(run, engine, steps)
    # Nothing has drawn from the RNGs since the last checkpoint (the end of the last epoch).
    result["draw_after_run"] = torch.rand(3).tolist()
    run.close()
    dist.barrier()  # rank 0's close() waited for its writes: the file is complete now
    last = directory / ".incoming" / f"checkpoint_{engine.state.iteration}.pt"
    state = torch.load(last, weights_only=True)
    DistributedRNGState().load_state_dict(state["rng"])
    result["draw_after_restore"] = torch.rand(3).tolist()
    return result


def vote_run(args: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Barrier mode: every rank waits at EPOCH_COMPLETED for the registered voter's vote."""
    rank, _ = world()
    engine, steps = collective_trainer(rank)
    run = bus_run(args, spec["run_id"], barrier=True, heartbeat_timeout=300.0)
    run.attach(engine)
    with run:
        engine.run(range(EPOCH_LENGTH), max_epochs=5)
    result = observed(run, engine, steps)
    result["barriers"] = [b.epoch for b in run.barriers]
    run.close()
    return result


KINDS = {
    "terminate": terminate_run,
    "local": local_run,
    "checkpoint": checkpoint_run,
    "vote": vote_run,
}


def run_all(args: dict[str, Any]) -> dict[str, Any]:
    """Every run of `args["runs"]`, one after the other: what each rank observed, by name."""
    return {spec["name"]: KINDS[spec["kind"]](args, spec) for spec in args["runs"]}


def main(argv: list[str]) -> int:
    """Join the group, run the scenario, write this rank's observations."""
    args = json.loads(argv[1])
    rank, out = args["rank"], Path(args["out"])
    try:
        torch.set_num_threads(1)  # two ranks on two cores: no intra-op pools fighting
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{args['port']}",
            rank=rank,
            world_size=args["world_size"],
            timeout=COLLECTIVE_TIMEOUT,
        )
        try:
            result = run_all(args)
        finally:
            dist.destroy_process_group()
        (out / f"rank{rank}.json").write_text(json.dumps(result))
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
