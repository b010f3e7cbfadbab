"""The checkpoint manifest, its lock, the hashing and file-name rules, outside any Engine."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trainer import checkpoint_store, run_dir
from trainer.checkpoint_names import checkpoint_filename, incoming_path
from trainer.handlers import Checkpoint
from trainer.manifest import (
    LOCK_FILE,
    MANIFEST_FILE,
    ManifestError,
    file_sha256,
    manifest_lock,
    manifest_records,
    read_manifest,
    write_manifest,
    write_manifest_entries,
)
from trainer.retention import CheckpointRecord

REPO = Path(__file__).resolve().parents[2]


def test_manifest_names_latest_by_step_and_the_best_given(tmp_path: Path) -> None:
    saved = [("a.pt", 10, 0.5), ("c.pt", 30, math.nan), ("b.pt", 20, 0.9)]
    write_manifest(tmp_path, saved, {"a.pt": "aa", "b.pt": "bb"}, best="b.pt")
    manifest = read_manifest(tmp_path)
    assert manifest["latest"] == "c.pt" and manifest["best"] == "b.pt"
    assert [e["file"] for e in manifest["checkpoints"]] == ["a.pt", "c.pt", "b.pt"]
    assert manifest["checkpoints"][0] == {"file": "a.pt", "step": 10, "score": 0.5, "sha256": "aa"}
    assert manifest["checkpoints"][1]["sha256"] is None
    assert manifest_records(manifest)[2] == CheckpointRecord("b.pt", 20, 0.9)


def test_entries_and_extra_keys_survive_a_round_trip(tmp_path: Path) -> None:
    entries = [{"file": "x.pt", "step": 3, "epoch": 0, "ready_id": "R1"}]
    written = write_manifest_entries(tmp_path, entries, best=None, extra={"handled": ["R1"]})
    assert read_manifest(tmp_path) == written
    assert written["handled"] == ["R1"] and written["latest"] == "x.pt"
    assert written["checkpoints"] == [
        {"file": "x.pt", "step": 3, "epoch": 0, "ready_id": "R1", "score": None, "sha256": None}
    ]
    with pytest.raises(ValueError, match="'file' and 'step'"):
        write_manifest_entries(tmp_path, [{"file": "y.pt"}], best=None)


def test_an_empty_manifest_has_no_latest_and_no_best(tmp_path: Path) -> None:
    write_manifest(tmp_path, [], {}, best=None)
    assert read_manifest(tmp_path) == {"latest": None, "best": None, "checkpoints": []}
    assert read_manifest(tmp_path / "nowhere", missing_ok=True)["checkpoints"] == []


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "no checkpoint manifest at"), ("{", "is not valid JSON"), ("[]", "'checkpoints'")],
)
def test_an_unreadable_manifest_is_refused_naming_the_file(
    tmp_path: Path, content: str | None, fragment: str
) -> None:
    if content is not None:
        (tmp_path / MANIFEST_FILE).write_text(content)
    with pytest.raises(ManifestError, match=fragment) as info:
        read_manifest(tmp_path)
    assert str(tmp_path / MANIFEST_FILE) in str(info.value)
    # --resume still reports it as a ResumeError, with the same words.
    with pytest.raises(run_dir.ResumeError, match=fragment):
        run_dir.read_manifest(tmp_path)


def test_old_import_places_still_work() -> None:
    from trainer import manifest

    assert run_dir.write_manifest is manifest.write_manifest
    assert run_dir.write_json_atomic is manifest.write_json_atomic
    assert run_dir.MANIFEST_FILE == manifest.MANIFEST_FILE
    assert checkpoint_store.file_sha256 is manifest.file_sha256


def test_file_sha256_is_the_hash_save_atomic_reports(tmp_path: Path) -> None:
    saved = checkpoint_store.save_atomic({"w": torch.arange(5)}, tmp_path / "c.pt")
    assert file_sha256(saved.path) == saved.sha256
    assert saved.sha256 == hashlib.sha256(saved.path.read_bytes()).hexdigest()


_INCREMENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from trainer.manifest import manifest_lock, read_manifest, write_manifest_entries

    directory = Path(sys.argv[1])
    for _ in range(int(sys.argv[2])):
        with manifest_lock(directory):
            manifest = read_manifest(directory, missing_ok=True)
            count = manifest.get("count", 0)
            write_manifest_entries(directory, [], best=None, extra={"count": count + 1})
    """
)


def test_the_lock_serialises_read_modify_write_across_processes(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", _INCREMENT, str(tmp_path), "25"], cwd=REPO)
        for _ in range(3)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert json.loads((tmp_path / MANIFEST_FILE).read_text())["count"] == 75
    assert (tmp_path / LOCK_FILE).exists()


def test_the_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), manifest_lock(tmp_path):
        raise RuntimeError("boom")
    with manifest_lock(tmp_path):  # would block forever if the lock were still held
        pass


def test_manifest_and_names_load_without_torch() -> None:
    code = (
        "import sys, trainer.manifest, trainer.checkpoint_names, trainer.retention; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


class _NoSaver:
    def __call__(self, checkpoint: object, filename: str) -> None:
        raise AssertionError("not called")

    def remove(self, filename: str) -> None:
        raise AssertionError("not called")


@pytest.mark.parametrize(
    ("prefix", "score_name", "step", "score", "expected"),
    [
        ("", None, 12, None, "model_12.pt"),
        ("run", None, 3, None, "run_model_3.pt"),
        ("best", "acc", 2, 0.9, "best_model_2_acc=0.9000.pt"),
        ("", "acc", None, 0.123456, "model_acc=0.1235.pt"),
        ("", None, None, 0.5, "model_0.5000.pt"),
        ("", "acc", 7, 3, "model_7_acc=3.pt"),
        ("", "loss", 30, -0.25, "model_30_loss=-0.2500.pt"),
        ("", "acc", 4, math.nan, "model_4.pt"),
        ("", "acc", None, math.nan, "model_acc=nan.pt"),
    ],
)
def test_the_name_rule_is_the_checkpoint_handlers(
    prefix: str, score_name: str | None, step: int | None, score: float | None, expected: str
) -> None:
    assert checkpoint_filename("model", step, score, prefix=prefix, score_name=score_name) == (
        expected
    )
    handler = Checkpoint(
        {"model": torch.nn.Linear(1, 1)},
        _NoSaver(),
        filename_prefix=prefix,
        score_name=score_name,
    )
    assert handler._filename("model", step, score) == expected


def test_incoming_files_sit_in_a_hidden_subdirectory(tmp_path: Path) -> None:
    assert incoming_path(tmp_path, "checkpoint", 40) == tmp_path / ".incoming" / "checkpoint_40.pt"
