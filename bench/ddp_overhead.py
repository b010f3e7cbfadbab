"""What this Engine and its bus cost a DistributedDataParallel job, against a plain DDP loop.

One invocation, figures side by side. Two CPU ranks (gloo, one thread each) train the digits
MLP (as in bench/digits_overhead.py: 64-128-10, batch 64 per rank, Adam) under
DistributedDataParallel, each on its DistributedSampler share:

1. a plain DDP loop tracking the epoch's loss and accuracy by hand;
2. this Engine with Loss and Accuracy attached and no bus (what the Engine itself costs);
3. the same Engine, each rank's BusRun publishing to a private redis-server
   (tests/redis_server.py), the ranks agreeing on stops every k = 10 iterations
   (`dist.stop_sync_every`'s default) and at every epoch end, and a `trainer worker metrics`
   process merging both ranks' states into METRICS;
4. the same with k = 1 (an agreement at every iteration).

The contenders take turns, so machine noise hits them alike. Prints seconds per epoch (median
over turns), the ratio of each Engine turn to the plain turn beside it (median; target <= 1.08
at the default k), and what the stop agreement cost per iteration at k = 1 and at the default k,
from BusRun's own counters (`agreements`, `agreement_seconds`: the time the rank spent in the
agreement's all-reduce, waiting for the other rank included), next to a bare all-reduce of
the same two int64 flags timed in the same run.

On a machine shared with other work the wall-clock ratios move by +-10% from one invocation to
the next, so it also prints the CPU time of each contender per epoch, which moves far less: both
rank processes (every thread: training, the bus publisher, gloo's), and while the bus turns run,
the redis-server and the metrics worker, which take their CPU from the same cores.

    .venv/bin/python bench/ddp_overhead.py [--rounds 10] [--epochs 10]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import pickle
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import redis
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from redis_server import RedisServer  # noqa: E402

from bus import Topics, decode, new_id  # noqa: E402
from trainer import Engine  # noqa: E402
from trainer.bridge import BusRun  # noqa: E402
from trainer.metrics import Accuracy, Loss  # noqa: E402
from trainer.tasks.digits import digits_tensors  # noqa: E402
from trainer.tasks.mlp import mlp  # noqa: E402

WORLD = 2
DEFAULT_K = 10  # dist.stop_sync_every's default
# Bounds, not expectations: a rank that cannot finish in these is broken.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=120)
JOIN_TIMEOUT = 1800.0


class Job:
    """One rank's model in DDP, its optimizer and its share of the digits training split."""

    def __init__(self, rank: int, x: torch.Tensor, y: torch.Tensor) -> None:
        torch.manual_seed(0)
        self.model = DistributedDataParallel(mlp(64, [128], 10))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = nn.CrossEntropyLoss()
        data = TensorDataset(x, y)
        self.sampler = DistributedSampler(data, num_replicas=WORLD, rank=rank, shuffle=True, seed=0)
        self.loader = DataLoader(data, batch_size=64, sampler=self.sampler)

    def step(self, engine: Any, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
        """One training step (gradients all-reduced); the output carries what metrics read."""
        x, y = batch
        self.optimizer.zero_grad()
        y_pred = self.model(x)
        loss = self.loss_fn(y_pred, y)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "y_pred": y_pred.detach(), "y": y}


def plain(
    rank: int, x: torch.Tensor, y: torch.Tensor, epochs: int, *, pids: dict[str, int], **_: Any
) -> dict[str, Any]:
    """A hand-written DDP loop computing the epoch's loss and accuracy of this rank's share."""
    job = Job(rank, x, y)
    dist.barrier()
    meter = Meter(pids)
    for epoch in range(epochs):
        job.sampler.set_epoch(epoch)
        total_loss, batches, correct, seen = 0.0, 0, 0, 0
        for batch in job.loader:
            out = job.step(None, batch)
            total_loss += out["loss"]
            batches += 1
            correct += int((out["y_pred"].argmax(dim=1) == out["y"]).sum())
            seen += len(out["y"])
        metrics = {"loss": total_loss / batches, "accuracy": correct / seen}
    measured = meter.stop()
    assert "accuracy" in metrics
    return measured


def engine_with_metrics(job: Job) -> Engine:
    """The Engine with Loss and Accuracy, as bench/digits_overhead.py attaches them."""
    engine = Engine(job.step)
    engine.add_metric(Loss(), "loss")
    engine.add_metric(Accuracy(), "accuracy")
    return engine


def engine_alone(
    rank: int, x: torch.Tensor, y: torch.Tensor, epochs: int, *, pids: dict[str, int], **_: Any
) -> dict[str, Any]:
    """This Engine with Loss and Accuracy and no bus: what the Engine itself costs."""
    job = Job(rank, x, y)
    engine = engine_with_metrics(job)
    dist.barrier()
    meter = Meter(pids)
    engine.run(job.loader, max_epochs=epochs)
    return meter.stop()


def ours(
    rank: int,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    *,
    pids: dict[str, int],
    url: str,
    run_id: str,
    k: int,
) -> dict[str, Any]:
    """This Engine with Loss and Accuracy, on a run of Redis shared by both ranks."""
    job = Job(rank, x, y)
    engine = engine_with_metrics(job)
    run = BusRun(url, run_id, rank=rank, world_size=WORLD, stop_sync_every=k)
    run.attach(engine, "train")
    with run:
        dist.barrier()
        meter = Meter(pids)
        engine.run(job.loader, max_epochs=epochs)  # the Engine sets the sampler's epoch
        # Before finish(): the publisher thread's CPU is counted while it lives.
        measured = meter.stop()
    assert "accuracy" in engine.state.metrics
    return {
        **measured,
        "iterations": engine.state.iteration,
        "agreements": run.agreements,
        "agreement_seconds": run.agreement_seconds,
    }


def process_cpu(pid: int) -> float:
    """CPU seconds process `pid` has used so far, over its live threads (0.0 if it is gone)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            # schedstat's first field: nanoseconds on a CPU (stat's ticks are 10 ms coarse).
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return total / 1e9


class Meter:
    """Wall-clock and CPU seconds from now until `stop()`: this process's (every thread) and,
    on rank 0, those of the processes in `pids` (the redis-server and the metrics worker)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.side = {name: process_cpu(pid) for name, pid in pids.items()}
        self.cpu = time.process_time()
        self.thread = time.thread_time()
        self.start = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        """{"seconds", "cpu" (this process), "thread" (this thread: the training loop's), "side"
        (name to CPU seconds of that process)}."""
        seconds = time.perf_counter() - self.start
        thread = time.thread_time() - self.thread
        cpu = time.process_time() - self.cpu
        side = {name: process_cpu(pid) - self.side[name] for name, pid in self.pids.items()}
        return {"seconds": seconds, "cpu": cpu, "thread": thread, "side": side}


CONTENDERS = {
    "plain DDP loop": (plain, None),
    "Engine, no bus": (engine_alone, None),
    f"Engine + bus, k={DEFAULT_K}": (ours, DEFAULT_K),
    "Engine + bus, k=1": (ours, 1),
}


def bare_all_reduce(count: int = 500) -> float:
    """Seconds of one all-reduce (MAX) of two int64, as the agreement makes: its floor."""
    flags = torch.zeros(2, dtype=torch.int64)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(count):
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return (time.perf_counter() - start) / count


def rank_main(rank: int, port: int, out: str, args: dict[str, Any]) -> None:
    """One rank: join the group, run every contender in turns, pickle what it measured."""
    try:
        torch.set_num_threads(1)
        warnings.filterwarnings("ignore")
        logging.basicConfig(level=logging.ERROR)
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=WORLD,
            timeout=COLLECTIVE_TIMEOUT,
        )
        x, y = args["x"], args["y"]
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
        turn = 0

        def one(name: str, epochs: int) -> dict[str, Any]:
            nonlocal turn
            turn += 1
            fn, k = CONTENDERS[name]
            run_id = f"{args['session']}-{turn}"  # alike on both ranks: the same run
            pids = args["pids"] if rank == 0 else {}
            return fn(rank, x, y, epochs, pids=pids, url=args["url"], run_id=run_id, k=k)

        for name in CONTENDERS:  # warm-up: imports, connections, allocator, autograd caches
            one(name, 1)
        for _ in range(args["rounds"]):
            for name in CONTENDERS:
                results[name].append(one(name, args["epochs"]))
        results["bare all-reduce"] = [{"seconds": bare_all_reduce()}]
        dist.destroy_process_group()
        Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(results))
    except BaseException:
        Path(out, f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(args: dict[str, Any], out: Path) -> list[dict[str, list[dict[str, Any]]]]:
    """Every rank's measurements, by rank."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [
        context.Process(target=rank_main, args=(rank, port, str(out), args))
        for rank in range(WORLD)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + JOIN_TIMEOUT
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(10)
    errors = [p.read_text() for p in sorted(out.glob("rank*.err"))]
    if errors:
        raise RuntimeError("a rank failed:\n" + "\n".join(errors))
    return [pickle.loads((out / f"rank{rank}.pkl").read_bytes()) for rank in range(WORLD)]


def metrics_reports(url: str, session: str) -> tuple[int, int]:
    """(runs of the session, METRICS the metrics worker published over both ranks on them)."""
    client = redis.Redis.from_url(url)
    topics = Topics()
    runs = reports = 0
    try:
        for key in client.scan_iter(match=f"{topics.namespace}:run:{session}-*:events"):
            runs += 1
            for _, fields in client.xrange(key):
                env = decode(fields[b"env"])
                if env.type == "METRICS" and env.data.get("ranks") == list(range(WORLD)):
                    reports += 1
    finally:
        client.close()
    return runs, reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="turns per contender")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per turn")
    cli = parser.parse_args()
    warnings.filterwarnings("ignore")
    x, y, _, _ = digits_tensors(0.2, seed=0)
    session = f"ddp-bench-{new_id()}"
    server = RedisServer().start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # One metrics worker for every run of the session, as `docker compose up` runs it.
    worker = subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", "worker", "metrics", "--bus", server.url, "--follow"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    args = {
        "x": x,
        "y": y,
        "url": server.url,
        "session": session,
        "rounds": cli.rounds,
        "epochs": cli.epochs,
        "pids": {"redis-server": server.proc.pid, "metrics worker": worker.pid},
    }
    try:
        with tempfile.TemporaryDirectory() as out:
            by_rank = run_ranks(args, Path(out))
        time.sleep(2.0)  # the worker's last METRICS
        runs, reports = metrics_reports(server.url, session)
    finally:
        worker.terminate()
        worker.wait(30)
        server.close()

    # A turn lasts as long as its slower rank; the ranks wait for each other at every step.
    turns = {
        name: [max(r[name][i]["seconds"] for r in by_rank) / cli.epochs for i in range(cli.rounds)]
        for name in CONTENDERS
    }
    bare = max(r["bare all-reduce"][0]["seconds"] for r in by_rank)
    iterations = by_rank[0][f"Engine + bus, k={DEFAULT_K}"][0]["iterations"] // cli.epochs
    print(
        f"digits MLP 64-128-10 under DDP: {WORLD} CPU ranks (gloo, 1 thread each), batch 64 per "
        f"rank, {iterations} iterations/epoch per rank; {cli.rounds} turns of {cli.epochs} "
        f"epochs each; metrics worker: {reports} METRICS over both ranks on {runs} runs"
    )
    plain_name = "plain DDP loop"
    cpu: dict[str, tuple[list[float], list[float]]] = {}  # name: per turn (total, training)
    for name, times in turns.items():
        print(f"  {name:24s} {statistics.median(times) * 1e3:8.2f} ms/epoch (median)")
    print("median of per-turn ratios:")
    for name in CONTENDERS:
        if name == plain_name:
            continue
        pairs = zip(turns[name], turns[plain_name], strict=True)
        ratio = statistics.median(a / b for a, b in pairs)
        target = "  (target <= 1.08)" if name.endswith(f"k={DEFAULT_K}") else ""
        print(f"  {name}/plain = {ratio:.3f}{target}")
    print(
        "CPU ms/epoch, median over turns: both ranks' training threads, their other threads (the "
        "bus publisher's, gloo's), the redis-server and the metrics worker over the same turn; "
        "median of per-turn ratios to plain of the total and of the training threads:"
    )
    for name in CONTENDERS:
        parts: dict[str, list[float]] = {"training": [], "other threads": []}
        for i in range(cli.rounds):
            turn = [r[name][i] for r in by_rank]
            parts["training"].append(sum(t["thread"] for t in turn) / cli.epochs)
            parts["other threads"].append(sum(t["cpu"] - t["thread"] for t in turn) / cli.epochs)
            for side, seconds in turn[0]["side"].items():
                parts.setdefault(side, []).append(seconds / cli.epochs)
        totals = [sum(values) for values in zip(*parts.values(), strict=True)]
        cpu[name] = (totals, parts["training"])
        shown = ", ".join(f"{k} {statistics.median(v) * 1e3:.2f}" for k, v in parts.items())
        ratios = [
            statistics.median(a / b for a, b in zip(mine, base, strict=True))
            for mine, base in zip(cpu[name], cpu[plain_name], strict=True)
        ]
        print(
            f"  {name:24s} {statistics.median(totals) * 1e3:6.2f} ({shown}); ratio total "
            f"{ratios[0]:.3f}, training {ratios[1]:.3f}"
        )
    print(
        "stop agreement (BusRun.agreement_seconds / iterations, both ranks, median over turns; "
        f"a bare all-reduce of two int64 between the ranks takes {bare * 1e6:.1f} us here):"
    )
    for name in CONTENDERS:
        if "bus," not in name:
            continue
        per_iteration = [t["agreement_seconds"] / t["iterations"] for r in by_rank for t in r[name]]
        per_agreement = [t["agreement_seconds"] / t["agreements"] for r in by_rank for t in r[name]]
        agreements = by_rank[0][name][0]["agreements"]
        step = statistics.median(turns[plain_name]) / iterations
        cost = statistics.median(per_iteration)
        print(
            f"  {name}: {cost * 1e6:7.1f} us/iteration ({cost / step:.1%} of a plain step), "
            f"{statistics.median(per_agreement) * 1e6:7.1f} us/agreement, {agreements} agreements "
            f"per {cli.epochs * iterations} iterations"
        )


if __name__ == "__main__":
    main()
