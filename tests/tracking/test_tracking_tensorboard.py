"""The hand-written TensorBoard event files, read back by TensorBoard's own EventAccumulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainer import tracking
from trainer.tracking.tensorboard import crc32c, event_file_name, masked_crc32c


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def as_float32(values: list[float]) -> list[float]:
    return [float(np.float32(v)) for v in values]


def test_crc32c_has_the_standard_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(b"56789", crc32c(b"1234")) == 0xE3069283  # continued over chunks
    assert (
        masked_crc32c(b"123456789")
        == (((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    )


def test_tensorboard_reads_back_every_step_and_value(tmp_path: Path) -> None:
    losses = [2.5, 1.25, 0.1, 0.033, 1e-7]
    with tracking.run("p", dir=tmp_path) as run:
        for step, loss in zip([0, 23, 46, 69, 92], losses, strict=True):
            run.log({"train/loss": loss, "epoch": step // 23}, step=step)
        run.log({"val/accuracy": 0.9, "flag": True}, step=92)
        run.log({"big": 1e40, "neg": -3.5}, step=2**40)  # int64 steps, beyond float32 values
    read = scalars(run.dir)
    assert set(read) == {"train/loss", "epoch", "val/accuracy", "flag", "big", "neg"}
    assert read["train/loss"] == list(zip([0, 23, 46, 69, 92], as_float32(losses), strict=True))
    assert read["epoch"] == [(0, 0.0), (23, 1.0), (46, 2.0), (69, 3.0), (92, 4.0)]
    assert read["val/accuracy"] == [(92, float(np.float32(0.9)))]
    assert read["flag"] == [(92, 1.0)]
    assert read["neg"] == [(2**40, -3.5)]
    assert read["big"] == [(2**40, float("inf"))]


def test_a_run_written_by_two_reopenings_reads_back_whole(tmp_path: Path) -> None:
    first = tracking.run("p", id="twice", dir=tmp_path)
    for step in range(3):
        first.log({"loss": 1.0 / (step + 1)}, step=step)
    first.finish("failed", error="RuntimeError: preempted")
    resumed = tracking.run("p", id="twice", dir=tmp_path)  # resumed in its own directory
    for step in range(3, 6):
        resumed.log({"loss": 1.0 / (step + 1)})
    resumed.finish()
    appended = tracking.open_run(tmp_path / "twice")  # and a worker appending afterwards
    appended.log({"val/loss": 0.5}, step=6)
    assert len(list((tmp_path / "twice").glob("events.out.tfevents.*"))) >= 2
    read = scalars(tmp_path / "twice")
    assert read["loss"] == list(
        zip(range(6), as_float32([1.0 / (s + 1) for s in range(6)]), strict=True)
    )
    assert read["val/loss"] == [(6, 0.5)]


def test_a_processs_event_files_sort_in_the_order_they_were_made() -> None:
    # TensorBoard reads them in name order: past the 9th file "...10" must not come first.
    names = [event_file_name(wall_time=1_800_000_000) for _ in range(12)]
    assert sorted(names) == names


def test_keyed_rows_skipped_as_duplicates_are_not_written_to_tensorboard(tmp_path: Path) -> None:
    with tracking.run("p", dir=tmp_path) as run:
        run.log({"loss": 1.0}, step=1, key="a")
        run.log({"loss": 1.0}, step=1, key="a")
    assert scalars(run.dir)["loss"] == [(1, 1.0)]


@pytest.mark.parametrize("step", [-1, 0, 127, 128, 2**31, 2**63 - 1])
def test_steps_are_encoded_as_protobuf_int64(tmp_path: Path, step: int) -> None:
    with tracking.run("p", dir=tmp_path) as run:
        run.log({"x": 1.5}, step=step)
    assert scalars(run.dir)["x"] == [(step, 1.5)]
