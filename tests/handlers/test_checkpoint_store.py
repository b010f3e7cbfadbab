"""Atomic checkpoint files, verified loads and RNG state capture."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.checkpoint_store import (
    CheckpointError,
    RNGState,
    capture_rng_state,
    collect_state,
    load_checkpoint,
    restore_rng_state,
    restore_state,
    save_atomic,
)


class Unloadable:
    """A plain object: torch.save can pickle it but weights_only loading refuses it."""

    def __init__(self) -> None:
        self.x = 1


def test_save_reports_the_size_and_sha256_of_the_bytes_on_disk(tmp_path: Path) -> None:
    state = {"w": torch.arange(10.0), "step": 3, "names": ["a", "b"]}
    saved = save_atomic(state, tmp_path / "ck.pt")
    data = (tmp_path / "ck.pt").read_bytes()
    assert saved.path == tmp_path / "ck.pt"
    assert saved.size == len(data)
    assert saved.sha256 == hashlib.sha256(data).hexdigest()
    loaded = torch.load(saved.path, weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["names"] == ["a", "b"]
    assert torch.equal(load_checkpoint(saved.path, sha256=saved.sha256)["w"], state["w"])


def test_a_failing_save_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_atomic({"v": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"ck\.pt"):
        save_atomic({"v": torch.zeros(3), "bad": lambda: None}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ck.pt"
    save_atomic({"v": torch.ones(3)}, path)
    before = path.read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(CheckpointError, match="No space left"):
        save_atomic({"v": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_saving_into_a_missing_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nowhere"):
        save_atomic({}, tmp_path / "nowhere" / "ck.pt")


def test_a_truncated_file_gives_an_error_naming_it(tmp_path: Path) -> None:
    path = save_atomic({"w": torch.randn(100)}, tmp_path / "ck.pt").path
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)


def test_a_sha256_mismatch_gives_an_error_naming_the_file(tmp_path: Path) -> None:
    saved = save_atomic({"w": torch.randn(100)}, tmp_path / "ck.pt")
    data = bytearray(saved.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    saved.path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=re.escape(str(saved.path)) + ".*sha256"):
        load_checkpoint(saved.path, sha256=saved.sha256)


def test_a_file_that_needs_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"obj": Unloadable()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*weights_only"):
        load_checkpoint(path)


def test_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent"):
        load_checkpoint(tmp_path / "absent.pt")


def draws() -> tuple[float, float, float, float]:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(1).item()


def test_rng_states_survive_a_weights_only_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    draws()  # leave numpy with a cached gaussian, the awkward part of its state
    saved = save_atomic({"rng": RNGState().state_dict()}, tmp_path / "rng.pt")
    expected = draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    RNGState().load_state_dict(load_checkpoint(saved.path)["rng"])
    assert draws() == expected


def test_restore_rng_state_names_missing_parts() -> None:
    state = capture_rng_state()
    del state["numpy"]
    with pytest.raises(KeyError, match="numpy"):
        restore_rng_state(state)


def test_collect_and_restore_state_round_trip_a_model_and_optimizer() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = collect_state({"model": model, "opt": opt})
    other = torch.nn.Linear(3, 2)
    other_opt = torch.optim.Adam(other.parameters(), lr=0.5)
    restore_state({"model": other, "opt": other_opt}, state)
    assert torch.equal(other.weight, model.weight)
    assert other_opt.param_groups[0]["lr"] == 0.1
    assert torch.equal(
        other_opt.state_dict()["state"][0]["exp_avg"], opt.state[model.weight]["exp_avg"]
    )


def test_a_single_object_may_be_restored_from_its_bare_state() -> None:
    model, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    restore_state({"model": other}, model.state_dict())
    assert torch.equal(other.bias, model.bias)


def test_objects_without_state_methods_and_missing_keys_are_named() -> None:
    with pytest.raises(TypeError, match=r"'data'.*state_dict"):
        collect_state({"data": [1, 2]})
    with pytest.raises(KeyError, match="opt"):
        restore_state({"model": torch.nn.Linear(1, 1), "opt": RNGState()}, {"model": {}})
