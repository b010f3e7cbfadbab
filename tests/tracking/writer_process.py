"""A process that writes to the tracking store, for the tests that need several at once.

python writer_process.py new ROOT PROJECT ROWS GO        a new run of PROJECT with ROWS rows
python writer_process.py keyed RUN_DIR ORDER GO          keyed rows "k<i>" (step i) in ORDER
python writer_process.py loop RUN_DIR ROWS               rows and run.json updates, as fast
python writer_process.py fsize ROOT LIMIT                rows until a file size limit stops it

GO is a file the writers wait for, so that they start together.
"""

from __future__ import annotations

import resource
import signal
import sys
import time
from pathlib import Path

from trainer import tracking


def wait_for(go: Path) -> None:
    deadline = time.monotonic() + 30
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{go} never appeared")
        time.sleep(0.001)


def new(root: str, project: str, rows: str, go: str) -> None:
    wait_for(Path(go))
    with tracking.run(project, config={"rows": int(rows)}, dir=root) as run:
        for i in range(int(rows)):
            run.log({"train/loss": 1.0 / (i + 1), "epoch": i})
        run.log_histogram("weights", list(range(i + 1)), bins=4)
    print(run.dir)


def keyed(run_dir: str, order: str, go: str) -> None:
    run = tracking.open_run(run_dir)
    indices = [int(i) for i in order.split(",")]
    wait_for(Path(go))
    for i in indices:
        run.log({"value": float(i)}, step=i, key=f"k{i}")


def loop(run_dir: str, rows: str) -> None:
    run = tracking.open_run(run_dir)
    for i in range(int(rows)):
        run.log({"train/loss": 1.0 / (i + 1)})
        run.update_meta(iteration=i, note="x" * (i % 50))


def fsize(root: str, limit: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write with EFBIG instead of dying
    run = tracking.run("full", dir=root)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), int(limit)))
    try:
        for i in range(100_000):
            run.log({"train/loss": 1.0 / (i + 1), "padding": float(i)})
    except tracking.TrackingError as exc:
        print(f"{run.dir}\n{exc}")
        return
    print("no error")


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
