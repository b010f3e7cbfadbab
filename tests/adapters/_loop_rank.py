"""One rank of the LoopBridge rank test: `python _loop_rank.py '<json args>'`, a fresh process.

A framework's loop (plain Python here) whose every step all-reduces a tensor, so a rank that
stopped alone would leave the other hanging there, reports each step to a LoopBridge on an
in-memory bus of its own (each rank's is its own: a signal reaches one rank only). At step
`signal_at`, rank `signal_rank` appends a TERMINATE to its own bus and waits until its bridge
has read it. Writes the steps it ran and how its run ended to `<out>/rank<r>.json`.
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

from bus import Envelope, ThreadedPublisher, Topics, encode, open_bus
from trainer.adapters import LoopBridge

EPOCH_LENGTH = 8
EPOCHS = 3


def terminate(bridge: LoopBridge, url: str) -> None:
    """Append a TERMINATE to this rank's bus; wait until the bridge's reader has handled it."""
    env = Envelope("TERMINATE", bridge.run_id, "ops", {"reason": "seen by one rank"})
    client = ThreadedPublisher(lambda: open_bus(url))
    topic = Topics().control(bridge.run_id)
    last = client.submit(lambda bus: bus.append(topic, [encode(env)])).result(30)[-1]
    client.close()
    deadline = time.monotonic() + 30
    while bridge.run.control.last_id != last:
        if time.monotonic() > deadline:
            raise TimeoutError("the bridge did not read the TERMINATE within 30 s")
        time.sleep(0.005)


def main(args: dict[str, Any]) -> None:
    rank = args["rank"]
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{args['port']}",
        rank=rank,
        world_size=args["world_size"],
        timeout=datetime.timedelta(seconds=60),
    )
    url = f"memory://rank{rank}"
    bridge = LoopBridge(url, "loop-ranks", stop_sync_every=args["every"])  # rank from the group
    bridge.start()
    steps: list[int] = []
    iteration = 0
    for epoch in range(EPOCHS):
        bridge.epoch_started("train", epoch, epoch_length=EPOCH_LENGTH)
        stopped = False
        for _ in range(EPOCH_LENGTH):
            iteration += 1
            bridge.step_started()
            total = torch.ones(1)
            dist.all_reduce(total)  # the step's collective
            if rank == args["signal_rank"] and iteration == args["signal_at"]:
                terminate(bridge, url)
            d = bridge.step_completed(outputs={"loss": 1.0 / iteration})
            steps.append(iteration)
            if d.stop:
                stopped = True
                break
        if stopped or bridge.epoch_completed(metrics={"loss": 0.5}).stop:
            break
    end = bridge.finish()
    dist.destroy_process_group()
    result = {"steps": steps, "status": end.status, "by": end.by, "reason": end.reason}
    (Path(args["out"]) / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    try:
        main(spec)
    except BaseException:
        (Path(spec["out"]) / f"rank{spec['rank']}.err").write_text(traceback.format_exc())
        raise
