"""examples/plain_api.py: the API without the CLI, logging to a tracking run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

from ._run import EXAMPLES, epoch_values, printed

SCRIPT = EXAMPLES / "plain_api.py"


@pytest.fixture(scope="module")
def plain_api():
    """The script as a module, as `python examples/plain_api.py` would run it."""
    spec = importlib.util.spec_from_file_location("plain_api_example", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def accuracy_of(plain_api, checkpoint: Path) -> float:
    """The saved model's accuracy on the digits validation split, scored by scikit-learn."""
    x, y = load_digits(return_X_y=True)
    _, x_val, _, y_val = train_test_split(x / 16.0, y, test_size=0.2, random_state=0, stratify=y)
    model = plain_api.build_model(64)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["model"])
    with torch.no_grad():
        predicted = model(torch.tensor(x_val, dtype=torch.float32)).argmax(dim=1)
    return accuracy_score(y_val, predicted.numpy())


def test_plain_api_trains_checkpoints_and_logs_each_epoch(plain_api, capsys, tmp_path):
    args = ["train.epochs=3", "--tracking.dir", str(tmp_path / "runs"), "tracking.name=demo"]
    assert plain_api.main(args) == 0
    out = capsys.readouterr().out
    run_dir = Path(printed(r"^tracking run: (.+)$", out))
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("demo-")

    # One row per epoch at the trainer's iteration, holding what the epoch line printed.
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in rows] == [(23, 1), (46, 2), (69, 3)]
    printed_accuracy = epoch_values("val_accuracy", out)
    assert [round(r["val/accuracy"], 4) for r in rows] == printed_accuracy
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "completed" and meta["config"]["train"]["epochs"] == 3

    # The best checkpoint (2 kept by accuracy) holds the model of the best epoch.
    best = Path(printed(r"^best validation accuracy: [0-9.]+ in (.+)$", out))
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == sorted(
        f"checkpoint_{r['step']}_accuracy={r['val/accuracy']:.4f}.pt"
        for r in sorted(rows, key=lambda r: r["val/accuracy"])[-2:]
    )
    assert accuracy_of(plain_api, best) == pytest.approx(max(r["val/accuracy"] for r in rows))


def test_a_misspelt_key_is_refused_by_name(plain_api, tmp_path):
    with pytest.raises(SystemExit, match=r"unknown config key\(s\) \['train\.epoch'\]"):
        plain_api.main(["train.epoch=3", f"tracking.dir={tmp_path}"])
    assert not any(tmp_path.iterdir())
