"""`trainer runs ls|show|compare|plot|export` on runs written by the tracking store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from trainer import tracking
from trainer.cli import main
from trainer.tracking.plot import PANEL_HEIGHT_PX, PANEL_WIDTH_PX, build_figure
from trainer.tracking.reader import read_run


@pytest.fixture(autouse=True)
def piped_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands' output as a pipe sees it: no terminal width forced on rich (xdist sets one)."""
    monkeypatch.delenv("COLUMNS", raising=False)


def make_run(root: Path, name: str, lr: float, epochs: int = 3, **finish) -> tracking.Run:
    run = tracking.run(
        "digits",
        name=name,
        config={"optimizer": {"lr": lr, "momentum": 0.9}, "epochs": epochs},
        dir=root,
    )
    for epoch in range(1, epochs + 1):
        step = epoch * 23
        run.log({"train/loss": lr / epoch, "epoch": epoch}, step=step)
        run.log({"val/loss": 2 * lr / epoch, "val/accuracy": 0.5 + epoch * lr}, step=step)
    run.finish(**finish)
    return run


@pytest.fixture
def root(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    make_run(runs, "fast", 0.1)
    time.sleep(0.01)  # distinct start times: newest first is well defined
    make_run(runs, "slow", 0.01, epochs=2, status="terminated", reason="patience")
    tracking.run("other", name="elsewhere", dir=runs).finish("failed", error="OSError: x")
    (runs / "not-a-run").mkdir()
    return runs


def run_id(root: Path, name: str) -> str:
    return next(p.name for p in root.iterdir() if p.name.startswith(f"{name}-"))


def test_ls_lists_runs_newest_first_with_status_epochs_and_best(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "ls", "--dir", str(root)]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()[1:]]
    assert [line[0] for line in lines] == ["elsewhere", "slow", "fast"]
    fast = lines[2]
    assert fast[1] == run_id(root, "fast") and fast[2] == "completed" and fast[3] == "3/3"
    assert fast[4:6] == ["val/loss", "0.06667"]  # the first val/ metric, at its best (min)
    assert lines[1][2:4] == ["terminated", "2/2"]
    assert lines[0][2] == "failed"

    assert main(["runs", "ls", "--project", "digits", "--dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "elsewhere" not in out and "fast" in out and "slow" in out


def test_ls_defaults_to_the_runs_dir_of_the_environment(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINER_RUNS_DIR", str(root))
    assert main(["runs", "ls"]) == 0
    assert run_id(root, "fast") in capsys.readouterr().out
    monkeypatch.setenv("TRAINER_RUNS_DIR", str(root / "empty"))
    assert main(["runs", "ls"]) == 0
    assert "no runs" in capsys.readouterr().out


def test_show_prints_the_config_metrics_and_ending(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "show", "slow", "--dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert run_id(root, "slow") in out
    assert "terminated" in out and "patience" in out
    assert "optimizer.lr" in out and "0.01" in out
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["val/accuracy"])
    assert row == ["val/accuracy", "0.52", "0.52", "46", "max"]


def test_compare_shows_config_differences_and_final_metrics_side_by_side(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fast, slow = run_id(root, "fast"), run_id(root, "slow")
    assert main(["runs", "compare", fast, slow, "--dir", str(root)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["optimizer.lr"] == ["0.1", "0.01"]
    assert ["epochs", "3", "2"] in [line.split() for line in out.splitlines()]  # the config
    assert "optimizer.momentum" not in rows  # the same in both: not a difference
    assert rows["train/loss"] == ["0.03333", "0.005"]
    assert rows["epoch"] == ["3", "2"]
    assert rows["status"] == ["completed", "terminated"]


def test_plot_writes_a_png_with_a_panel_per_metric(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plots" / "loss.png"
    refs = [run_id(root, "fast"), run_id(root, "slow")]
    argv = ["runs", "plot", *refs, "--metric", "loss", "-o", str(out), "--dir", str(root)]
    assert main(argv) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.format == "PNG"
        assert image.size == (PANEL_WIDTH_PX, PANEL_HEIGHT_PX)  # one panel: loss

    everything = tmp_path / "all.png"
    assert main(["runs", "plot", *refs, "-o", str(everything), "--dir", str(root)]) == 0
    with Image.open(everything) as image:
        assert image.size == (PANEL_WIDTH_PX, 2 * PANEL_HEIGHT_PX)  # loss and accuracy


def test_the_figure_has_a_line_per_run_and_split(root: Path) -> None:
    records = [read_run(root / run_id(root, name)) for name in ("fast", "slow")]
    figure = build_figure(records, ["loss"])
    (axes,) = figure.axes
    assert len(axes.lines) == 2 * 2  # two runs, splits train and val
    labels = sorted(line.get_label() for line in axes.lines)
    assert labels == ["fast train", "fast val", "slow train", "slow val"]
    val_fast = next(line for line in axes.lines if line.get_label() == "fast val")
    assert list(val_fast.get_xdata()) == [23, 46, 69]
    assert list(val_fast.get_ydata()) == pytest.approx([0.2, 0.1, 0.2 / 3])

    (axes,) = build_figure(records, ["val/accuracy"]).axes
    assert len(axes.lines) == 2  # a full key: that split only


def test_export_writes_an_mlflow_store(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "mlruns"
    argv = ["runs", "export", "fast", "--format", "mlflow", str(dest), "--dir", str(root)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    exported = Path(out.split(" to ", 1)[1].splitlines()[0])
    assert (exported / "meta.yaml").is_file()
    assert (exported / "metrics" / "val" / "loss").read_text().count("\n") == 3
    assert "mlflow ui" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["runs", "show", "nope"],
        ["runs", "compare", "fast", "nope"],
        ["runs", "plot", "nope", "-o", "x.png"],
        ["runs", "export", "nope", "out"],
    ],
)
def test_a_run_not_found_is_one_line_naming_it_and_the_nearest_ids_with_status_2(
    root: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--dir", str(root)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "no run 'nope'" in err and "nearest ids:" in err and str(root) in err
    assert run_id(root, "fast") in err or run_id(root, "slow") in err


def test_an_unknown_metric_is_a_usage_error(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["runs", "plot", "slow", "--metric", "f1", "-o", "x.png", "--dir", str(root)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "no logged metric 'f1'" in err and "val/accuracy" in err


def test_a_name_or_prefix_matching_several_runs_picks_the_newest_and_names_the_others(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    older = run_id(root, "fast")
    time.sleep(0.01)
    newer = make_run(root, "fast", 0.2).id  # a second run named fast
    time.sleep(0.01)
    other = make_run(root, "fast-lr", 0.3).id  # newest, its id starts with "fast" too
    assert main(["runs", "show", "fast", "--dir", str(root)]) == 0
    captured = capsys.readouterr()
    assert f"id         {newer}" in captured.out and older not in captured.out
    assert newer in captured.err and older in captured.err  # which one, and the others
    assert other not in captured.err  # a name is not a prefix of another name
    assert main(["runs", "show", "fast-", "--dir", str(root)]) == 0  # an id prefix
    captured = capsys.readouterr()
    assert f"id         {other}" in captured.out and newer in captured.err

    tracking.run("digits", name="mlp", id="custom", dir=root).finish()
    time.sleep(0.01)
    tracking.run("digits", name="mlp", id="custom-2", dir=root).finish()
    assert main(["runs", "show", "mlp", "--dir", str(root)]) == 0  # by name
    captured = capsys.readouterr()
    assert "id         custom-2" in captured.out and "custom" in captured.err
    assert main(["runs", "show", "custom", "--dir", str(root)]) == 0  # an exact id wins
    captured = capsys.readouterr()
    assert "id         custom " in captured.out and captured.err == ""


def checkpoint_run(root: Path) -> tracking.Run:
    """A trainer-like run: 3 of 10 epochs, checkpoints filed as the tracking worker does."""
    run = tracking.run("digits", name="ckpt", config={"train": {"epochs": 10}}, dir=root)
    sink = tracking.LocalSink(run.dir)
    for epoch in range(3):  # the events' epoch is 0-based; the rows count epochs completed
        run.log({"epoch": epoch + 1, "val/accuracy": 0.5 + epoch / 10}, step=(epoch + 1) * 23)
        sha = f"{epoch:064d}"
        sink.apply(
            {
                "kind": "artifact",
                "name": "checkpoints",
                "type": "model",
                "files": [
                    {
                        "name": f"ckpt-{epoch}.pt",
                        "path": f"/x/ckpt-{epoch}.pt",
                        "sha256": sha,
                        "size": 1,
                    }
                ],
                "aliases": ["latest", "best"],
                "metadata": {"epoch": epoch, "iteration": (epoch + 1) * 23},
            }
        )
        if epoch == 1:
            sink.apply({"kind": "removed", "name": "checkpoints", "sha256": f"{0:064d}"})
    run.update_meta(epochs=3)
    run.finish("terminated", reason="no improvement", by="early-stop:es")
    return run


def test_show_lists_only_the_kept_checkpoints_with_their_epochs_counted_from_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = checkpoint_run(tmp_path / "runs")
    assert main(["runs", "show", run.id, "--dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[2]: line.split() for line in out.splitlines() if ".pt" in line}
    assert sorted(rows) == ["v1", "v2"]  # v0 was pruned
    assert rows["v1"][3] == "2/10" and rows["v2"][3] == "3/10"
    assert "1 pruned version not shown" in out
    assert "epochs     3/10" in out


def test_ls_and_compare_count_epochs_from_one_out_of_the_total(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    run = checkpoint_run(root)
    other = make_run(root, "fast", 0.1)
    assert main(["runs", "ls", "--dir", str(root)]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert lines["ckpt"][3] == "3/10" and lines["fast"][3] == "3/3"
    assert main(["runs", "compare", run.id, other.id, "--dir", str(root)]) == 0
    rows = {
        line.split()[0]: line.split()[1:]
        for line in capsys.readouterr().out.splitlines()
        if line.strip()
    }
    assert rows["epochs"] == ["3/10", "3/3"]


def test_show_describes_the_media_with_their_captions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with tracking.run("digits", name="media", dir=tmp_path) as run:
        run.log_image("prediction", [[0, 255], [255, 0]], caption="Model prediction", step=100)
        run.log_histogram("weights", [0.1, 0.2], bins=2, step=100)
    assert main(["runs", "show", run.id, "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "prediction" in line)
    assert "Model prediction" in line and "100" in line and "media/images/" in line
    assert "weights" in out


def test_a_run_stopped_mid_epoch_shows_the_epochs_it_completed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.tracking.local import LocalSink

    # As the tracking worker writes a run stopped in its 7th epoch: rows up to epoch 7 (the
    # step rows of the epoch in progress), then RUN_FINISHED's count of completed epochs.
    run = tracking.run("digits", name="stopped", config={"train": {"epochs": 30}}, dir=tmp_path)
    for epoch in range(1, 8):
        run.log({"train/loss": 1 / epoch, "epoch": epoch}, step=epoch * 10)
    sink = LocalSink(run.dir)
    sink.write(
        {
            "kind": "finish",
            "status": "terminated",
            "reason": "seen enough",
            "by": "web:host:1",
            "fields": {"epochs": 6, "iteration": 65},
            "time": time.time(),
            "key": "finished:x",
        }
    )
    sink.close()
    assert main(["runs", "ls", "--dir", str(tmp_path)]) == 0
    (row,) = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert row[2:4] == ["terminated", "6/30"]
