"""Checkpoints that are directories: their digest, and the checkpoint worker's filing of them."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from trainer.checkpoint_names import INCOMING_DIR
from trainer.checkpoint_tree import checkpoint_digest, link_tree
from trainer.manifest import read_manifest
from trainer.retention import RetentionPolicy
from workers.checkpoint_files import Ready, VerificationError, file_checkpoint, verify


def folder(root: Path, files: dict[str, bytes]) -> Path:
    """A directory holding `files` (relative path -> bytes)."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


FILES = {
    "model.safetensors": b"weights" * 1000,
    "optimizer.pt": b"adam",
    "trainer_state.json": b'{"global_step": 7}',
    "sub/B.bin": b"upper case sorts first",
    "sub/a.bin": b"",
}


def test_a_directorys_digest_is_what_the_documented_shell_pipeline_prints(tmp_path: Path) -> None:
    root = folder(tmp_path / "checkpoint-7", FILES)
    # The reference: coreutils, as the module's docstring tells a client in another language.
    pipeline = "find . -type f -printf '%P\\0' | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum"
    printed = subprocess.run(
        ["sh", "-c", pipeline], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()[0]
    size, sha256 = checkpoint_digest(root)
    assert sha256 == printed
    assert size == sum(len(content) for content in FILES.values())


def test_a_files_digest_is_its_size_and_the_sha256_of_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    path.write_bytes(b"abc")
    assert checkpoint_digest(path) == (3, hashlib.sha256(b"abc").hexdigest())


def ready_for(path: Path, iteration: int, **changes: object) -> Ready:
    size, sha256 = checkpoint_digest(path)
    fields = {"size": size, "sha256": sha256, **changes}
    return Ready(
        id=f"r{iteration}",
        path=path,
        epoch=0,
        iteration=iteration,
        name="checkpoint",
        **fields,  # type: ignore[arg-type]
    )


def test_linked_directories_are_verified_filed_and_pruned_whole(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    policy = RetentionPolicy(keep_last=1, keep_best=0)
    framework = []
    for step in (5, 10):
        # As the HF adapter announces them: links to the framework's folder under .incoming/.
        own = folder(tmp_path / "out" / f"checkpoint-{step}", {**FILES, "step": str(step).encode()})
        framework.append((own, checkpoint_digest(own)))
        linked = ckpt_dir / INCOMING_DIR / f"checkpoint_{step}"
        link_tree(own, linked)
        ready = ready_for(linked, step)
        verify(ready)
        filed = file_checkpoint(ckpt_dir, ready, None, policy, None)
        assert filed is not None and filed.saved["file"] == f"checkpoint_{step}"
    # The last one kept (a directory, whole), the first pruned (gone, whole).
    assert not (ckpt_dir / "checkpoint_5").exists()
    kept = ckpt_dir / "checkpoint_10"
    assert kept.is_dir() and (kept / "step").read_bytes() == b"10"
    assert read_manifest(ckpt_dir)["latest"] == "checkpoint_10"
    # The framework's own folders are untouched: the filed ones were links.
    for own, digest in framework:
        assert checkpoint_digest(own) == digest


def test_a_directory_changed_after_its_announcement_is_refused(tmp_path: Path) -> None:
    root = folder(tmp_path / "checkpoint-3", FILES)
    ready = ready_for(root, 3)
    (root / "optimizer.pt").write_bytes(b"adamw")  # one byte more: the size says so
    with pytest.raises(VerificationError, match="bytes but the trainer announced"):
        verify(ready)
    ready = ready_for(root, 3)
    (root / "optimizer.pt").write_bytes(b"adamx")  # same size, other bytes
    with pytest.raises(VerificationError, match="sha256"):
        verify(ready)
