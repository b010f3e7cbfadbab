"""Online tracking: a script's records travel over Redis and a tracking worker writes them, to
the same directory an offline run of the same script writes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from fake_trainer import eventually

from trainer import tracking
from trainer.tracking.reader import read_run
from workers.runtime import RuntimeOptions, run_worker
from workers.tracking import TrackingWorker

HANG_GUARD = 60.0


def script(mode: str, root: Path, artifact_file: Path) -> str:
    """What a user's training script logs; returns the run id."""
    values = np.random.default_rng(0).normal(size=1000)
    image = np.linspace(0, 1, 8 * 8 * 3).reshape(8, 8, 3)
    with tracking.run(
        project="demo", name="online", config={"lr": 0.1}, tags=["t"], mode=mode, dir=root
    ) as run:
        for step in range(3):
            run.log({"train/loss": 1.0 / (step + 1), "epoch": step + 1}, step=step * 10)
        run.log_histogram("weights", values, bins=16, step=20)
        run.log_image("samples", image, caption="eight by eight", step=20)
        model = tracking.Artifact("model", type="model", description="final weights")
        model.add_file(artifact_file)
        run.log_artifact(model, aliases=["best"])
        return run.id


async def test_an_online_run_is_written_by_the_worker_as_offline_writes_it(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINER_BUS_URL", redis_url)
    artifact_file = tmp_path / "weights.bin"
    artifact_file.write_bytes(bytes(range(256)) * 40)
    store = tmp_path / "store"
    options = RuntimeOptions(
        bus_url=redis_url, follow=True, name="tracker", heartbeat=0.2, linger=0.2, block=0.2
    )
    stop, ready = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(
        run_worker(TrackingWorker, options, {"dir": str(store)}, stop, ready)
    )
    await asyncio.wait_for(ready.wait(), HANG_GUARD)
    try:
        online_id = await asyncio.to_thread(script, "online", tmp_path / "unused", artifact_file)
        offline_id = script("offline", tmp_path / "offline", artifact_file)

        def finished() -> bool:
            try:
                return read_run(store / online_id).meta.get("status") == "completed"
            except Exception:
                return False

        await eventually(finished, "the worker to write the finished online run", HANG_GUARD)
    finally:
        stop.set()
        assert await asyncio.wait_for(worker, HANG_GUARD) == 0
    assert not (tmp_path / "unused").exists()  # online writes nothing locally

    online, offline = read_run(store / online_id), read_run(tmp_path / "offline" / offline_id)
    strip = ("time", "key")  # online rows carry the envelope id as their redelivery key
    assert [{k: v for k, v in r.items() if k not in strip} for r in online.rows] == [
        {k: v for k, v in r.items() if k not in strip} for r in offline.rows
    ]
    assert online.summary["last"] == offline.summary["last"]
    assert [(h["bins"], h["counts"]) for h in online.histograms] == [
        (h["bins"], h["counts"]) for h in offline.histograms
    ]
    (image_on,), (image_off,) = online.images, offline.images
    assert image_on["caption"] == "eight by eight"
    assert (online.dir / image_on["file"]).read_bytes() == (
        offline.dir / image_off["file"]
    ).read_bytes()
    model = online.artifacts["model"]
    assert model["aliases"] == {"latest": "v0", "best": "v0"}
    (stored,) = model["versions"][0]["files"]
    assert (online.dir / stored["stored"]).read_bytes() == artifact_file.read_bytes()
    for field in ("project", "name", "config", "tags", "status"):
        assert online.meta[field] == offline.meta[field], field


def test_online_without_a_bus_url_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINER_BUS_URL", raising=False)
    with pytest.raises(tracking.TrackingError, match="TRAINER_BUS_URL"):
        tracking.run(project="demo", mode="online")
