"""A user's script training with HF's Trainer and BusTrainerCallback: `python hf_program.py JSON`.

The model is built from a config object (nothing is downloaded): a small MLP as a
`PreTrainedModel` with its own `PretrainedConfig`, on scikit-learn's digits. Run alone or under
`torchrun` (each rank runs this). What the run did is written to `<out>/rank<r>.json`.

JSON keys: bus, run_id, out, epochs, lr, seed, barrier, stop_sync_every, step_delay (s per step,
to pace a run that a test steers), secret_of (rank -> secret), gate ({"rank", "step"}: that
rank's step waits until its bridge has seen a stop, so the stop is seen during that step),
config (joins RUN_STARTED's), save_strategy, eval (bool).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from trainer.adapters.hf import BusTrainerCallback

GATE_TIMEOUT = 60.0  # a hang guard: the test sends the stop long before


class DigitsConfig(PretrainedConfig):
    """The MLP's settings, as a Hugging Face model config."""

    model_type = "digits-mlp"

    def __init__(self, hidden: int = 32, num_labels: int = 10, **kwargs: Any) -> None:
        self.hidden = hidden
        super().__init__(num_labels=num_labels, **kwargs)


class DigitsMLP(PreTrainedModel):
    """64 pixels -> hidden -> 10 classes; returns {"loss", "logits"} as HF models do."""

    config_class = DigitsConfig

    def __init__(self, config: DigitsConfig) -> None:
        super().__init__(config)
        self.net = nn.Sequential(
            nn.Linear(64, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.num_labels)
        )
        self.post_init()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, Any]:
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(logits, labels)
        return out


def digits() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, val) examples: pixels scaled to [0, 1], a fixed split."""
    x, y = load_digits(return_X_y=True)
    rows = [
        {"x": torch.as_tensor(p / 16.0, dtype=torch.float32), "labels": int(label)}
        for p, label in zip(x, y, strict=True)
    ]
    return rows[:1400], rows[1400:]


def accuracy(prediction: Any) -> dict[str, float]:
    """HF's compute_metrics: the share of argmax predictions equal to the labels."""
    logits, labels = prediction.predictions, prediction.label_ids
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == labels))}


class Pace(TrainerCallback):
    """Slow each step down (a test steering the run must see it under way), and the gate."""

    def __init__(self, spec: dict[str, Any], bus: BusTrainerCallback, rank: int) -> None:
        self.delay = float(spec.get("step_delay", 0.0))
        gate = spec.get("gate") or {}
        self.gate_step = gate.get("step") if gate.get("rank", 0) == rank else None
        self.bus = bus

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.delay:
            time.sleep(self.delay)
        if state.global_step == self.gate_step:
            control_state = self.bus.bridge.run.control  # type: ignore[union-attr]
            deadline = time.monotonic() + GATE_TIMEOUT
            while control_state.stop is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no stop seen within {GATE_TIMEOUT} s at the gate")
                time.sleep(0.005)


def main(spec: dict[str, Any]) -> None:
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(spec.get("seed", 0))
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.pid").write_text(str(os.getpid()))  # for the test's teardown
    train, val = digits()
    args = TrainingArguments(
        str(out / "hf"),
        per_device_train_batch_size=64,
        per_device_eval_batch_size=512,
        num_train_epochs=spec.get("epochs", 3),
        learning_rate=spec.get("lr", 5e-3),
        eval_strategy="epoch" if spec.get("eval", True) else "no",
        logging_steps=spec.get("logging_steps", 5),
        save_strategy=spec.get("save_strategy", "no"),
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        seed=spec.get("seed", 0),
        ddp_timeout=60,  # a rank left behind fails the collective in a minute, not in 30
        dataloader_num_workers=0,
    )
    bus = BusTrainerCallback(
        spec.get("bus"),
        spec.get("run_id"),
        config=spec.get("config"),
        barrier=spec.get("barrier", False),
        stop_sync_every=spec.get("stop_sync_every", 10),
        secret=(spec.get("secret_of") or {}).get(str(rank)),
    )
    model = DigitsMLP(DigitsConfig(hidden=32))
    with bus:  # a failure in training publishes EXCEPTION_RAISED and a failed RUN_FINISHED
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=val,
            compute_metrics=accuracy,
            callbacks=[Pace(spec, bus, rank), bus],
        )
        trainer.train()
    end = bus.end
    assert end is not None
    folders = sorted(p.name for p in (out / "hf").glob("checkpoint-*"))
    result = {
        "rank": rank,
        "run_id": bus.run_id,
        "global_step": trainer.state.global_step,
        "status": end.status,
        "by": end.by,
        "reason": end.reason,
        "epochs": end.epochs,
        "iteration": end.iteration,
        "checkpoints": folders,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
