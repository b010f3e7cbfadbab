"""`trainer run` end to end on the digits example: outputs, resume, and errors naming the key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sklearn.metrics import accuracy_score

from trainer import config
from trainer.cli import main
from trainer.tasks.digits import digits_tensors
from trainer.tasks.mlp import mlp
from trainer.tracking.reader import read_run

pytestmark = pytest.mark.heavy(150)  # seconds in the suite: scheduled first

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "digits.yaml"
# Checkpoints every 10 iterations (23 per epoch), so some fall in the middle of an epoch.
EVERY_10 = ["checkpoint.unit=iteration", "checkpoint.every=10", "checkpoint.n_saved=null"]


def trainer_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `trainer ...` as its own process, the way a user does."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "trainer.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def printed(pattern: str, out: str) -> str:
    match = re.search(pattern, out, re.MULTILINE)
    assert match, f"{pattern!r} not in output:\n{out}"
    return match.group(1)


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoints" / "manifest.json").read_text())


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    latest = manifest(run_dir)["latest"]
    return torch.load(run_dir / "checkpoints" / latest, weights_only=True)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"weights differ in {name}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, str]:
    """Three epochs of the example, uninterrupted, checkpointing every 10 iterations."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    done = trainer_cli("run", EXAMPLE, "train.epochs=3", *EVERY_10, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return cwd / printed(r"^outputs: (.+)$", done.stdout), done.stdout


def test_run_prints_accuracy_and_fills_the_run_directory(uninterrupted):
    run_dir, out = uninterrupted
    accuracy = float(printed(r"^final validation accuracy: ([0-9.]+)", out))
    assert accuracy > 0.8
    assert run_dir.parent.name == "runs" and run_dir.name.startswith("digits-")

    saved = config.load(run_dir / "config.yaml")
    assert saved == config.load(EXAMPLE, ["train.epochs=3", *EVERY_10])

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert (metrics["epochs"], metrics["iteration"]) == (3, 69)
    assert round(metrics["val"]["accuracy"], 4) == accuracy

    # The reported accuracy is the saved model's, scored independently on the same split.
    model = mlp(64, [128], 10)
    model.load_state_dict(final_weights(run_dir))
    _, _, x_val, y_val = digits_tensors(0.2, seed=0)
    with torch.no_grad():
        predicted = model(x_val).argmax(dim=1)
    assert accuracy_score(y_val.numpy(), predicted.numpy()) == pytest.approx(
        metrics["val"]["accuracy"]
    )

    listed = manifest(run_dir)
    files = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert files == sorted(e["file"] for e in listed["checkpoints"])
    assert [e["step"] for e in listed["checkpoints"]] == [10, 20, 30, 40, 50, 60, 69]
    assert listed["best"] == listed["latest"]  # only epoch ends have a score; the last is best

    # The embedded tracking worker wrote the same directory: every epoch's printed numbers, the
    # kept checkpoints as artifacts, and how the run ended.
    tracked = read_run(run_dir)
    assert tracked.meta["status"] == "completed" and tracked.meta["project"] == "digits"
    printed_epochs = re.findall(
        r"^epoch (\d+)/3  train_loss ([0-9.]+)  val_loss ([0-9.]+)  val_accuracy ([0-9.]+)$",
        out,
        re.MULTILINE,
    )
    rows = {(r["epoch"], "val" if "val/loss" in r else "train"): r for r in tracked.rows}
    assert len(rows) == len(tracked.rows) == 6
    for epoch, train_loss, val_loss, val_accuracy in printed_epochs:
        train, val = rows[(int(epoch), "train")], rows[(int(epoch), "val")]
        assert f"{train['train/loss']:.4f}" == train_loss
        assert (f"{val['val/loss']:.4f}", f"{val['val/accuracy']:.4f}") == (val_loss, val_accuracy)
        assert train["step"] == val["step"] == 23 * int(epoch)
    kept = tracked.artifacts["checkpoints"]
    by_version = {v["version"]: v["files"][0]["name"] for v in kept["versions"]}
    assert by_version[kept["aliases"]["latest"]] == listed["latest"]


def test_resume_mid_epoch_ends_with_the_uninterrupted_weights(uninterrupted, tmp_path):
    run_dir, _ = uninterrupted
    (step_30,) = [e["file"] for e in manifest(run_dir)["checkpoints"] if e["step"] == 30]
    resumed_dir = tmp_path / "resumed"
    done = trainer_cli(
        "run",
        EXAMPLE,
        "train.epochs=3",
        "--resume",
        run_dir / "checkpoints" / step_30,
        "--run-dir",
        resumed_dir,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    epochs_run = re.findall(r"^epoch (\d+)/3", done.stdout, re.MULTILINE)
    assert epochs_run == ["2", "3"]  # iteration 30 lies in epoch 2: epoch 1 is not redone
    assert re.search(r"^resuming from .+ \(in epoch 2/3, after iteration 30\)$", done.stdout, re.M)
    metrics = json.loads((resumed_dir / "metrics.json").read_text())
    assert metrics["iteration"] == 69
    assert_same_weights(final_weights(resumed_dir), final_weights(run_dir))


def test_resume_latest_of_a_shorter_run_with_its_saved_config(uninterrupted, tmp_path):
    run_dir, _ = uninterrupted
    first = trainer_cli("run", EXAMPLE, "train.epochs=2", "run.dir=short", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    short_dir = tmp_path / printed(r"^outputs: (.+)$", first.stdout)
    first_duration = json.loads((short_dir / "metrics.json").read_text())["duration_s"]
    down = 3.0
    time.sleep(down)  # the run is down for a while: its duration must not count it

    # No CONFIG: the newest run named "digits" under run.dir, with the config it saved.
    again = trainer_cli(
        "run", "--resume", "latest", "run.dir=short", "train.epochs=3", cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert tmp_path / printed(r"^outputs: (.+)$", again.stdout) == short_dir
    assert re.findall(r"^epoch (\d+)/3", again.stdout, re.MULTILINE) == ["3"]
    assert_same_weights(final_weights(short_dir), final_weights(run_dir))
    assert config.load(short_dir / "config.yaml").train.epochs == 3
    # The duration sums the time spent training, in metrics.json and in the tracked run.json.
    duration = json.loads((short_dir / "metrics.json").read_text())["duration_s"]
    tracked = read_run(short_dir).meta
    assert tracked["duration_s"] == pytest.approx(duration)
    assert first_duration < duration < tracked["finished_at"] - tracked["started_at"] - down


def run_main(capsys, *args: str | Path) -> tuple[int, str, str]:
    """Run the CLI in this process (for fast error cases); returns (status, stdout, stderr)."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("train.epocs=3", "train.epocs"),
        ("train.epochs=zero", "train.epochs"),
        ("optim.lr=-1", "optim.lr"),
        ("early_stopping.metric=f1", "early_stopping.metric"),
        ("data.name=mnist", "data.name"),
    ],
)
def test_bad_key_or_value_is_named_and_nothing_is_written(capsys, tmp_path, override, key):
    status, _, err = run_main(capsys, "run", EXAMPLE, f"run.dir={tmp_path}/runs", override)
    assert status == 2
    assert err.startswith("trainer: error:") and key in err
    assert not (tmp_path / "runs").exists()


def test_bad_key_in_the_file_names_key_and_file(capsys, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("model:\n  hiden: [32]\n")
    status, _, err = run_main(capsys, "run", path)
    assert status == 2
    assert "'model.hiden'" in err and str(path) in err and "'model.hidden'" in err


def test_resume_errors_are_clear(capsys, tmp_path):
    status, _, err = run_main(
        capsys, "run", EXAMPLE, f"run.dir={tmp_path}", "--resume", "best", "--run-dir", tmp_path
    )
    assert status == 2 and "manifest" in err
    status, _, err = run_main(capsys, "run", "--resume", tmp_path / "missing.pt")
    assert status == 2 and "missing.pt" in err


def test_resume_with_fewer_epochs_than_done_names_train_epochs(capsys, uninterrupted):
    run_dir, _ = uninterrupted
    status, _, err = run_main(capsys, "run", "--resume", run_dir, "train.epochs=2")
    assert status == 2 and "train.epochs" in err and "3 epochs" in err


def test_run_dir_of_another_run_is_refused(capsys, uninterrupted):
    run_dir, _ = uninterrupted
    status, _, err = run_main(capsys, "run", EXAMPLE, "--run-dir", run_dir)
    assert status == 2 and "already holds checkpoints" in err


def test_defaults_without_config_and_early_stopping(capsys, tmp_path):
    # Patience 1 with an unreachable min_delta: stop after the second validation.
    status, out, _ = run_main(
        capsys,
        "run",
        "train.epochs=4",
        f"run.dir={tmp_path}",
        "early_stopping.patience=1",
        "early_stopping.min_delta=0.5",
        "checkpoint.every=null",
        "train.progress_bar=false",
    )
    assert status == 0
    # The embedded early-stop voter stopped it, and says so.
    assert re.search(r"\(stopped by early-stop-\S+: .*without improvement\)", out), out
    run_dir = Path(printed(r"^outputs: (.+)$", out))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["status"], metrics["epochs"]) == ("terminated", 2)
    assert metrics["by"].startswith("early-stop-")
    assert not (run_dir / "checkpoints").exists()
    assert config.load(run_dir / "config.yaml").data.name == "digits"


def test_config_command_prints_yaml_that_loads_back(capsys, tmp_path):
    status, out, _ = run_main(capsys, "config", EXAMPLE, "optim.lr=0.5")
    assert status == 0
    path = tmp_path / "printed.yaml"
    path.write_text(out)
    assert config.load(path) == config.load(EXAMPLE, ["optim.lr=0.5"])


def test_resume_latest_and_best_read_the_manifest(tmp_path):
    from trainer.run_dir import resolve_resume, write_manifest

    run_dir = tmp_path / "runs" / "exp-20240101-000000-abcd"
    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("")
    saved = [("a.pt", 10, 0.9), ("b.pt", 20, 0.7), ("c.pt", 30, None)]
    for name, _, _ in saved:
        (checkpoints / name).write_bytes(b"")
    write_manifest(checkpoints, saved, {"a.pt": "aa"}, best="a.pt")

    best = resolve_resume("best", None, tmp_path / "runs", "exp")
    assert (best.checkpoint, best.sha256, best.run_dir) == (checkpoints / "a.pt", "aa", run_dir)
    assert resolve_resume("latest", run_dir, "elsewhere", "x").checkpoint == checkpoints / "c.pt"
    assert resolve_resume(str(run_dir), None, "", "").checkpoint == checkpoints / "c.pt"
    by_path = resolve_resume(str(checkpoints / "b.pt"), None, "", "")
    assert (by_path.checkpoint, by_path.run_dir) == (checkpoints / "b.pt", run_dir)


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `directory` with its mtime and bytes: what "nothing modified" compares."""
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def copied_run(uninterrupted, tmp_path: Path) -> Path:
    """A copy of the uninterrupted run's directory, for a test to damage."""
    import shutil

    run_dir, _ = uninterrupted
    copy = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy


def by_step(run_dir: Path, step: int) -> Path:
    (name,) = [e["file"] for e in manifest(run_dir)["checkpoints"] if e["step"] == step]
    return run_dir / "checkpoints" / name


def test_resume_latest_truncated_names_it_and_the_intact_one_to_use(uninterrupted, tmp_path):
    run_dir = copied_run(uninterrupted, tmp_path)
    latest = by_step(run_dir, 69)
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    before = snapshot(run_dir)
    done = trainer_cli(
        "run", "--resume", "latest", "--run-dir", run_dir, "train.epochs=4", cwd=tmp_path
    )
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    assert str(latest) in line and "damaged" in line
    assert f"resume from {by_step(run_dir, 60)} instead" in line
    assert snapshot(run_dir) == before


def test_resume_of_a_garbage_file_names_it_and_the_newest_intact_one(uninterrupted, tmp_path):
    run_dir = copied_run(uninterrupted, tmp_path)
    garbage = by_step(run_dir, 60)
    garbage.write_bytes(os.urandom(5000))
    before = snapshot(run_dir)
    done = trainer_cli("run", "--resume", garbage, "train.epochs=4", cwd=tmp_path)
    assert done.returncode != 0
    (line,) = done.stderr.strip().splitlines()
    assert str(garbage) in line and "damaged" in line
    assert f"resume from {by_step(run_dir, 69)} instead" in line
    assert snapshot(run_dir) == before


def test_a_damaged_checkpoint_with_no_intact_one_says_so(capsys, tmp_path):
    lone = tmp_path / "lone" / "checkpoint_5.pt"
    lone.parent.mkdir()
    lone.write_bytes(b"PK\x03\x04 not really a zip archive")
    status, _, err = run_main(capsys, "run", "--resume", lone, f"run.dir={tmp_path}/runs")
    assert status == 2
    (line,) = err.strip().splitlines()
    assert str(lone) in line and "damaged" in line and "no other checkpoint" in line
    assert not (tmp_path / "runs").exists()

    torch.save(101, lone)  # sound, but not a checkpoint of a run
    status, _, err = run_main(capsys, "run", "--resume", lone, f"run.dir={tmp_path}/runs")
    assert status == 2
    (line,) = err.strip().splitlines()
    assert str(lone) in line and "of type int" in line


def test_resume_of_a_finished_run_says_there_is_nothing_to_do(uninterrupted, tmp_path):
    run_dir = copied_run(uninterrupted, tmp_path)
    before = snapshot(run_dir)
    done = trainer_cli("run", "--resume", "latest", "--run-dir", run_dir, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.strip().splitlines()
    assert line.startswith("nothing to do:") and "3/3 epochs" in line and "train.epochs" in line
    assert snapshot(run_dir) == before
    # Raising train.epochs trains on: test_resume_latest_of_a_shorter_run_with_its_saved_config.
