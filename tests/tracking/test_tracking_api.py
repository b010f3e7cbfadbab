"""The tracking API as a user writes it, and the files it leaves in the run directory."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from PIL import Image

from trainer import tracking
from trainer.tracking.modes import reset_mode
from trainer.tracking.reader import read_run
from trainer.tracking.summary import default_goal

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _default_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINER_TRACKING_MODE", raising=False)
    monkeypatch.delenv("TRAINER_RUNS_DIR", raising=False)
    reset_mode()
    yield
    reset_mode()
    tracking.set_online_sink(None)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_directory_holds_metadata_rows_and_a_summary(tmp_path: Path) -> None:
    config = {"optimizer": {"lr": 0.1}, "epochs": 3}
    with tracking.run(
        "digits", name="mlp", config=config, tags=["baseline"], notes="first", dir=tmp_path
    ) as run:
        run.log({"train/loss": 0.9, "val/accuracy": 0.5})
        run.log({"train/loss": 0.4, "val/accuracy": 0.8})
        run.log({"train/loss": 0.6, "val/accuracy": 0.7}, step=10)
        run.log({"train/loss": 0.5})
    assert run.dir is not None and run.dir.parent == tmp_path
    assert run.dir.name.startswith("mlp-") and run.id == run.dir.name

    meta = json.loads((run.dir / "run.json").read_text())
    assert meta["project"] == "digits" and meta["name"] == "mlp"
    assert meta["config"] == config and meta["tags"] == ["baseline"] and meta["notes"] == "first"
    assert meta["status"] == "completed"
    assert meta["finished_at"] >= meta["started_at"]
    assert meta["duration_s"] == pytest.approx(meta["finished_at"] - meta["started_at"])

    rows = lines(run.dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1, 10, 11]  # default: one past the highest step
    assert rows[1]["train/loss"] == 0.4 and "val/accuracy" not in rows[3]

    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["last"] == {"train/loss": 0.5, "val/accuracy": 0.7}
    assert summary["best"] == {"train/loss": 0.4, "val/accuracy": 0.8}
    assert summary["best_step"] == {"train/loss": 1, "val/accuracy": 1}
    assert summary["goal"] == {"train/loss": "min", "val/accuracy": "max"}
    assert summary["steps"] == 4


def test_define_metric_sets_which_way_is_best_even_after_values_were_logged(
    tmp_path: Path,
) -> None:
    with tracking.run("p", dir=tmp_path) as run:
        run.define_metric("perplexity", "min")
        run.log({"perplexity": 30.0, "score": 3.0})
        run.log({"perplexity": 20.0, "score": 1.0})
        run.log({"perplexity": 25.0, "score": 2.0})
        run.define_metric("score", "min")
    summary = read_run(run.dir).summary
    assert summary["best"] == {"perplexity": 20.0, "score": 1.0}
    assert summary["best_step"] == {"perplexity": 1, "score": 1}
    with pytest.raises(ValueError, match="'min' or 'max'"):
        tracking.run("p", dir=tmp_path).define_metric("x", "lowest")


@pytest.mark.parametrize(
    ("key", "goal"),
    [
        ("val/loss", "min"),
        ("train_nll", "min"),
        ("val.rmse", "min"),
        ("test/mae", "min"),
        ("val/error", "min"),
        ("val/accuracy", "max"),
        ("loss/val_f1", "max"),  # only the last part counts
        ("epoch", "max"),
    ],
)
def test_the_default_goal_follows_the_last_part_of_the_key(key: str, goal: str) -> None:
    assert default_goal(key) == goal


def test_values_that_are_not_numbers_are_refused_naming_the_key(tmp_path: Path) -> None:
    run = tracking.run("p", dir=tmp_path)
    with pytest.raises(TypeError, match="'name'"):
        run.log({"name": "mlp"})
    with pytest.raises(ValueError, match="'step'"):
        run.log({"step": 3})
    run.log({"a": np.float32(0.5), "b": torch.tensor(2), "c": True})
    run.finish()
    assert read_run(run.dir).rows[0] | {"time": 0} == {
        "step": 0,
        "time": 0,
        "a": 0.5,
        "b": 2,
        "c": True,
    }
    with pytest.raises(tracking.TrackingError, match="finished"):
        run.log({"a": 1})


def test_histograms_have_the_bins_and_counts_numpy_computes(tmp_path: Path) -> None:
    values = np.random.default_rng(0).normal(size=1000)
    with tracking.run("p", dir=tmp_path) as run:
        run.log({"loss": 1.0}, step=7)
        run.log_histogram("weights", values, bins=10)
        run.log_histogram("grads", torch.from_numpy(values[:100]), bins=5, step=9, key="g9")
        run.log_histogram("grads", [1, 2, 3], bins=5, step=9, key="g9")  # the same key: skipped
    rows = lines(run.dir / "media" / "histograms.jsonl")
    assert [(r["name"], r["step"]) for r in rows] == [("weights", 7), ("grads", 9)]
    counts, edges = np.histogram(values, bins=10)
    assert rows[0]["counts"] == counts.tolist()
    assert rows[0]["bins"] == pytest.approx(edges.tolist())
    counts, edges = np.histogram(values[:100], bins=5)
    assert rows[1]["counts"] == counts.tolist() and rows[1]["key"] == "g9"


def test_images_are_stored_as_png_from_arrays_and_files(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    gray = np.linspace(0.0, 1.0, 12).reshape(3, 4)
    jpeg = tmp_path / "photo.jpg"
    Image.fromarray(rgb).save(jpeg)
    png = tmp_path / "plot.png"
    Image.fromarray(rgb).save(png)
    with tracking.run("p", dir=tmp_path / "runs") as run:
        run.log_image("samples/rgb", rgb, caption="random", step=3)
        run.log_image("gray", torch.from_numpy(gray), step=3)
        run.log_image("photo", jpeg, step=4)
        run.log_image("plot", str(png), step=4)
        with pytest.raises(ValueError, match=r"channels first\? use .permute"):
            run.log_image("chw", np.zeros((3, 6, 8)))
        with pytest.raises(ValueError, match="not \\[0, 1\\]"):
            run.log_image("bright", np.full((2, 2), 2.0))
    rows = {r["name"]: r for r in lines(run.dir / "media" / "images.jsonl")}
    assert rows["samples/rgb"]["caption"] == "random" and rows["samples/rgb"]["step"] == 3
    assert rows["samples/rgb"]["file"] == "media/images/samples_rgb-3.png"
    assert np.array_equal(np.asarray(Image.open(run.dir / rows["samples/rgb"]["file"])), rgb)
    assert np.array_equal(
        np.asarray(Image.open(run.dir / rows["gray"]["file"])),
        np.rint(gray * 255).astype(np.uint8),
    )
    with Image.open(run.dir / rows["photo"]["file"]) as photo:
        assert photo.format == "PNG" and photo.size == (8, 6)
    assert (run.dir / rows["plot"]["file"]).read_bytes() == png.read_bytes()


def test_artifacts_get_versions_and_aliases_that_move(tmp_path: Path) -> None:
    source = tmp_path / "model.pt"
    with tracking.run("p", dir=tmp_path / "runs") as run:
        versions = []
        for i, aliases in enumerate([["best"], [], ["best"]]):
            source.write_bytes(b"weights %d" % i)
            artifact = tracking.Artifact("model", type="model", metadata={"epoch": i})
            artifact.add_file(source)
            artifact.add_reference(tmp_path / f"big-{i}.ckpt", sha256="ab" * 32, size=10**9)
            versions.append(run.log_artifact(artifact, aliases=aliases))
            if i == 1:
                index = read_run(run.dir).artifacts["model"]
                assert index["aliases"] == {"latest": "v1", "best": "v0"}
            source.unlink()  # a hard link or a copy: the logged bytes stay
    assert versions == ["v0", "v1", "v2"]
    index = read_run(run.dir).artifacts["model"]
    assert index["aliases"] == {"latest": "v2", "best": "v2"}
    assert index["type"] == "model"
    v1 = index["versions"][1]
    assert v1["metadata"] == {"epoch": 1}
    stored = next(f for f in v1["files"] if f["name"] == "model.pt")
    assert (run.dir / stored["stored"]).read_bytes() == b"weights 1"
    assert stored["size"] == len(b"weights 1") and len(stored["sha256"]) == 64
    reference = next(f for f in v1["files"] if f["name"] == "big-1.ckpt")
    assert reference == {
        "name": "big-1.ckpt",
        "size": 10**9,
        "sha256": "ab" * 32,
        "path": str(tmp_path / "big-1.ckpt"),
    }
    assert not (run.dir / "artifacts" / "model" / "v1" / "big-1.ckpt").exists()


def test_the_context_manager_records_the_error_that_ended_the_run(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), tracking.run("p", dir=tmp_path) as run:
        run.log({"loss": 1.0})
        1 / 0  # noqa: B018
    meta = read_run(run.dir).meta
    assert meta["status"] == "failed"
    assert meta["error"] == "ZeroDivisionError: division by zero"


def test_finish_records_who_stopped_the_run_and_why(tmp_path: Path) -> None:
    run = tracking.run("p", dir=tmp_path)
    run.log({"val/loss": 0.5})
    run.finish("terminated", reason="early stopping", by="early-stop", summary={"val/loss": 0.4})
    run.finish("failed")  # a second finish changes nothing
    record = read_run(run.dir)
    assert (record.meta["status"], record.meta["reason"], record.meta["by"]) == (
        "terminated",
        "early stopping",
        "early-stop",
    )
    assert record.summary["last"]["val/loss"] == 0.4


def test_disabled_mode_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINER_TRACKING_MODE", "disabled")
    assert tracking.get_mode() == "disabled"
    with tracking.run("p", config={"a": 1}, dir=tmp_path) as run:
        run.log({"loss": 1.0})
        run.log_histogram("h", [1, 2, 3])
        run.log_image("i", np.zeros((2, 2)))
        artifact = tracking.Artifact("model", "model")
        assert run.log_artifact(artifact) == ""
        run.update_meta(epochs=1)
    assert run.dir is None and run.mode == "disabled"
    assert list(tmp_path.iterdir()) == []

    tracking.set_mode("offline")  # set_mode wins over the environment
    assert tracking.run("p", dir=tmp_path).dir is not None
    with pytest.raises(ValueError, match="'loud' is not one of online, offline, disabled"):
        tracking.set_mode("loud")
    monkeypatch.setenv("TRAINER_TRACKING_MODE", "nope")
    reset_mode()
    with pytest.raises(ValueError, match="TRAINER_TRACKING_MODE"):
        tracking.get_mode()


def test_the_runs_root_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINER_RUNS_DIR", str(tmp_path / "elsewhere"))
    run = tracking.run("p")
    assert run.dir is not None and run.dir.parent == tmp_path / "elsewhere"
    run.finish()


def test_keys_make_every_record_idempotent_across_reopenings(tmp_path: Path) -> None:
    run = tracking.run("p", dir=tmp_path)
    artifact = tracking.Artifact("notes", "text")
    (tmp_path / "a.txt").write_text("a")
    artifact.add_file(tmp_path / "a.txt")
    for _ in range(2):
        run.log({"loss": 1.0}, step=5, key="m1")
        run.log_image("img", np.zeros((2, 2), np.uint8), key="i1")
        assert run.log_artifact(artifact, key="a1") == "v0"
    again = tracking.open_run(run.dir)  # e.g. a worker replica, or after a restart
    again.log({"loss": 1.0}, step=5, key="m1")
    again.log({"loss": 0.5}, key="m2")
    again.log_image("img", np.zeros((2, 2), np.uint8), key="i1")
    assert again.log_artifact(artifact, key="a1") == "v0"
    record = read_run(run.dir)
    assert [(r["step"], r["key"]) for r in record.rows] == [(5, "m1"), (6, "m2")]
    assert len(record.images) == 1 and len(record.artifacts["notes"]["versions"]) == 1
    assert record.summary["steps"] == 2


def test_a_run_resumed_by_id_continues_its_own_directory(tmp_path: Path) -> None:
    first = tracking.run("p", id="exp-1", config={"epochs": 2}, dir=tmp_path)
    first.log({"loss": 1.0})
    first.finish("failed", error="OSError: disk")
    resumed = tracking.run("p", id="exp-1", config={"epochs": 4}, dir=tmp_path)
    assert resumed.dir == first.dir == tmp_path / "exp-1"
    assert read_run(resumed.dir).meta["status"] == "running"
    resumed.log({"loss": 0.5})
    resumed.finish()
    record = read_run(resumed.dir)
    assert [r["step"] for r in record.rows] == [0, 1]
    assert record.meta["status"] == "completed" and record.meta["error"] is None
    assert record.meta["config"] == {"epochs": 4} and record.meta["resumes"] == 1
    with pytest.raises(tracking.TrackingError, match=r"taken .* by project 'p'"):
        tracking.run("other", id="exp-1", dir=tmp_path)
    with pytest.raises(ValueError, match="run id"):
        tracking.run("p", id="../escape", dir=tmp_path)


def test_records_applied_with_a_local_sink_make_the_same_run(tmp_path: Path) -> None:
    # The tracking worker's path: records built by hand (from envelopes) and applied.
    sink = tracking.LocalSink(tmp_path / "run-1")
    sink.apply(
        {
            "kind": "meta",
            "fields": {"id": "run-1", "project": "p", "status": "running", "started_at": 100.0},
            "key": "e1",
        }
    )
    assert sink.apply({"kind": "log", "step": 23, "time": 101.0, "values": {"val/loss": 0.5}})
    version = sink.apply(
        {
            "kind": "artifact",
            "name": "checkpoints",
            "type": "model",
            "aliases": ["best"],
            "files": [
                {"name": "ckpt-23.pt", "size": 5, "sha256": "cd" * 32, "path": "/ckpt/23.pt"},
                {"name": "notes.txt", "data": b"hello"},
            ],
            "key": "e3",
        }
    )
    assert version == "v0"
    fin = {"kind": "finish", "status": "completed", "time": 130.0, "fields": {"epochs": 1}}
    tracking.LocalSink(tmp_path / "run-1").apply({**fin, "key": "e4"})
    # A redelivered start must not reopen a finished run.
    sink.apply({"kind": "meta", "fields": {"status": "running"}, "key": "e1"})
    record = read_run(tmp_path / "run-1")
    assert record.meta["status"] == "completed" and record.meta["duration_s"] == 30.0
    assert record.meta["epochs"] == 1
    assert record.rows == [{"step": 23, "time": 101.0, "val/loss": 0.5}]
    stored = record.artifacts["checkpoints"]["versions"][0]["files"][1]["stored"]
    assert (tmp_path / "run-1" / stored).read_bytes() == b"hello"
    with pytest.raises(ValueError, match="kind 'nope'"):
        sink.apply({"kind": "nope"})


def test_online_runs_hand_msgpack_native_records_to_their_sink(tmp_path: Path) -> None:
    records: list[dict] = []

    class Capture:
        def write(self, record: dict) -> None:
            records.append(tracking.inline_files(record))

        def close(self) -> None:
            records.append({"kind": "closed"})

    tracking.set_online_sink(lambda meta: Capture())
    (tmp_path / "w.bin").write_bytes(b"w")
    with tracking.run("p", name="online", mode="online", dir=tmp_path / "runs") as run:
        run.log({"loss": 1.0})
        run.log_histogram("h", [1.0, 2.0], bins=2)
        run.log_image("i", np.zeros((2, 2), np.uint8))
        artifact = tracking.Artifact("model", "model")
        artifact.add_file(tmp_path / "w.bin")
        run.log_artifact(artifact)
    assert not (tmp_path / "runs").exists()  # online: the tracking worker writes the files
    assert [r["kind"] for r in records] == [
        "meta",
        "log",
        "histogram",
        "image",
        "artifact",
        "finish",
        "closed",
    ]
    sink = tracking.LocalSink(tmp_path / "worker" / run.id)
    for record in records[:-1]:
        sink.apply(msgpack.unpackb(msgpack.packb(record)))  # what crosses the bus
    replayed = read_run(tmp_path / "worker" / run.id)
    assert replayed.meta["name"] == "online" and replayed.meta["status"] == "completed"
    assert replayed.rows[0]["loss"] == 1.0 and len(replayed.histograms) == 1
    stored = replayed.artifacts["model"]["versions"][0]["files"][0]["stored"]
    assert (replayed.dir / stored).read_bytes() == b"w"


def test_importing_tracking_loads_neither_torch_nor_the_bus() -> None:
    code = (
        "import sys, tempfile\n"
        "from trainer import tracking\n"
        "with tracking.run('p', dir=tempfile.mkdtemp()) as run:\n"
        "    run.log({'loss': 1.0})\n"
        "    run.log_histogram('h', [1.0, 2.0])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'bus', 'workers')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_logged_version_keeps_its_bytes_when_the_source_is_rewritten_in_place(
    tmp_path: Path,
) -> None:
    source = tmp_path / "checkpoint.pt"
    with tracking.run("p", dir=tmp_path / "runs") as run:
        for content in (b"first weights", b"second weights"):
            source.write_bytes(content)  # rewrites the same inode: what a script does
            artifact = tracking.Artifact("checkpoint", type="model")
            artifact.add_file(source)
            run.log_artifact(artifact)
    index = read_run(run.dir).artifacts["checkpoint"]
    stored = [run.dir / v["files"][0]["stored"] for v in index["versions"]]
    assert [p.read_bytes() for p in stored] == [b"first weights", b"second weights"]
    assert all(p.stat().st_ino != source.stat().st_ino for p in stored)
    first = index["versions"][0]["files"][0]
    assert first["size"] == len(b"first weights")
    assert first["sha256"] == hashlib.sha256(b"first weights").hexdigest()


def test_the_guides_keyword_calls_work_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((4, 5, 3), dtype=np.uint8)).save("pred.png")
    Path("model.pt").write_bytes(b"weights")
    run = tracking.run(
        project="digits", name="guide", config={"lr": 0.1}, tags=["baseline"], dir=tmp_path
    )
    run.log({"loss": 0.5}, step=100)
    run.log_image(name="prediction", image_path="pred.png", caption="Model prediction", step=100)
    run.log_image(name="as-path", image_path=Path("pred.png"), caption="a Path", step=101)
    run.log_histogram(name="weights", values=[0.1, 0.2, 0.3], bins=4, step=100)
    artifact = tracking.Artifact(name="model", type="model")
    artifact.add_file("model.pt", name="weights.pt")
    assert run.log_artifact(artifact, aliases=["best"]) == "v0"
    run.finish()
    record = read_run(run.dir)
    assert record.meta["name"] == "guide" and record.meta["tags"] == ["baseline"]
    assert record.meta["status"] == "completed" and record.summary["last"] == {"loss": 0.5}
    images = {r["name"]: r for r in record.images}
    assert images["prediction"]["caption"] == "Model prediction"
    assert images["prediction"]["step"] == 100
    assert images["prediction"]["width"] == 5 and images["prediction"]["height"] == 4
    assert images["as-path"]["caption"] == "a Path"
    assert record.histograms[0]["name"] == "weights" and len(record.histograms[0]["counts"]) == 4
    assert record.artifacts["model"]["versions"][0]["files"][0]["name"] == "weights.pt"


def test_log_image_refuses_both_or_neither_image_and_image_path(tmp_path: Path) -> None:
    picture = tmp_path / "pred.png"
    Image.fromarray(np.zeros((2, 2), dtype=np.uint8)).save(picture)
    with tracking.run("p", dir=tmp_path / "runs") as run:
        with pytest.raises(TypeError, match="image_path"):
            run.log_image("x", picture, image_path=picture)
        with pytest.raises(TypeError, match="image_path"):
            run.log_image("x")


def version_aliases(index: dict) -> dict[str, list[str]]:
    return {v["version"]: sorted(v.get("aliases", [])) for v in index["versions"]}


def test_an_alias_is_on_exactly_one_version_of_the_index(tmp_path: Path) -> None:
    source = tmp_path / "model.pt"
    source.write_bytes(b"w")
    with tracking.run("p", dir=tmp_path / "runs") as run:
        for aliases in (["latest", "best"], ["latest"]):  # as the checkpoint worker logs them
            artifact = tracking.Artifact("checkpoints", type="model")
            artifact.add_file(source)
            run.log_artifact(artifact, aliases=aliases)
        index = read_run(run.dir).artifacts["checkpoints"]
        assert version_aliases(index) == {"v0": ["best"], "v1": ["latest"]}
        assert index["aliases"] == {"latest": "v1", "best": "v0"}

        artifact = tracking.Artifact("checkpoints", type="model")
        artifact.add_file(source)
        run.log_artifact(artifact, aliases=["best", "production"])
        artifact = tracking.Artifact("checkpoints", type="model")
        artifact.add_file(source)
        run.log_artifact(artifact, aliases=["production"])  # a custom alias moved on
    index = read_run(run.dir).artifacts["checkpoints"]
    assert version_aliases(index) == {
        "v0": [],
        "v1": [],
        "v2": ["best"],
        "v3": ["latest", "production"],
    }
    assert index["aliases"] == {"latest": "v3", "best": "v2", "production": "v3"}
