"""Bad input to the commands: each exits non-zero with one clear line, and nothing already
written is damaged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from redis_server import free_port
from test_cli import EXAMPLE, run_main


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def test_missing_config_file_is_named(capsys, tmp_path):
    status, _, err = run_main(capsys, "run", tmp_path / "nope.yaml")
    assert status == 2
    assert "nope.yaml" in one_line(err)


def test_malformed_yaml_names_the_file(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train:\n  epochs: [1, 2\n")
    status, _, err = run_main(capsys, "run", path, f"run.dir={tmp_path}/runs")
    assert status == 2
    assert str(path) in err and "invalid YAML" in err
    assert not (tmp_path / "runs").exists()


def test_a_wrong_type_names_the_key_and_where_it_was_set(capsys, tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train:\n  epochs: ten\n")
    status, _, err = run_main(capsys, "run", path, f"run.dir={tmp_path}/runs")
    assert status == 2
    line = one_line(err)
    assert "train.epochs" in line and str(path) in line


@pytest.mark.parametrize("command", ["run", "worker"])
def test_an_unreachable_redis_is_one_line_with_the_password_hidden(capsys, tmp_path, command):
    url = f"redis://alice:s3cret@127.0.0.1:{free_port()}/0"
    if command == "run":
        args = ["run", EXAMPLE, f"run.dir={tmp_path}/runs", "--bus", url]
    else:
        args = ["worker", "metrics", "--bus", url, "--run", "some-run"]
    status, _, err = run_main(capsys, *args)
    assert status == 2
    line = one_line(err)
    assert "cannot reach the bus at redis://alice:***@127.0.0.1" in line
    assert "s3cret" not in err
    assert not (tmp_path / "runs").exists()  # no run directory for a run that never started


def test_a_resume_checkpoint_that_fails_its_checksum_is_refused_untouched(capsys, tmp_path):
    # In this process: the refusal is what is tested, not the start-up of a new interpreter.
    status, _, err = run_main(
        capsys,
        "run",
        EXAMPLE,
        "train.epochs=1",
        f"run.dir={tmp_path}/runs",
        "train.progress_bar=false",
    )
    assert status == 0, err
    run_dir = next((tmp_path / "runs").iterdir())
    checkpoints = run_dir / "checkpoints"
    manifest_before = (checkpoints / "manifest.json").read_text()
    latest = checkpoints / json.loads(manifest_before)["latest"]
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the sha256 in the manifest no longer holds
    latest.write_bytes(bytes(data))
    files_before = sorted(p.name for p in Path(checkpoints).iterdir())

    status, _, err = run_main(capsys, "run", "--resume", run_dir, "train.epochs=2")
    assert status == 2
    line = one_line(err)
    assert latest.name in line and "sha256" in line
    assert (checkpoints / "manifest.json").read_text() == manifest_before
    assert sorted(p.name for p in Path(checkpoints).iterdir()) == files_before
    assert latest.read_bytes() == bytes(data)
