"""Bus throughput and latency on a private redis-server, against redis-benchmark's ceiling.

Publishes N ITERATION_COMPLETED-shaped envelopes (about 150 bytes of data each) through the
trainer's Publisher, consumes them with one consumer-group worker (bus.consumer.Consumer),
then measures publish-to-handle latency at a steady rate with the consumer in another process,
and finally runs `redis-benchmark -P 64` XADD on the same server as the ceiling.

The Consumer is also measured against its reference, a hand-written redis-py loop doing the
least a group consumer can (XREADGROUP COUNT 100, msgpack.unpackb of each entry's `env` field,
one XACK per batch), both reading the same entries through groups of their own, back to back
in each of several rounds; the ratio is the median of the rounds' (target >= 0.9).

    .venv/bin/python bench/bus_throughput.py [--events 200000] [--rate 10000] [--seconds 5]
        [--rounds 5]

Targets: publish >= 150,000 events/s, consume >= 100,000 events/s, p99 latency <= 5 ms,
Consumer / hand-written loop >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import logging
import multiprocessing as mp
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

import msgpack
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the project, and tests/redis_server.py

from redis_server import RedisServer  # noqa: E402

from bus import Consumer, Envelope, encode, open_bus  # noqa: E402
from bus.publisher import Publisher  # noqa: E402
from bus.threaded_publisher import ThreadedPublisher  # noqa: E402

TOPIC = "bench:run:throughput:events"
LATENCY_TOPIC = "bench:run:latency:events"
GROUP = "bench-workers"
CONSUMER_BATCH = 500
# Entries per read in the Consumer-against-reference comparison (the Consumer's default batch).
COMPARE_COUNT = 100
COMPARE_BLOCK = 0.1
TARGETS = {"publish": 150_000.0, "consume": 100_000.0, "p99_ms": 5.0, "ratio": 0.9}


def iteration_completed(i: int) -> Envelope:
    """An envelope shaped like the trainer's ITERATION_COMPLETED, ~150 bytes of data."""
    loss = 2.0 / (1 + i * 1e-4)
    return Envelope(
        type="ITERATION_COMPLETED",
        run_id="throughput",
        source="trainer:0",
        epoch=i // 1000,
        iteration=i + 1,
        data={
            "loss": loss,
            "output": {"loss": loss, "accuracy": 0.8125},
            "lr": 0.001,
            "batch_size": 64,
            "grad_norm": 1.234,
            "metrics": {"accuracy": 0.8125, "precision": 0.79, "recall": 0.83},
        },
    )


@dataclass
class Rate:
    events: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.events / self.seconds


async def publish_async(url: str, envelopes: list[Envelope], **options: float) -> Rate:
    """Publish from a coroutine with the async Publisher until everything is written."""
    bus = open_bus(url)
    pub = Publisher(bus, **options)
    start = time.perf_counter()
    for env in envelopes:
        await pub.publish(TOPIC, env)
    await pub.close()
    elapsed = time.perf_counter() - start
    await bus.close()
    return Rate(len(envelopes), elapsed)


def publish_threaded(url: str, envelopes: list[Envelope], **options: float) -> Rate:
    """Publish from synchronous code through the ThreadedPublisher."""
    pub = ThreadedPublisher(lambda: open_bus(url), **options)
    start = time.perf_counter()
    for env in envelopes:
        pub.publish(TOPIC + ":sync", env)
    pub.close()
    return Rate(len(envelopes), time.perf_counter() - start)


async def consume(url: str, topic: str, expected: int) -> Rate:
    """Consume `expected` entries of a topic with one group consumer; time it."""
    bus = open_bus(url)
    handled = 0

    def handle(env: Envelope) -> None:
        nonlocal handled
        handled += 1

    consumer = Consumer(bus, topic, GROUP, handle, batch=CONSUMER_BATCH, block=0.1)
    await consumer.ensure_group()
    start = time.perf_counter()
    while handled < expected:
        await consumer.poll_once(0.1)
    elapsed = time.perf_counter() - start
    await bus.close()
    return Rate(handled, elapsed)


async def consume_by_hand(url: str, topic: str, group: str, expected: int) -> Rate:
    """The reference: the least a redis-py group consumer does per entry, with no bus on top."""
    r = aioredis.from_url(url)
    await r.xgroup_create(topic, group, id="0", mkstream=True)
    handled = 0
    block_ms = round(COMPARE_BLOCK * 1000)
    start = time.perf_counter()
    while handled < expected:
        # As the Consumer does: a read that returns at once, and a blocking one only when idle.
        reply = await r.xreadgroup(group, "by-hand", {topic: ">"}, count=COMPARE_COUNT)
        if not reply:
            reply = await r.xreadgroup(
                group, "by-hand", {topic: ">"}, count=COMPARE_COUNT, block=block_ms
            )
        for _stream, rows in reply or ():
            ids = []
            for entry_id, fields in rows:
                msgpack.unpackb(fields[b"env"])
                ids.append(entry_id)
            handled += len(ids)
            if ids:
                await r.xack(topic, group, *ids)
    elapsed = time.perf_counter() - start
    await r.aclose()
    return Rate(handled, elapsed)


async def consume_with_consumer(url: str, topic: str, group: str, expected: int) -> Rate:
    """The Consumer on the same entries, with the reference's read size and block."""
    bus = open_bus(url)
    handled = 0

    def handle(env: Envelope) -> None:
        nonlocal handled
        handled += 1

    consumer = Consumer(bus, topic, group, handle, batch=COMPARE_COUNT, block=COMPARE_BLOCK)
    await consumer.ensure_group()
    start = time.perf_counter()
    while handled < expected:
        await consumer.poll_once(COMPARE_BLOCK)
    elapsed = time.perf_counter() - start
    await bus.close()
    return Rate(handled, elapsed)


@dataclass
class Comparison:
    by_hand: Rate  # the hand-written loop's best round
    consumer: Rate  # the Consumer's best round
    ratio: float  # median over rounds of Consumer / hand-written loop within the round


def compare_consumers(url: str, topic: str, expected: int, rounds: int) -> Comparison:
    """The Consumer against the hand-written loop, run back to back in each round.

    On a shared machine a neighbour's burst can halve one run; comparing the two runs of a
    round (which of them goes first alternates) and taking the median of those ratios is what
    such bursts disturb least.
    """
    by_hand: list[Rate] = []
    consumer: list[Rate] = []
    ratios: list[float] = []
    for k in range(rounds):
        runs = {
            "hand": lambda k=k: consume_by_hand(url, topic, f"by-hand-{k}", expected),
            "consumer": lambda k=k: consume_with_consumer(url, topic, f"consumer-{k}", expected),
        }
        order = ["hand", "consumer"] if k % 2 == 0 else ["consumer", "hand"]
        rates = {name: asyncio.run(runs[name]()) for name in order}
        by_hand.append(rates["hand"])
        consumer.append(rates["consumer"])
        ratios.append(rates["consumer"].per_second / rates["hand"].per_second)
        print(
            f"round {k + 1}: hand-written loop {by_hand[-1].per_second:,.0f} events/s, "
            f"Consumer {consumer[-1].per_second:,.0f} events/s, ratio {ratios[-1]:.3f}",
            flush=True,
        )
    return Comparison(
        by_hand=max(by_hand, key=lambda r: r.per_second),
        consumer=max(consumer, key=lambda r: r.per_second),
        ratio=statistics.median(ratios),
    )


def latency_consumer(url: str, expected: int, ready: EventType, conn: Connection) -> None:
    """Child process: handle `expected` envelopes, then send back each one's latency (s)."""
    latencies: list[float] = []

    async def run() -> None:
        bus = open_bus(url)
        done = asyncio.Event()

        def handle(env: Envelope) -> None:
            latencies.append(time.time() - env.ts)
            if len(latencies) >= expected:
                done.set()

        consumer = Consumer(bus, LATENCY_TOPIC, GROUP, handle, batch=CONSUMER_BATCH, block=0.5)
        async with consumer:
            ready.set()
            await done.wait()
        await bus.close()

    asyncio.run(run())
    conn.send(latencies)
    conn.close()


async def publish_steady(url: str, rate: float, count: int, **options: float) -> None:
    """Publish `count` fresh envelopes at `rate` per second, in 1 ms ticks."""
    bus = open_bus(url)
    pub = Publisher(bus, **options)
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while sent < count:
        due = min(count, int((loop.time() - start) * rate) + 1)
        while sent < due:
            pub.publish_nowait(LATENCY_TOPIC, iteration_completed(sent))  # ts = now
            sent += 1
        await asyncio.sleep(0.001)
    await pub.close()
    await bus.close()


def measure_latency(
    url: str, rate: float, seconds: float, warmup: int, **options: float
) -> list[float]:
    """Latencies (ms) from envelope creation to handling in a separate consumer process."""
    count = int(rate * seconds)

    async def make_group() -> None:
        bus = open_bus(url)
        await bus.ensure_group(LATENCY_TOPIC, GROUP)
        await bus.close()

    asyncio.run(make_group())
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    parent_end, child_end = ctx.Pipe(duplex=False)
    child = ctx.Process(target=latency_consumer, args=(url, count, ready, child_end))
    child.start()
    if not ready.wait(60):
        child.kill()
        raise RuntimeError("latency consumer did not start within 60 s")
    asyncio.run(publish_steady(url, rate, count, **options))
    latencies = parent_end.recv()
    child.join()
    return sorted(x * 1000 for x in latencies[warmup:])


def redis_benchmark(port: int, payload_size: int, requests: int) -> float:
    """redis-benchmark's pipelined XADD rate (requests/s) on the same server."""
    exe = shutil.which("redis-benchmark")
    if exe is None:
        raise RuntimeError("redis-benchmark is not on PATH (it ships with redis-server)")
    args = [exe, "-h", "127.0.0.1", "-p", str(port), "-P", "64", "-n", str(requests), "--csv"]
    command = ["XADD", "bench:redis-benchmark", "*", "env", "x" * payload_size]
    out = subprocess.run(args + command, capture_output=True, text=True, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    return float(rows[-1]["rps"])


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-quantile (0..1) of already sorted values, nearest rank."""
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def comparison_summary(compared: Comparison, rounds: int) -> str:
    """One line: the Consumer against the hand-written loop."""
    best = compared.consumer.per_second / compared.by_hand.per_second
    return (
        f"Consumer / hand-written loop:      {compared.ratio:.3f} (median of {rounds} rounds; "
        f"best rounds: {compared.consumer.per_second:,.0f} / {compared.by_hand.per_second:,.0f} "
        f"events/s = {best:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=10_000.0, help="events/s, latency phase")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of latency phase")
    parser.add_argument("--linger", type=float, default=None, help="Publisher flush_interval")
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds of Consumer against the hand-written loop"
    )
    parser.add_argument(
        "--compare-only",
        action="store_true",
        help="measure only the Consumer against the hand-written loop",
    )
    args = parser.parse_args()
    # The throughput phase outruns the bus on purpose, so the publisher's "outbox is full"
    # warning (back-pressure working as designed) would only clutter the table.
    logging.getLogger("bus.publisher").setLevel(logging.ERROR)

    server = RedisServer().start()
    try:
        start = time.perf_counter()
        envelopes = [iteration_completed(i) for i in range(args.events)]
        build = Rate(args.events, time.perf_counter() - start)
        payload_size = len(encode(envelopes[0]))
        data_size = len(msgpack.packb(envelopes[0].data))

        options = {} if args.linger is None else {"flush_interval": args.linger}
        published = asyncio.run(publish_async(server.url, envelopes, **options))
        if args.compare_only:
            compared = compare_consumers(server.url, TOPIC, args.events, args.rounds)
            print(f"\n{comparison_summary(compared, args.rounds)}")
            return
        consumed = asyncio.run(consume(server.url, TOPIC, args.events))
        compared = compare_consumers(server.url, TOPIC, args.events, args.rounds)
        threaded = publish_threaded(server.url, envelopes, **options)
        latencies = measure_latency(
            server.url, args.rate, args.seconds, warmup=int(args.rate), **options
        )
        ceiling = redis_benchmark(server.port, payload_size, 1_000_000)
    finally:
        server.close()

    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    print(f"\n{args.events:,} envelopes of {payload_size} bytes (~{data_size} bytes of data)")
    print(f"{'measure':<44} {'value':>14} {'target':>12}  ok")
    rows = [
        ("publish, async Publisher (events/s)", published.per_second, TARGETS["publish"], True),
        ("consume, one group consumer (events/s)", consumed.per_second, TARGETS["consume"], True),
        (f"latency p50 at {args.rate:,.0f} events/s (ms)", p50, None, False),
        (f"latency p99 at {args.rate:,.0f} events/s (ms)", p99, TARGETS["p99_ms"], False),
        (
            f"hand-written loop, COUNT {COMPARE_COUNT} (events/s)",
            compared.by_hand.per_second,
            None,
            True,
        ),
        (f"Consumer, batch {COMPARE_COUNT} (events/s)", compared.consumer.per_second, None, True),
        ("Consumer / hand-written loop (median)", compared.ratio, TARGETS["ratio"], True),
        ("publish, ThreadedPublisher, sync (events/s)", threaded.per_second, None, True),
        ("building Envelope objects (events/s)", build.per_second, None, True),
        ("redis-benchmark -P 64 XADD (requests/s)", ceiling, None, True),
    ]
    for name, value, target, higher_is_better in rows:
        # Ratios need their decimals; rates and milliseconds read better without.
        digits = 3 if value < 10 else 1
        if target is None:
            verdict, shown = "", ""
        else:
            ok = value >= target if higher_is_better else value <= target
            verdict, shown = ("yes" if ok else "NO"), f"{target:,.{1 if target < 10 else 0}f}"
        print(f"{name:<44} {value:>14,.{digits}f} {shown:>12}  {verdict}")
    print(
        f"\nlatency over {len(latencies):,} events: max {latencies[-1]:.2f} ms, "
        f"mean {statistics.fmean(latencies):.2f} ms (first {int(args.rate):,} were warm-up)"
    )
    print(f"publish / redis-benchmark ceiling: {published.per_second / ceiling:.3f}")
    print(f"consume / redis-benchmark ceiling: {consumed.per_second / ceiling:.3f}")
    print(comparison_summary(compared, args.rounds))
    print(f"threaded / async publish:          {threaded.per_second / published.per_second:.3f}")


if __name__ == "__main__":
    main()
