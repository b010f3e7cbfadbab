"""The Hugging Face adapter: real Trainer runs (hf_program.py) on a private Redis, with the
workers as separate processes, read back from the streams.

1. the early-stop worker stops a run at the epoch its patience says, the tracking store has
   every epoch, `trainer runs show` shows it;
2. a signed TERMINATE stops the run at the step it was seen in, after HF saved that step;
   forged ones are ignored;
3. two ranks under torchrun (gloo, CPU): a stop only one rank sees stops both at one step;
4. a CHECKPOINT_REQUEST makes HF save, and the checkpoint worker files that folder;
5. every message of these runs passes the catalogue's check.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The test extra brings the framework: without it these tests fail rather than skip.
import transformers  # noqa: F401

pytestmark = pytest.mark.heavy(60)  # seconds in the suite: scheduled first

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "stack") not in sys.path:
    sys.path.insert(0, str(TESTS / "stack"))

from stack_harness import Proc, Stack, eventually  # noqa: E402

from bus import Envelope, encode, sign  # noqa: E402
from bus.messages import CONTROL, EVENTS, REGISTRY, check_data  # noqa: E402
from trainer.checkpoint_tree import checkpoint_digest  # noqa: E402
from trainer.engine import Engine  # noqa: E402
from trainer.handlers import EarlyStopping  # noqa: E402

PROGRAM = Path(__file__).resolve().parent / "hf_program.py"
RUN_S = 180.0  # hang guard of a whole run; never a statement about speed


@pytest.fixture
def stack(redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    """A Stack on the session's private Redis (flushed); kills the ranks torchrun started."""
    s = Stack(redis_url, tmp_path)
    yield s
    s.close()
    for pid_file in tmp_path.glob("**/rank*.pid"):  # torchrun puts each rank in its own session
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def hf_run(stack: Stack, run_id: str, name: str = "hf", **spec: Any) -> Proc:
    """hf_program.py on the stack's Redis as run `run_id`, writing into `<cwd>/<name>`."""
    spec = {"bus": stack.url, "run_id": run_id, "out": str(stack.cwd / name), **spec}
    return stack.start_script(name, PROGRAM, json.dumps(spec))


def result(stack: Stack, name: str = "hf", rank: int = 0) -> dict[str, Any]:
    """What hf_program.py wrote of its run."""
    return json.loads((stack.cwd / name / f"rank{rank}.json").read_text())


def check_every_message(stack: Stack, run_id: str) -> list[Envelope]:
    """Test 5: the run's events, registry entries and control, each against the catalogue."""
    events = stack.events(run_id)
    for env in events:
        check_data(env.type, env.data, topic=EVENTS)
    for env in stack.envelopes(stack.topics.registry()):
        check_data(env.type, env.data, topic=REGISTRY)
    for env in stack.envelopes(stack.topics.control(run_id)):
        check_data(env.type, env.data, topic=CONTROL)
    assert events, f"run {run_id} published nothing"
    return events


def joined(stack: Stack, run_id: str, *kinds: str) -> None:
    """Wait until a worker of each kind has joined the run (before its trainer starts)."""

    def kinds_in() -> bool:
        control = stack.envelopes(stack.topics.control(run_id))
        return set(kinds) <= {e.data["kind"] for e in control if e.type == "WORKER_JOINED"}

    eventually(kinds_in, RUN_S, f"workers {kinds} to join run {run_id}")


def control(stack: Stack, run_id: str, env: Envelope) -> None:
    """Append `env` to the run's control stream, as any client would."""
    stack.raw().xadd(stack.topics.control(run_id), {"env": encode(env)})


def command(type_: str, run_id: str, source: str, reason: str = "from the test") -> Envelope:
    return Envelope(type=type_, run_id=run_id, source=source, data={"reason": reason})


def split_metrics(events: list[Envelope], split: str) -> dict[int, dict[str, float]]:
    """Each EPOCH_COMPLETED's metrics of `split`, by the (train) epoch the envelope carries."""
    return {
        e.epoch: e.data["metrics"]
        for e in events
        if e.type == "EPOCH_COMPLETED" and e.data["split"] == split
    }


def in_process_stop_epoch(scores: list[float], patience: int, min_delta: float) -> int | None:
    """The 0-indexed epoch at which in-process EarlyStopping fed `scores` terminates."""
    engine = Engine(lambda engine, batch: None)
    scores_in = iter(scores)
    stopper = EarlyStopping(patience, lambda _: next(scores_in), engine, min_delta=min_delta)
    for epoch in range(len(scores)):
        stopper(engine)
        if engine.should_terminate:
            return epoch
    return None


def test_the_early_stop_worker_stops_an_hf_run_at_the_epoch_its_patience_says(
    stack: Stack,
) -> None:
    patience, min_delta, epochs, run = 2, 0.01, 15, "hf-es"
    store = stack.cwd / "store"
    workers = [
        stack.worker("metrics", run),
        stack.worker("tracking", run, "--dir", store),
        stack.worker("early-stop", run, "--name", "es-hf"),
    ]
    joined(stack, run, "metrics", "tracking", "early-stop")
    early_stopping = {"patience": patience, "min_delta": min_delta, "metric": "accuracy"}
    program = hf_run(
        stack,
        run,
        epochs=epochs,
        lr=0.02,
        barrier=True,  # the stop lands at the very epoch the voter voted on
        config={"early_stopping": early_stopping},
    )
    program.succeeded(RUN_S)
    for worker in workers:
        worker.succeeded(RUN_S)
    events = check_every_message(stack, run)
    finished = stack.finished(run)
    assert finished is not None
    assert (finished.data["status"], finished.data["by"]) == ("terminated", "es-hf"), finished.data

    # The reference: in-process EarlyStopping fed the accuracies HF itself evaluated.
    accuracies = split_metrics(events, "val")
    last = finished.data["epochs"] - 1
    assert sorted(accuracies) == list(range(last + 1))
    scores = [accuracies[epoch]["accuracy"] for epoch in range(last + 1)]
    assert in_process_stop_epoch(scores, patience, min_delta) == last
    assert last < epochs - 1  # it did stop early: the comparison is worth something
    done = result(stack)
    assert done["global_step"] == finished.data["iteration"]
    # HF saved the step it stopped at before stopping.
    assert f"checkpoint-{finished.data['iteration']}" in done["checkpoints"]

    # RUN_STARTED carries HF's settings and the model's config.
    started = next(e for e in events if e.type == "RUN_STARTED")
    assert started.data["framework"] == "hf"
    assert started.data["config"]["training_args"]["learning_rate"] == 0.02
    assert started.data["config"]["model"]["hidden"] == 32

    # The tracking store has every epoch's figures: the validation's and the training's.
    rows = [json.loads(line) for line in (store / run / "metrics.jsonl").read_text().splitlines()]
    tracked = {row["key"]: row for row in rows if row.get("key", "").startswith("epoch:")}
    train = split_metrics(events, "train")
    for epoch in range(last + 1):
        assert tracked[f"epoch:val:{epoch}"]["val/accuracy"] == accuracies[epoch]["accuracy"]
        assert tracked[f"epoch:train:{epoch}"]["train/loss"] == train[epoch]["loss"]
    shown = stack.start("show", "runs", "show", run, "--dir", store).succeeded()
    assert "terminated" in shown and "es-hf" in shown, shown


def test_a_signed_terminate_stops_at_the_step_it_is_seen_in_after_hf_saved_it(
    stack: Stack,
) -> None:
    secret, gate, run = "s3cret-shared", 6, "hf-sig"
    # Step `gate` waits until the bridge has a stop: the one that lands must land right there.
    program = hf_run(stack, run, epochs=20, secret_of={"0": secret}, gate={"rank": 0, "step": gate})
    eventually(lambda: stack.events(run, "ITERATION_COMPLETED"), RUN_S, "training to start")
    control(stack, run, command("TERMINATE", run, "mallory"))  # unsigned
    control(stack, run, sign(command("TERMINATE", run, "eve"), "not-the-secret"))
    # Each ignored one is logged, naming its source; the run goes on.
    eventually(
        lambda: "'mallory' ignored" in program.output() and "'eve' ignored" in program.output(),
        RUN_S,
        "both forged TERMINATEs to be ignored",
    )
    assert stack.finished(run) is None
    control(stack, run, sign(command("TERMINATE", run, "ops-console"), secret))
    program.succeeded(RUN_S)

    events = check_every_message(stack, run)
    finished = stack.finished(run)
    assert finished is not None
    assert (finished.data["status"], finished.data["by"]) == ("terminated", "ops-console")
    assert finished.data["iteration"] == gate
    steps = [e.iteration for e in events if e.type == "ITERATION_COMPLETED"]
    assert max(steps) == gate  # not one step more
    # HF wrote the checkpoint of that step before it stopped, and announced it first.
    ready = [e for e in events if e.type == "CHECKPOINT_READY"]
    assert [(e.data["iteration"], e.data["reason"]) for e in ready] == [(gate, "final")]
    assert events.index(ready[0]) < events.index(finished)
    folder = stack.cwd / "hf" / "hf" / f"checkpoint-{gate}"
    assert json.loads((folder / "trainer_state.json").read_text())["global_step"] == gate
    assert (folder / "model.safetensors").is_file()
    announced = Path(ready[0].data["path"])
    assert checkpoint_digest(announced) == (ready[0].data["size"], ready[0].data["sha256"])
    assert Path(ready[0].data["framework_path"]) == folder


def test_a_checkpoint_request_is_saved_by_hf_and_filed_by_the_checkpoint_worker(
    stack: Stack,
) -> None:
    run = "hf-ckpt"
    worker = stack.worker("checkpoint", run)
    joined(stack, run, "checkpoint")
    program = hf_run(stack, run, epochs=30, step_delay=0.02)  # paced: stopped by the test
    eventually(lambda: stack.events(run, "ITERATION_COMPLETED"), RUN_S, "training to start")
    control(stack, run, command("CHECKPOINT_REQUEST", run, "ops", "before the change"))
    saved = eventually(lambda: stack.events(run, "CHECKPOINT_SAVED"), RUN_S, "the filed one")
    control(stack, run, command("TERMINATE", run, "ops"))
    program.succeeded(RUN_S)
    worker.succeeded(RUN_S)

    events = check_every_message(stack, run)
    requested = next(e for e in events if e.type == "CHECKPOINT_READY")
    assert requested.data["reason"] == "requested"
    step = requested.data["iteration"]
    filed = Path(saved[0].data["path"])
    assert saved[0].data["iteration"] == step
    assert saved[0].data["sha256"] == requested.data["sha256"]
    # The worker filed a folder (links to HF's files) under the run's checkpoint directory...
    assert filed.is_dir() and filed.parent == stack.cwd / "hf" / "hf" / "checkpoints"
    assert checkpoint_digest(filed) == (requested.data["size"], requested.data["sha256"])
    assert json.loads((filed / "trainer_state.json").read_text())["global_step"] == step
    # ...and HF kept its own checkpoint-<step> folder where it wrote it.
    assert f"checkpoint-{step}" in result(stack)["checkpoints"]


def test_two_ranks_stop_at_the_same_step_when_only_one_rank_sees_the_stop(
    stack: Stack,
) -> None:
    run, agree_every = "hf-ddp", 5
    spec = {
        "bus": stack.url,
        "run_id": run,
        "out": str(stack.cwd / "ddp"),
        "epochs": 5,
        "stop_sync_every": agree_every,
        # Rank 0 holds a secret, so it ignores the unsigned TERMINATE: only rank 1 acts on it,
        # and it sees it during step 3 (its step waits for it there).
        "secret_of": {"0": "s3cret"},
        "gate": {"rank": 1, "step": 3},
    }
    launcher = stack._spawn(
        "torchrun",
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(PROGRAM),
            json.dumps(spec),
        ],
        None,
    )
    started = eventually(
        lambda: len(stack.events(run, "RUN_STARTED")) == 2, RUN_S, "both ranks to start"
    )
    assert started
    control(stack, run, command("TERMINATE", run, "ops-unsigned"))
    launcher.succeeded(RUN_S)

    events = check_every_message(stack, run)
    ranks = [result(stack, "ddp", rank) for rank in (0, 1)]
    # Both stopped at the first agreement after the step rank 1 saw the stop in, with its cause.
    assert [r["global_step"] for r in ranks] == [agree_every, agree_every], ranks
    assert {(r["status"], r["by"]) for r in ranks} == {("terminated", "ops-unsigned")}
    finished = [e for e in events if e.type == "RUN_FINISHED"]
    assert sorted(e.source for e in finished) == ["trainer:0", "trainer:1"]
    assert {e.data["iteration"] for e in finished} == {agree_every}
    # The save before the stop happened on both ranks at that step; rank 0 announced it.
    assert f"checkpoint-{agree_every}" in ranks[0]["checkpoints"]
    ready = [e for e in events if e.type == "CHECKPOINT_READY"]
    assert [(e.source, e.data["iteration"]) for e in ready] == [("trainer:0", agree_every)]


def test_the_hf_adapter_without_the_extra_names_it() -> None:
    # An interpreter where transformers cannot be imported: the one-line error names the extra.
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "try:\n    import trainer.adapters.hf\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    root = TESTS.parent
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
        timeout=RUN_S,
    ).stdout
    assert "pip install -e '.[hf]'" in out, out


@pytest.mark.parametrize(
    ("metrics", "split", "values"),
    [
        (
            {"eval_loss": 0.5, "eval_accuracy": 0.9, "eval_runtime": 0.1, "epoch": 2.0},
            "val",
            {"loss": 0.5, "accuracy": 0.9},
        ),
        (
            {
                "eval_digits_loss": 0.4,
                "eval_digits_runtime": 0.1,
                "eval_digits_steps_per_second": 9,
            },
            "val_digits",
            {"loss": 0.4},
        ),
        (
            {"test_f1": 0.7, "test_runtime": 0.2, "test_samples_per_second": 3.0},
            "test",
            {"f1": 0.7},
        ),
    ],
)
def test_an_evaluations_split_and_metrics_come_from_hfs_prefix(
    metrics: dict[str, float], split: str, values: dict[str, float]
) -> None:
    from trainer.adapters.hf import eval_split

    assert eval_split(metrics) == (split, values)


def test_an_exception_in_training_is_published_and_fails_the_run(tmp_path: Path) -> None:
    import uuid

    from bridge._bus import TOPICS, BusClient
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from adapters.hf_program import DigitsConfig, DigitsMLP, digits
    from trainer.adapters.hf import BusTrainerCallback

    class Boom(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 3:
                raise ValueError("boom at step 3")

    url, run = f"memory://hf-{uuid.uuid4().hex}", "hf-boom"
    client = BusClient(url)  # keeps the in-memory bus alive to read it back
    try:
        train, _ = digits()
        args = TrainingArguments(
            str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True, save_strategy="no"
        )
        bus = BusTrainerCallback(url, run)
        model = DigitsMLP(DigitsConfig())
        with pytest.raises(ValueError, match="boom"), bus:
            Trainer(model=model, args=args, train_dataset=train, callbacks=[bus, Boom()]).train()
        events = client.read(TOPICS.events(run))
    finally:
        client.close()
    for env in events:
        check_data(env.type, env.data, topic=EVENTS)
    raised = [e for e in events if e.type == "EXCEPTION_RAISED"]
    assert [(e.data["error_type"], e.data["message"]) for e in raised] == [
        ("ValueError", "boom at step 3")
    ]
    finished = events[-1]
    assert finished.type == "RUN_FINISHED" and finished.data["status"] == "failed"
    assert "boom at step 3" in finished.data["reason"]
    assert bus.end is not None and bus.end.status == "failed"
