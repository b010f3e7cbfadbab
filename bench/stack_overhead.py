"""What the bus stack costs a training run, and how fast it reacts, against plain references.

One invocation, figures side by side:

1. The digits MLP (as in bench/digits_overhead.py: 64-128-10, batch 64, Adam, one thread, Loss
   and Accuracy tracked) three ways: a plain PyTorch loop; the Engine attached to a run on the
   in-memory bus with the workers as asyncio tasks (the embedded default); the Engine
   publishing to a private redis-server with every worker a separate `trainer worker` process.
   Two more turns split the stacks' cost: the Engine alone (no bus), and the Engine on the
   in-memory bus with no workers (every iteration published, nobody reading).
   Seconds per epoch and each ratio to plain (target <= 1.05 in memory; <= 1.15 on Redis,
   where the four worker processes and the server share the machine's other core), and the
   CPU seconds per epoch of the training thread, the other threads, each worker process and
   redis-server, counted from the start to the end of training (a shared machine's noise
   moves the wall ratios; CPU seconds much less).
2. Stop latency: from a stop VOTE landing on the control stream (its XADD returned) to the end
   of the trainer's last iteration, p50 and p99 over --stops runs (target p99 <= one
   iteration + 5 ms).
3. Loop blocked per checkpoint of a ~100 MB model, next to a synchronous torch.save (with
   fsync) of the same state (target <= 10%): the copy left on the training thread plus any
   wait for the stager's copy at the next optimizer step, in a run whose steps train the model.
4. The metrics worker's throughput on epoch metric states from 16 simulated ranks, envelopes
   handled per second (target >= 50,000/s).

    .venv/bin/python bench/stack_overhead.py [--rounds 5] [--epochs 10] [--stops 25]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import redis
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from digits_overhead import Job, digits_loader  # noqa: E402
from digits_overhead import plain as plain_loop  # noqa: E402
from redis_server import RedisServer  # noqa: E402

from bus import Envelope, Topics, encode, new_id, open_bus  # noqa: E402
from trainer import Engine, Events  # noqa: E402
from trainer.bridge import BusRun  # noqa: E402
from trainer.cli.embedded import EmbeddedWorkers  # noqa: E402
from trainer.config_schema import TrainerConfig  # noqa: E402
from trainer.metrics import Accuracy, Loss  # noqa: E402

# The workers of both stacks (`--kinds`). By default the embedded default's own list, the
# config schema's `workers` (issue 14's target is stated for it): no checkpoints are taken
# here, so the checkpointer only idles; their cost is measured on its own, in part 3. The
# earlier figures used metrics, early-stop, nan-guard, budget (nan-guard reads every iteration).
KINDS = list(TrainerConfig().workers)
RUN_CONFIG = {
    "early_stopping": {"patience": 1000, "metric": "loss", "mode": "min", "split": "train"}
}


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far, read off /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rpartition(b")")[2].split()
    # After the command name: state is field 3, utime and stime fields 14 and 15 (man 5 proc).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Turn:
    """One contender's turn: wall seconds of training, and CPU seconds of who took part."""

    wall: float
    cpu: dict[str, float] = field(default_factory=dict)  # who -> CPU seconds over the turn


def engine_with_metrics(job: Job) -> Engine:
    """The Engine with Loss and Accuracy, as bench/digits_overhead.py attaches them."""
    engine = Engine(job.step)
    engine.add_metric(Loss(), "loss")
    engine.add_metric(Accuracy(), "accuracy")
    return engine


def plain(loader: DataLoader, epochs: int) -> Turn:
    """The plain PyTorch loop, its thread's CPU seconds."""
    cpu = time.thread_time()
    wall = plain_loop(loader, epochs)
    return Turn(wall, {"training thread": time.thread_time() - cpu})


def engine_alone(loader: DataLoader, epochs: int) -> Turn:
    """The Engine with its metrics and no bus: the part of the stack's cost that is the Engine's."""
    engine = engine_with_metrics(Job(seed=0))
    thread = time.thread_time()
    start = time.perf_counter()
    engine.run(loader, max_epochs=epochs)
    return Turn(time.perf_counter() - start, {"training thread": time.thread_time() - thread})


def bus_alone(loader: DataLoader, epochs: int, publish_every: int = 1) -> Turn:
    """The Engine on a run of the in-memory bus with no workers: what publishing alone costs."""
    engine = engine_with_metrics(Job(seed=0))
    run_id = f"bench-{new_id()}"
    run = BusRun(f"memory://{run_id}", run_id, config=RUN_CONFIG, publish_every=publish_every)
    run.attach(engine, "train")
    try:
        run.start()
        cpu, thread = time.process_time(), time.thread_time()
        start = time.perf_counter()
        engine.run(loader, max_epochs=epochs)
        seconds = time.perf_counter() - start
        thread = time.thread_time() - thread
        cpu = time.process_time() - cpu
        run.finish()
    finally:
        run.close()
    return Turn(seconds, {"training thread": thread, "publisher thread": cpu - thread})


def embedded(loader: DataLoader, epochs: int, publish_every: int = 1) -> Turn:
    """The Engine on a run of the in-memory bus, the workers as tasks beside it."""
    job = Job(seed=0)
    engine = engine_with_metrics(job)
    run_id = f"bench-{new_id()}"
    run = BusRun(f"memory://{run_id}", run_id, config=RUN_CONFIG, publish_every=publish_every)
    run.attach(engine, "train")
    workers = EmbeddedWorkers.start(run, KINDS, namespace="trainer")
    try:
        run.start()
        cpu, thread = time.process_time(), time.thread_time()
        start = time.perf_counter()
        engine.run(loader, max_epochs=epochs)
        seconds = time.perf_counter() - start
        thread = time.thread_time() - thread
        # The loop thread's share (publisher, control reader, the workers' tasks) while
        # training: the whole process but the training thread. Ending the run and the
        # workers costs the same whatever the run's length, so it is left out.
        cpu = time.process_time() - cpu
        run.finish()
        workers.wait()
    finally:
        workers.stop()
        run.close()
    return Turn(seconds, {"training thread": thread, "loop thread (workers)": cpu - thread})


def worker_processes(url: str, run_id: str) -> list[subprocess.Popen[bytes]]:
    """One `trainer worker KIND` process per kind on the run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "trainer.cli", "worker", kind, "--bus", url, "--run", run_id],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for kind in KINDS
    ]


def settled(pids: list[int], timeout: float = 5.0) -> None:
    """Wait until processes `pids` use no CPU for 0.1 s (done starting up), or `timeout` s."""
    deadline = time.monotonic() + timeout
    last = [cpu_of(pid) for pid in pids]
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = [cpu_of(pid) for pid in pids]
        if now == last:
            return
        last = now


def joined(url: str, run_id: str, count: int, timeout: float = 60.0) -> None:
    """Wait until `count` workers have announced themselves on the run's control topic."""
    client = redis.Redis.from_url(url)
    topic = Topics().control(run_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.xlen(topic) >= count:
            client.close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"workers did not join run {run_id} within {timeout} s")


def on_redis(
    url: str, server: int, loader: DataLoader, epochs: int, publish_every: int = 1
) -> Turn:
    """The Engine publishing to Redis, every worker a process of its own."""
    job = Job(seed=0)
    engine = engine_with_metrics(job)
    run_id = f"bench-{new_id()}"
    procs = worker_processes(url, run_id)
    try:
        joined(url, run_id, len(KINDS))
        settled([proc.pid for proc in procs])  # their CPU counts from the start of training
        run = BusRun(url, run_id, config=RUN_CONFIG, publish_every=publish_every)
        run.attach(engine, "train")
        with run:
            # From the start of training to each worker's exit: what the run cost each one
            # (the workers' start-up, importing torch among others, is left out).
            before = {kind: cpu_of(proc.pid) for kind, proc in zip(KINDS, procs, strict=True)}
            redis_before = cpu_of(server)
            cpu, thread = time.process_time(), time.thread_time()
            start = time.perf_counter()
            engine.run(loader, max_epochs=epochs)
            seconds = time.perf_counter() - start
            thread = time.thread_time() - thread
            # At the end of training, not at each worker's exit: leaving (an interpreter with
            # torch loaded takes long to end) costs the same whatever the run's length.
            after = {kind: cpu_of(proc.pid) for kind, proc in zip(KINDS, procs, strict=True)}
            redis_after = cpu_of(server)
        cpu = time.process_time() - cpu
        turn = Turn(seconds, {"training thread": thread, "trainer's other threads": cpu - thread})
        for kind, proc in zip(KINDS, procs, strict=True):
            turn.cpu[f"worker {kind}"] = after[kind] - before[kind]
            proc.wait(60)
        turn.cpu["redis-server"] = redis_after - redis_before
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return turn


def overhead(
    server: RedisServer, loader: DataLoader, rounds: int, epochs: int, every: int, which: str
) -> None:
    """Part 1: seconds per epoch each way, the ratios of a round's turns, and CPU per epoch."""
    assert server.proc is not None
    pid = server.proc.pid
    contenders = {
        "plain loop": plain,
        "Engine alone": engine_alone,
        "in-memory bus": lambda data, n: bus_alone(data, n, every),
        "in-memory stack": lambda data, n: embedded(data, n, every),
        "Redis stack": lambda data, n: on_redis(server.url, pid, data, n, every),
    }
    chosen = {
        "p": "plain loop",
        "e": "Engine alone",
        "b": "in-memory bus",
        "m": "in-memory stack",
        "r": "Redis stack",
    }
    contenders = {n: c for n, c in contenders.items() if any(chosen[w] == n for w in which)}
    for run in contenders.values():  # warm-up: imports, connections, caches
        run(loader, 1)
    turns: dict[str, list[Turn]] = {name: [] for name in contenders}
    order = list(contenders)
    for round_ in range(rounds):
        # Every other round backwards, so a contender is not always the one after the same
        # other (a turn's allocator and cache state depend on the turn before).
        for name in order if round_ % 2 == 0 else order[::-1]:
            turns[name].append(contenders[name](loader, epochs))
    print(f"1. digits MLP, {len(loader)} iterations/epoch, {rounds} turns of {epochs} epochs")
    print(
        f"   workers: {', '.join(KINDS)}; ITERATION_COMPLETED published every {every} iteration(s)"
    )
    print(f"   load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, got in turns.items():
        wall = statistics.median(t.wall for t in got) / epochs
        print(f"   {name:16s} {wall * 1e3:8.2f} ms/epoch (median)")
    # The Engine alone and the bus without workers are no targets of their own: they say how
    # much of the stacks' cost is the Engine's and how much publishing every iteration's.
    targets = {
        "Engine alone": None,
        "in-memory bus": None,
        "in-memory stack": 1.05,
        "Redis stack": 1.15,
    }
    for name, target in targets.items():
        if name not in turns or "plain loop" not in turns:
            continue
        pairs = list(zip(turns[name], turns["plain loop"], strict=True))
        ratio = statistics.median(a.wall / b.wall for a, b in pairs)
        cpu = statistics.median(
            a.cpu["training thread"] / b.cpu["training thread"] for a, b in pairs
        )
        spread = sorted(a.wall / b.wall for a, b in pairs)
        print(
            f"   {name}/plain = {ratio:.3f} (turns {spread[0]:.3f}-{spread[-1]:.3f}; training "
            f"thread CPU {cpu:.3f} x plain's)" + (f"  (target <= {target})" if target else "")
        )
    print("   CPU seconds per epoch (median over the turns):")
    for name, got in turns.items():
        for who in got[0].cpu:
            per = statistics.median(t.cpu[who] for t in got) / epochs
            print(f"     {name:16s} {who:26s} {per * 1e3:8.2f} ms")


def one_stop(client: redis.Redis, url: str, step_seconds: float, delay: float) -> float:
    """Seconds from a stop VOTE's XADD returning to the end of the trainer's last iteration."""
    run_id = f"stop-{new_id()}"
    control = Topics().control(run_id)
    voter = {"kind": "bench", "name": "bench-voter"}
    joined_env = Envelope("WORKER_JOINED", run_id, "bench-voter", {**voter, "votes": True})
    client.xadd(control, {"env": encode(joined_env)})
    ended: list[float] = []
    landed: list[float] = []

    def step(engine: Engine, batch: object) -> None:
        time.sleep(step_seconds)

    def vote() -> None:
        time.sleep(delay)
        data = {"stop": True, "reason": "bench", "voter": "bench-voter", "epoch": 0}
        client.xadd(control, {"env": encode(Envelope("VOTE", run_id, "bench-voter", data))})
        landed.append(time.monotonic())

    engine = Engine(step)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: ended.append(time.monotonic()))
    run = BusRun(url, run_id)
    run.attach(engine)
    with run:
        threading.Thread(target=vote, daemon=True).start()
        engine.run(range(100_000), max_epochs=1)
    return ended[-1] - landed[0]


def stop_latency(url: str, stops: int, step_seconds: float = 0.005) -> None:
    """Part 2: a stop VOTE lands on the control stream; when does the last iteration end?"""
    client = redis.Redis.from_url(url)
    # Votes land at varied points of a step.
    latencies = [one_stop(client, url, step_seconds, 0.2 + (i % 7) * 0.0013) for i in range(stops)]
    client.close()
    p50, p99 = (statistics.quantiles(latencies, n=100)[q] for q in (49, 98))
    print(f"2. stop latency over {stops} runs, {step_seconds * 1e3:.0f} ms per iteration:")
    print(
        f"   p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms  (target p99 <= one iteration + 5 ms)"
    )


def checkpoint_blocking(rounds: int = 5, step_seconds: float = 0.5) -> None:
    """Part 3: training-thread time per checkpoint of a ~100 MB model, against torch.save."""
    model = torch.nn.Linear(5000, 5000)  # 25M float32 parameters + bias: ~100 MB
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with tempfile.TemporaryDirectory() as directory:
        sync = []
        for i in range(rounds):
            path = Path(directory) / f"sync-{i}.pt"
            start = time.perf_counter()
            with open(path, "wb") as f:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, f)
                f.flush()
                os.fsync(f.fileno())
            sync.append(time.perf_counter() - start)
            path.unlink()

        # A real step (forward, backward, optimizer step) padded to `step_seconds`, so that
        # the writer finishes each checkpoint before the next; one every other iteration, so
        # that steps right after a checkpoint can be told from the others.
        x = torch.randn(8, 5000)
        compute: dict[int, float] = {}

        def step(engine: Engine, batch: object) -> None:
            started = time.perf_counter()
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
            compute[engine.state.iteration] = time.perf_counter() - started
            time.sleep(max(0.0, step_seconds - compute[engine.state.iteration]))

        engine = Engine(step)
        run = BusRun(f"memory://ckpt-{new_id()}")
        run.attach(engine)
        to_save = {"model": model, "optimizer": optimizer, "trainer": engine}
        run.checkpoint(to_save, every=2, unit="iteration", directory=directory)
        with run:
            engine.run(range(2 * rounds), max_epochs=1)
        stats = [s for s in run.checkpoint_stats if s.reason == "scheduled"]
        blocked = [s.blocked for s in stats]
        written = [s.write for s in stats if s.write is not None]
    size = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    b, s = statistics.median(blocked), statistics.median(sync)
    print(f"3. checkpoint of a {size:.0f} MB model, median of {len(stats)}:")
    w = statistics.median(written)
    c = statistics.median(s.copy for s in stats)
    print(
        f"   loop blocked {b * 1e3:.1f} ms (max {max(blocked) * 1e3:.1f}), of which copying on "
        f"the training thread {c * 1e3:.1f} ms, the rest waiting for the stager's copy before "
        "the next optimizer step"
    )
    after = statistics.median(compute[s.iteration + 1] for s in stats if s.iteration + 1 in compute)
    others = statistics.median(t for i, t in compute.items() if i % 2 == 0)
    print(
        f"   a step (forward, backward, SGD step) right after a checkpoint {after * 1e3:.1f} ms, "
        f"the others {others * 1e3:.1f} ms (it runs beside the stager's copy and the writer's "
        "save, which share the cores and the memory bus with it)"
    )
    print(f"   synchronous torch.save + fsync {s * 1e3:.1f} ms; the writer took {w * 1e3:.0f} ms")
    print(f"   blocked/synchronous = {b / s:.3f}  (target <= 0.10)")
    print(f"   counting the slower step as blocked too: {(b + max(0.0, after - others)) / s:.3f}")


def aggregator_throughput(url: str, ranks: int = 16, epochs: int = 500, turns: int = 3) -> None:
    """Part 4: epoch metric states of 16 ranks through the metrics worker, envelopes/s.

    Each turn writes a fresh run's RUN_STARTED and its ranks x epochs EPOCH_COMPLETED (Loss and
    Accuracy states) to Redis, then starts the metrics worker on this process's event loop. The
    time is that from the worker's WORKER_JOINED to its last METRICS, both read off their
    stream entry ids (the Redis server's clock, in ms): start-up (connecting, reading the
    registry, joining) and writing the backlog are left out, and nothing of the bench's runs on
    the worker's loop meanwhile but a length poll every 20 ms. Every turn checks that one
    METRICS per epoch came, with the merged values.
    """
    from bus import BEGINNING, decode
    from trainer.metrics.registry import metric_state_message
    from workers.kinds import load_kind
    from workers.runtime import RuntimeOptions, run_worker

    loss, accuracy = Loss(), Accuracy()
    loss.update(0.5)
    accuracy.update((torch.eye(10), torch.arange(10)))
    states = {"loss": metric_state_message(loss), "accuracy": metric_state_message(accuracy)}
    expected = {"loss": 0.5, "accuracy": 1.0}
    topics = Topics()
    envelopes = ranks * epochs

    def backlog(run_id: str) -> list[bytes]:
        started = Envelope(
            "RUN_STARTED",
            run_id,
            "trainer:0",
            {
                "config": {},
                "rank": 0,
                "world_size": ranks,
                "host": "bench",
                "pid": 0,
                "resumed_from": None,
                "checkpoint_dir": None,
                "namespace": "trainer",
            },
        )
        payloads = [encode(started)]
        for epoch in range(epochs):
            for rank in range(ranks):
                data = {
                    "split": "train",
                    "metrics": {},
                    "metric_states": states,
                    "rank": rank,
                    "world_size": ranks,
                }
                env = Envelope("EPOCH_COMPLETED", run_id, f"trainer:{rank}", data, epoch=epoch)
                payloads.append(encode(env))
        return payloads

    def ms(entry_id: str) -> int:
        return int(entry_id.partition("-")[0])

    async def turn() -> tuple[float, float]:
        """(start-up seconds, seconds from WORKER_JOINED to the last METRICS written)."""
        run_id = f"agg-{new_id()}"
        topic = topics.events(run_id)
        bus = open_bus(url)
        payloads = backlog(run_id)
        backlog_end = ""
        for i in range(0, len(payloads), 1000):
            backlog_end = (await bus.append(topic, payloads[i : i + 1000]))[-1]
        stop, ready = asyncio.Event(), asyncio.Event()
        options = RuntimeOptions(bus_url=url, run_id=run_id)
        launched = time.perf_counter()
        task = asyncio.create_task(run_worker(load_kind("metrics"), options, {}, stop, ready))
        await ready.wait()
        startup = time.perf_counter() - launched
        # The worker publishes one METRICS per epoch onto the same topic, after the backlog.
        deadline = time.monotonic() + 120.0
        while await bus.length(topic) < len(payloads) + epochs:
            if task.done() or time.monotonic() > deadline:
                status = task.result() if task.done() else "still running"
                raise RuntimeError(f"the metrics worker did not report {epochs} epochs ({status})")
            await asyncio.sleep(0.02)
        stop.set()
        await task
        reports = await bus.read(topic, backlog_end, count=epochs + 1, block=None)
        control = await bus.read(topics.control(run_id), BEGINNING, count=100, block=None)
        await bus.close()
        (joined,) = [e for e in control if decode(e.payload).type == "WORKER_JOINED"]
        envs = [decode(e.payload) for e in reports]
        got = [(e.type, e.data["epoch"], e.data["values"]) for e in envs]
        if got != [("METRICS", epoch, expected) for epoch in range(epochs)]:
            raise RuntimeError(f"unexpected reports from the metrics worker: {got[:3]}...")
        return startup, (ms(reports[-1].id) - ms(joined.id)) / 1e3

    results = [asyncio.run(turn()) for _ in range(turns)]
    rates = sorted(envelopes / seconds for _, seconds in results)
    startup = statistics.median(s for s, _ in results)
    print(f"4. metrics worker: {ranks} ranks x {epochs} epochs of Loss + Accuracy states")
    print(f"   {turns} turns, each timed from the worker's WORKER_JOINED to its last METRICS")
    print(f"   (stream entry times); start-up excluded (median {startup * 1e3:.0f} ms)")
    print(
        f"   {statistics.median(rates):,.0f} envelopes/s median (min {rates[0]:,.0f}, "
        f"max {rates[-1]:,.0f})  (target >= 50,000/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="turns per contender (part 1)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per turn (part 1)")
    parser.add_argument("--stops", type=int, default=25, help="runs stopped by a vote (part 2)")
    parser.add_argument("--parts", default="1234", help="which parts to run, e.g. 13")
    parser.add_argument(
        "--stacks",
        default="pebmr",
        help="part 1's contenders: p(lain), e(ngine alone), b(us alone, in memory), m(emory "
        "stack), r(edis stack)",
    )
    parser.add_argument(
        "--publish-every", type=int, default=1, help="bus.publish_every of the stacks (part 1)"
    )
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="the stacks' workers, comma-separated (part 1)"
    )
    args = parser.parse_args()
    KINDS[:] = args.kinds.split(",")
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    loader = digits_loader()
    server = RedisServer().start()
    try:
        if "1" in args.parts:
            overhead(server, loader, args.rounds, args.epochs, args.publish_every, args.stacks)
        if "2" in args.parts:
            stop_latency(server.url, args.stops)
        if "3" in args.parts:
            checkpoint_blocking()
        if "4" in args.parts:
            aggregator_throughput(server.url)
    finally:
        server.close()


if __name__ == "__main__":
    main()
