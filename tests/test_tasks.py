"""trainer.tasks: the digits split, the MLP, the epoch-seeded sampler and the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from trainer import config
from trainer.config import ConfigError
from trainer.tasks import EpochShuffleSampler, build_data, build_model, build_optimizer
from trainer.tasks.digits import digits_tensors
from trainer.tasks.split_cache import CACHE_DIR_ENV


def test_digits_split_is_stratified_seeded_and_scaled():
    x, y = load_digits(return_X_y=True)
    x_train, _, x_val, y_val = digits_tensors(0.2, seed=3)
    assert len(x_train) + len(x_val) == len(x) and x_train.shape[1] == 64
    assert len(x_val) == int(np.ceil(0.2 * len(x)))
    assert float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0  # pixels are 0..16
    # Every class keeps its share in the validation split (stratified).
    shares = np.bincount(y_val.numpy(), minlength=10) / len(y_val)
    assert np.allclose(shares, np.bincount(y, minlength=10) / len(y), atol=0.01)
    again = digits_tensors(0.2, seed=3)
    assert torch.equal(again[2], x_val) and not torch.equal(digits_tensors(0.2, seed=4)[2], x_val)


@pytest.mark.parametrize("name", ["digits", "diabetes"])
def test_a_cached_split_is_scikit_learns_and_a_torn_cache_is_rebuilt(name, tmp_path, monkeypatch):
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    from trainer.tasks.diabetes import diabetes_tensors

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    tensors = {"digits": digits_tensors, "diabetes": diabetes_tensors}[name]
    if name == "digits":
        x, y = load_digits(return_X_y=True)
        reference = train_test_split(x, y, test_size=0.25, random_state=7, stratify=y)[1]
        scaled = reference / 16.0
    else:
        x, y = load_diabetes(return_X_y=True)
        x_train, x_val = train_test_split(x, y, test_size=0.25, random_state=7)[:2]
        scaled = (x_val - x_train.mean(axis=0)) / x_train.std(axis=0)
    first = tensors(0.25, seed=7)  # built by scikit-learn, then stored
    (stored,) = (tmp_path / "cache").glob(f"{name}-split-*.npz")
    cached = tensors(0.25, seed=7)  # read back
    for got in (first, cached):
        assert np.allclose(got[2].numpy(), scaled, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(first, cached, strict=True))
    # Another seed is another split; a torn file is built again, and replaced whole.
    assert not torch.equal(tensors(0.25, seed=8)[2], first[2])
    stored.write_bytes(stored.read_bytes()[:100])
    assert all(torch.equal(a, b) for a, b in zip(tensors(0.25, seed=7), first, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(tensors(0.25, seed=7), first, strict=True))
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".npz", ".npz"]


def test_an_unwritable_cache_only_costs_the_time(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_DIR_ENV, str(blocker / "cache"))
    x_train, _, x_val, _ = digits_tensors(0.2, seed=3)
    assert len(x_train) + len(x_val) == len(load_digits().target)


def test_sampler_order_depends_only_on_seed_and_epoch():
    epoch = [0]
    sampler = EpochShuffleSampler(50, seed=7, epoch_fn=lambda: epoch[0])
    first = list(sampler)
    assert sorted(first) == list(range(50))
    assert list(sampler) == first  # same epoch, same order, however often it is read
    epoch[0] = 1
    second = list(sampler)
    assert second != first and sorted(second) == list(range(50))
    fresh = EpochShuffleSampler(50, seed=7, epoch_fn=lambda: 1)
    assert list(fresh) == second  # a resumed process replays the epoch's order


def test_digits_job_builds_from_config():
    cfg = config.from_dotlist(["model.hidden=[32,16]", "data.batch_size=100", "optim.name=sgd"])
    data = build_data(cfg, lambda: 0)
    model = build_model(cfg, data.in_features, data.num_classes)
    x, y = next(iter(data.train))
    assert x.shape == (100, 64) and y.shape == (100,)
    assert model(x).shape == (100, 10)
    widths = [m.out_features for m in model if isinstance(m, torch.nn.Linear)]
    assert widths == [32, 16, 10]
    assert isinstance(build_optimizer(cfg, model.parameters()), torch.optim.SGD)


def test_import_path_names_a_user_model():
    cfg = config.from_dotlist(["model.name=torch.nn:Bilinear"])
    with pytest.raises(TypeError):  # found and called: Bilinear does not take our arguments
        build_model(cfg, 64, 10)
    cfg = config.from_dotlist(["model.name=no_such_module:build"])
    with pytest.raises(ConfigError, match=r"model\.name") as err:
        build_model(cfg, 64, 10)
    assert err.value.key == "model.name"
