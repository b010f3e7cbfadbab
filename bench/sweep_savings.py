"""What pruning saves: a digits sweep of 27 trials run exhaustively, then with the ASHA pruner.

The grid is learning rate x hidden size x batch size (3 x 3 x 3), 27 epochs a trial, two trials
at a time (P = 2), every trial a `trainer run` process on a private redis-server, started by
`trainer sweep --bus` (the ASHA sweep with `--pruner asha`, the pruner running in the sweep's
process with its defaults). It prints three figures, read back from the bus:

1. epochs used with pruning, as a fraction of the exhaustive sweep's (target <= 0.35); an epoch
   a pruned trial had begun counts for the iterations it ran;
2. the best validation accuracy found with pruning against the exhaustive best (target: within
   0.005);
3. for each pruned trial, the time from the envelope carrying the figures that crossed the
   cutoff (the val EPOCH_COMPLETED of a one-rank trial, or its METRICS, whichever came first)
   to the end of the trial's last iteration: p50 and p99, against one iteration (the trials'
   median) plus 50 ms. The ASHA sweep runs with `bus.barrier=false`, so that a trial trains on
   while the pruner decides and the figure is the stop path's own (with the barrier, the
   default, a trial waits at each epoch's end for the pruner's vote and stops exactly there).

    .venv/bin/pip install -q -e ".[sweep]" torch==2.13.0
    .venv/bin/python bench/sweep_savings.py [--epochs 27] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from redis_server import RedisServer  # noqa: E402

from bus import DecodeError, Envelope, Topics, decode  # noqa: E402
from bus.messages import (  # noqa: E402
    EPOCH_COMPLETED,
    ITERATION_COMPLETED,
    METRICS,
    RUN_FINISHED,
    TRIAL_STARTED,
    VOTE,
)

GRID = {
    "optim.lr": "choice(0.01, 0.003, 0.0003)",
    "model.hidden": "choice([32], [128], [512])",
    "data.batch_size": "choice(32, 64, 256)",
}
TOPICS = Topics()


def config(cwd: Path, epochs: int) -> Path:
    """The digits example with the sweep's grid, no early stopping and no checkpoints."""
    cfg = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    cfg["run"]["dir"] = str(cwd / "runs")
    cfg["train"] = {"epochs": epochs, "progress_bar": False}
    cfg["early_stopping"] = {"patience": None}
    cfg["checkpoint"] = {"every": None}
    cfg["workers"] = ["metrics", "tracking"]
    cfg["sweep"] = {"params": GRID, "sampler": "grid", "seed": 0, "parallel": 2}
    path = cwd / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_sweep(url: str, cwd: Path, cfg: Path, sweep_id: str, *extra: str) -> float:
    """`trainer sweep` to its end; the wall-clock seconds it took."""
    argv = [sys.executable, "-m", "trainer.cli", "sweep", str(cfg), "--bus", url]
    argv += ["--sweep-id", sweep_id, *extra]
    began = time.monotonic()
    with open(cwd / f"{sweep_id}.log", "w") as log:
        status = subprocess.run(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise SystemExit(f"{sweep_id} failed ({status}): see {cwd / f'{sweep_id}.log'}")
    return time.monotonic() - began


class Reader:
    """The bus read back with redis-py and the codec."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def envelopes(self, topic: str) -> list[Envelope]:
        out = []
        for _, fields in self.client.xrange(topic):
            try:
                out.append(decode(fields.get(b"env", b"")))
            except DecodeError:
                continue
        return out

    def trials(self, sweep_id: str) -> dict[int, str]:
        found = self.envelopes(TOPICS.sweep_events(sweep_id))
        return {e.data["trial"]: e.data["run_id"] for e in found if e.type == TRIAL_STARTED}


def trial_figures(reader: Reader, run_id: str) -> dict[str, Any]:
    """One trial: epochs used, best val accuracy, and for a pruned one the stop's latency."""
    events = reader.envelopes(TOPICS.events(run_id))
    steps = [e for e in events if e.type == ITERATION_COMPLETED and e.data.get("split") == "train"]
    # An epoch's length: the iteration at which the first train epoch ended.
    first_end = next(
        e for e in events if e.type == EPOCH_COMPLETED and e.data.get("split") == "train"
    )
    length = first_end.iteration
    finished = next(e for e in events if e.type == RUN_FINISHED)
    iterations = finished.data["iteration"]
    val = [
        (e.epoch if e.type == EPOCH_COMPLETED else e.data["epoch"], e)
        for e in events
        if e.type in (EPOCH_COMPLETED, METRICS)
        and e.data.get("split") == "val"
        and not e.data.get("running")
    ]
    accuracy = [
        (e.data.get("metrics") or e.data.get("values") or {}).get("accuracy") for _, e in val
    ]
    best = max((a for a in accuracy if isinstance(a, (int, float))), default=float("nan"))
    figures: dict[str, Any] = {"best": best, "status": finished.data["status"]}
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(steps) if b.iteration == a.iteration + 1]
    figures["step"] = statistics.median(gaps) if gaps else 0.0
    if finished.data["status"] == "terminated":
        votes = [
            e
            for e in reader.envelopes(TOPICS.control(run_id))
            if e.type == VOTE and e.data.get("stop")
        ]
        # The deciding vote is the first stop; the pruner votes stop again on the figures of the
        # validation the trainer runs where it stopped, which come after its last iteration.
        epoch = votes[0].data["epoch"]
        crossing = min(e.ts for at, e in val if at == epoch)
        last = max(e.ts for e in steps)
        figures["latency"] = last - crossing
    figures["epochs"] = iterations / length
    return figures


def sweep_figures(reader: Reader, sweep_id: str) -> dict[str, Any]:
    trials = {n: trial_figures(reader, run) for n, run in reader.trials(sweep_id).items()}
    return {
        "trials": trials,
        "epochs": sum(t["epochs"] for t in trials.values()),
        "best": max(t["best"] for t in trials.values()),
        "pruned": sum(1 for t in trials.values() if t["status"] == "terminated"),
        "latency": sorted(t["latency"] for t in trials.values() if "latency" in t),
        "step": statistics.median(t["step"] for t in trials.values()),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=27)
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it (default: a temp dir)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="sweep-savings-"))
    work.mkdir(parents=True, exist_ok=True)
    server = RedisServer().start()
    try:
        cfg = config(work, args.epochs)
        print(f"27 trials x {args.epochs} epochs, P = 2, on {server.url}; work dir {work}")
        wall_full = run_sweep(server.url, work, cfg, "exhaustive")
        print(f"exhaustive sweep: {wall_full:.0f} s")
        wall_asha = run_sweep(
            server.url, work, cfg, "asha", "--pruner", "asha", "bus.barrier=false"
        )
        print(f"ASHA sweep: {wall_asha:.0f} s")
        reader = Reader(server.url)
        full, asha = sweep_figures(reader, "exhaustive"), sweep_figures(reader, "asha")
    finally:
        server.close()
    fraction = asha["epochs"] / full["epochs"]
    gap = full["best"] - asha["best"]
    print(
        f"1. epochs used: {asha['epochs']:.1f} with ASHA of {full['epochs']:.1f} exhaustive: "
        f"{fraction:.3f} (target <= 0.35); {asha['pruned']} of 27 trials pruned"
    )
    print(
        f"2. best val accuracy: {asha['best']:.4f} with ASHA, {full['best']:.4f} exhaustive: "
        f"gap {gap:+.4f} (target <= 0.005)"
    )
    latency = asha["latency"]
    bound = asha["step"] + 0.050
    if latency:
        print(
            f"3. cutoff-crossing figures to the trial's last iteration, {len(latency)} pruned "
            f"trials: p50 {statistics.median(latency) * 1000:.1f} ms, p99 "
            f"{percentile(latency, 0.99) * 1000:.1f} ms (target <= one iteration "
            f"{asha['step'] * 1000:.1f} ms + 50 ms = {bound * 1000:.1f} ms)"
        )
    else:
        print("3. no trial was pruned: no stop latency to measure")
    print(f"wall clock: exhaustive {wall_full:.0f} s, ASHA {wall_asha:.0f} s")


if __name__ == "__main__":
    main()
