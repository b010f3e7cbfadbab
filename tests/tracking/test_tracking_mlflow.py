"""Runs exported to an MLflow file store, read back by MLflow's own client."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer import tracking
from trainer.tracking.mlflow_export import export_mlflow
from trainer.tracking.runs import INTERRUPTED


@pytest.fixture
def client_for(monkeypatch: pytest.MonkeyPatch):
    # MLflow keeps its file store (the format the export writes) behind an opt-in switch.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return lambda store: MlflowClient(tracking_uri=store.absolute().as_uri())


def finished_run(root: Path, name: str, status: str = "completed", **finish) -> tracking.Run:
    run = tracking.run(
        "digits",
        name=name,
        config={"optimizer": {"name": "sgd", "lr": 0.05}, "epochs": 3, "layers": [64, 32]},
        tags=["baseline", "cpu"],
        notes="an MLP on digits",
        dir=root,
    )
    for epoch in range(1, 4):
        run.log({"train/loss": 1.0 / epoch, "val/accuracy": 0.5 + epoch / 10}, step=epoch * 23)
    run.finish(status, **finish)
    return run


def test_mlflow_reads_back_params_metrics_name_status_and_tags(tmp_path: Path, client_for) -> None:
    run = finished_run(tmp_path / "runs", "mlp")
    exported = export_mlflow(run.dir, tmp_path / "mlruns")
    client = client_for(tmp_path / "mlruns")

    experiment = client.get_experiment_by_name("digits")
    assert experiment is not None and exported.parent.name == experiment.experiment_id
    got = client.get_run(exported.name)
    assert got.info.run_name == "mlp"
    assert got.info.status == "FINISHED"
    assert got.info.start_time <= got.info.end_time
    assert got.data.params == {
        "optimizer.name": "sgd",
        "optimizer.lr": "0.05",
        "epochs": "3",
        "layers": "[64, 32]",
    }
    history = client.get_metric_history(exported.name, "train/loss")
    assert [(m.step, m.value) for m in history] == [(23, 1.0), (46, 0.5), (69, 1.0 / 3)]
    history = client.get_metric_history(exported.name, "val/accuracy")
    assert [m.step for m in history] == [23, 46, 69]
    assert [m.value for m in history] == pytest.approx([0.6, 0.7, 0.8])
    assert got.data.metrics == {"train/loss": 1.0 / 3, "val/accuracy": pytest.approx(0.8)}
    tags = got.data.tags
    assert tags["mlflow.runName"] == "mlp"
    assert tags["mlflow.note.content"] == "an MLP on digits"
    assert tags["trainer.tags"] == "baseline, cpu"
    assert tags["trainer.id"] == run.id


def test_exports_of_one_project_share_an_experiment_and_map_the_status(
    tmp_path: Path, client_for
) -> None:
    runs = [
        finished_run(tmp_path / "runs", "ok"),
        finished_run(tmp_path / "runs", "bad", "failed", error="ValueError: nan"),
        finished_run(
            tmp_path / "runs", "stopped", "terminated", reason="no improvement", by="early-stop:es"
        ),
        finished_run(tmp_path / "runs", "ctrl-c", "terminated", reason=INTERRUPTED),
    ]
    for run in runs:
        export_mlflow(run.dir, tmp_path / "mlruns")
    export_mlflow(runs[0].dir, tmp_path / "mlruns")  # again: replaces its earlier export
    client = client_for(tmp_path / "mlruns")
    experiment = client.get_experiment_by_name("digits")
    found = client.search_runs([experiment.experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in found) == [
        ("bad", "FAILED"),
        ("ctrl-c", "KILLED"),
        ("ok", "FINISHED"),
        ("stopped", "FINISHED"),  # an early stop is a run that finished
    ]
    bad = next(r for r in found if r.info.run_name == "bad")
    assert bad.data.tags["trainer.error"] == "ValueError: nan"
    stopped = next(r for r in found if r.info.run_name == "stopped")
    assert stopped.data.tags["trainer.status"] == "terminated"
    assert stopped.data.tags["trainer.stopped_by"] == "early-stop:es"
    assert stopped.data.tags["trainer.stop_reason"] == "no improvement"
    ok = next(r for r in found if r.info.run_name == "ok")
    assert "trainer.stopped_by" not in ok.data.tags and "trainer.stop_reason" not in ok.data.tags


def test_exported_artifact_files_are_copies_not_links_of_the_runs_files(tmp_path: Path) -> None:
    source = tmp_path / "model.pt"
    source.write_bytes(b"weights")
    with tracking.run("digits", name="art", dir=tmp_path / "runs") as run:
        artifact = tracking.Artifact("model", type="model")
        artifact.add_file(source)
        run.log_artifact(artifact)
    stored = run.dir / "artifacts" / "model" / "v0" / "model.pt"
    exported = export_mlflow(run.dir, tmp_path / "mlruns") / "artifacts" / "model" / "v0"
    copy = exported / "model.pt"
    assert copy.read_bytes() == b"weights"
    assert copy.stat().st_ino != stored.stat().st_ino and copy.stat().st_nlink == 1
    copy.write_bytes(b"edited in the export")  # in place: the run's version is not touched
    assert stored.read_bytes() == b"weights"
