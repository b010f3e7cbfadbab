"""Run a program on several CPU processes joined in one gloo process group, as torchrun would.

`run_ranks(program, args, out_dir)` spawns one process per rank; each joins the group on a free
localhost port, calls `program(rank, world_size, *args)` and pickles what it returns into
`out_dir`, which the caller reads back. Every wait is bounded, so a broken collective fails
the test instead of hanging it.
"""

from __future__ import annotations

import datetime
import multiprocessing
import pickle
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# Bounds, not expectations: a collective that cannot complete fails within these.
COLLECTIVE_TIMEOUT = datetime.timedelta(seconds=60)
JOIN_TIMEOUT_S = 150.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(
    program: Callable[..., Any],
    rank: int,
    world_size: int,
    port: int,
    out_dir: str,
    args: Sequence[Any],
) -> None:
    """One rank: join the group, run the program, pickle its result (or the traceback)."""
    out = Path(out_dir)
    try:
        torch.set_num_threads(1)  # two ranks on a 2-core machine: no intra-op pools fighting
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=COLLECTIVE_TIMEOUT,
        )
        try:
            result = program(rank, world_size, *args)
        finally:
            dist.destroy_process_group()
        (out / f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        sys.exit(1)


def run_ranks(
    program: Callable[..., Any],
    args: Sequence[Any],
    out_dir: Path,
    world_size: int = 2,
) -> list[Any]:
    """Each rank's return value of `program(rank, world_size, *args)`, by rank."""
    port = free_port()
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_rank_main,
            args=(program, rank, world_size, port, str(out_dir), tuple(args)),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    try:
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(10)
    failures = [
        f"rank {rank}: " + (out_dir / f"rank{rank}.err").read_text()
        if (out_dir / f"rank{rank}.err").exists()
        else f"rank {rank}: exit code {process.exitcode} (killed after the join timeout: None)"
        for rank, process in enumerate(processes)
        if process.exitcode != 0
    ]
    assert not failures, "\n".join(failures)
    return [pickle.loads((out_dir / f"rank{rank}.pkl").read_bytes()) for rank in range(world_size)]
