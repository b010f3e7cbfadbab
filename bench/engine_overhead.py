"""Per-iteration overhead of the Engine against PyTorch Ignite and a bare Python loop.

A no-op process function and one handler on each of the six lifecycle events, 200,000
iterations. Prints microseconds per iteration and the ratio this/Ignite (target <= 0.5).

    .venv/bin/python bench/engine_overhead.py [--iterations N] [--repeats R]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable

SIX_EVENTS = (
    "STARTED",
    "EPOCH_STARTED",
    "ITERATION_STARTED",
    "ITERATION_COMPLETED",
    "EPOCH_COMPLETED",
    "COMPLETED",
)


def noop_step(engine: object, batch: object) -> object:
    return batch


def noop_handler(engine: object) -> None:
    return None


def time_engine(engine_cls: type, events: type, data: list[int]) -> float:
    """Seconds for one run of an Ignite-style engine with a no-op handler on each event."""
    engine = engine_cls(noop_step)
    for name in SIX_EVENTS:
        engine.add_event_handler(getattr(events, name), noop_handler)
    start = time.perf_counter()
    engine.run(data, max_epochs=1)
    return time.perf_counter() - start


def run_ours(data: list[int]) -> float:
    from trainer import Engine, Events

    return time_engine(Engine, Events, data)


def run_ignite(data: list[int]) -> float:
    from ignite.engine import Engine, Events

    return time_engine(Engine, Events, data)


def run_bare(data: list[int]) -> float:
    """The floor: the same calls a loop must make, with no engine at all."""
    state = type("S", (), {})()
    start = time.perf_counter()
    noop_handler(state)
    noop_handler(state)
    for batch in data:
        noop_handler(state)
        noop_step(state, batch)
        noop_handler(state)
    noop_handler(state)
    noop_handler(state)
    return time.perf_counter() - start


def best_of(fn: Callable[[list[int]], float], data: list[int], repeats: int) -> float:
    return min(fn(data) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    data = list(range(args.iterations))

    results = {}
    # Interleave the contenders so that machine noise hits all of them alike.
    for _ in range(args.repeats):
        for name, fn in (
            ("bare loop", run_bare),
            ("this Engine", run_ours),
            ("Ignite", run_ignite),
        ):
            results[name] = min(results.get(name, float("inf")), best_of(fn, data, 1))

    import ignite

    per_iter = {name: seconds / args.iterations * 1e6 for name, seconds in results.items()}
    print(
        f"{args.iterations} iterations, 6 handlers, best of {args.repeats}; "
        f"Ignite {ignite.__version__}"
    )
    for name, us in per_iter.items():
        print(f"  {name:12s} {us:7.3f} us/iteration")
    print(f"this/Ignite = {per_iter['this Engine'] / per_iter['Ignite']:.3f}  (target <= 0.5)")
    print(f"this/bare   = {per_iter['this Engine'] / per_iter['bare loop']:.2f}")


if __name__ == "__main__":
    main()
