"""The Lightning adapter end to end: real Lightning programs, a private Redis, workers as processes.

Each test runs `_lightning_digits.py` (a user's program: a LightningModule and a BusCallback) as a
process, the workers as `trainer worker KIND` processes, and reads the run back from Redis with
redis-py and the envelope codec (tests/stack's harness). Every message of every run is checked
against the catalogue (`check_all`). Every wait is bounded.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import httpx
import pytest
import torch
from bridge._bus import control
from stack.stack_harness import Stack, eventually
from web.web_harness import WebServer

from bus import Envelope, encode
from bus.messages import CONTROL, EVENTS, REGISTRY, check_data
from workers.web import WebOptions

pytestmark = pytest.mark.heavy(130)  # seconds in the suite: scheduled first

HERE = Path(__file__).resolve().parent
PROGRAM = HERE / "_lightning_digits.py"
SECRET = "lightning-test-secret"
EPOCH = 23  # training batches per digits epoch (1437 samples, batches of 64)
HANG_GUARD = 240.0  # seconds any one process of these tests may take


@pytest.fixture(scope="module", autouse=True)
def lightning_installed() -> None:
    """Fail (not skip) without Lightning: CI installs the [lightning] extra for these tests."""
    if importlib.util.find_spec("lightning") is None:
        pytest.fail(
            "these tests need Lightning: pip install -e '.[test,lightning]' torch==2.13.0",
            pytrace=False,
        )


def program(stack: Stack, run_id: str, *args: str, name: str = "lightning", **env: str):
    """Start _lightning_digits.py on the stack's bus as run `run_id`."""
    return stack.start_script(
        name,
        PROGRAM,
        "--bus",
        stack.url,
        "--run-id",
        run_id,
        "--root",
        stack.cwd / "lightning",
        *args,
        env=env or None,
    )


def check_all(stack: Stack, run_id: str) -> list[Envelope]:
    """Every envelope of the run's events, the registry and the run's control, checked against
    the message catalogue; the run's events, returned."""
    topics = stack.topics
    events = stack.envelopes(topics.events(run_id))
    for env in events:
        check_data(env.type, env.data, topic=EVENTS)
    for env in stack.envelopes(topics.registry()):
        check_data(env.type, env.data, topic=REGISTRY)
    for env in stack.envelopes(topics.control(run_id)):
        check_data(env.type, env.data, topic=CONTROL)
    assert events, f"run {run_id} published nothing"
    return events


def split_epochs(events: list[Envelope], split: str) -> dict[int, dict[str, float]]:
    """Each EPOCH_COMPLETED's metrics of `split`, by the epoch it was stamped with."""
    return {
        e.epoch: e.data["metrics"]
        for e in events
        if e.type == "EPOCH_COMPLETED" and e.data["split"] == split
    }


def patience_stop(scores: list[float], patience: int, min_delta: float) -> int | None:
    """The 0-based epoch at which early stopping on a rising score stops, written out here as
    the rule reads (an improvement beats the best by more than min_delta)."""
    best, bad = None, 0
    for epoch, score in enumerate(scores):
        if best is None or score > best + min_delta:
            best, bad = score, 0
        else:
            bad += 1
            if bad >= patience:
                return epoch
    return None


def send(stack: Stack, run_id: str, env: Envelope) -> int:
    """XADD `env` to the run's control stream; the entry's time (ms, the server's clock)."""
    entry = stack.raw().xadd(stack.topics.control(run_id), {"env": encode(env)})
    return int(entry.decode().split("-")[0])


def steps(events: list[Envelope]) -> list[Envelope]:
    """The run's train ITERATION_COMPLETED envelopes."""
    return [e for e in events if e.type == "ITERATION_COMPLETED" and e.data["split"] == "train"]


def test_the_early_stop_worker_stops_a_lightning_run_at_its_patience_epoch(stack: Stack) -> None:
    patience, min_delta = 2, 0.01
    store = stack.cwd / "runs"
    workers = [
        stack.worker("metrics", "lt-es"),
        stack.worker("tracking", "lt-es", "--dir", store),
        stack.worker(
            "early-stop",
            "lt-es",
            "--name",
            "es-1",
            "--patience",
            str(patience),
            "--min-delta",
            str(min_delta),
        ),
    ]
    out = program(stack, "lt-es", "--epochs", "12", "--barrier").succeeded(HANG_GUARD)
    for w in workers:
        w.succeeded(HANG_GUARD)
    events = check_all(stack, "lt-es")

    finished = stack.finished("lt-es")
    assert (finished.data["status"], finished.data["by"]) == ("terminated", "es-1"), finished.data
    assert "status terminated by es-1" in out
    started = stack.events("lt-es", "RUN_STARTED")[0].data
    assert started["framework"] == "lightning"
    assert started["config"]["hparams"]["lr"] == 0.01
    assert started["config"]["trainer"]["max_epochs"] == 12

    # The reference: the patience rule, written out in patience_stop, fed the validation
    # accuracies the run published. The run must have trained up to that epoch and no further.
    val = split_epochs(events, "val")
    last = finished.data["epochs"] - 1
    assert sorted(val) == list(range(last + 1))
    scores = [val[epoch]["accuracy"] for epoch in range(last + 1)]
    assert patience_stop(scores, patience, min_delta) == last
    assert last < 11  # it did stop early: the comparison is worth something
    train = split_epochs(events, "train")
    assert sorted(train) == list(range(last + 1))
    assert all(set(m) == {"loss"} for m in train.values())
    assert all(set(m) == {"loss", "accuracy"} for m in val.values())

    # The torchmetrics accuracy travelled as a mergeable state: the metrics worker's figure is
    # the trainer's own.
    aggregated = {
        e.data["epoch"]: e.data["values"]
        for e in stack.events("lt-es", "METRICS")
        if e.data["split"] == "val"
    }
    for epoch, metrics in val.items():
        assert aggregated[epoch]["accuracy"] == pytest.approx(metrics["accuracy"])
        assert aggregated[epoch]["loss"] == pytest.approx(metrics["loss"], rel=1e-5)

    # The tracking store has every epoch's metrics of both splits ...
    shown = stack.start("runs-show", "runs", "show", "lt-es", "--dir", store).succeeded(60)
    assert "lt-es" in shown and "terminated" in shown, shown
    rows = [json.loads(line) for line in (store / "lt-es" / "metrics.jsonl").read_text().split()]
    tracked = {row["key"]: row for row in rows}
    for split, per_epoch in (("train", train), ("val", val)):
        for epoch, metrics in per_epoch.items():
            row = tracked[f"epoch:{split}:{epoch}"]
            assert row["epoch"] == epoch + 1
            assert {f"{split}/{name}": value for name, value in metrics.items()} == {
                key: value for key, value in row.items() if key.startswith(f"{split}/")
            }
    # ... and the web view serves the run from it.
    server = WebServer(WebOptions(stack.url, runs_dir=store)).start()
    try:
        assert httpx.get(f"{server.url}/runs/lt-es", timeout=30).status_code == 200
        page = httpx.get(f"{server.url}/api/runs/lt-es", timeout=30).json()
    finally:
        server.stop()
    assert page["status"] == "terminated", page
    curve = page["series"]["val"]["accuracy"]  # [epoch from 1, value] per epoch
    assert curve == [[epoch + 1, pytest.approx(val[epoch]["accuracy"])] for epoch in sorted(val)]


def test_a_signed_terminate_stops_within_one_step_and_a_forged_one_is_ignored(
    stack: Stack,
) -> None:
    run = program(
        stack, "lt-stop", "--epochs", "4", "--step-delay", "0.1", TRAINER_BUS_SECRET=SECRET
    )
    trained = lambda: steps(stack.events("lt-stop"))  # noqa: E731
    eventually(lambda: len(trained()) >= 3, HANG_GUARD, "the run's first steps")

    # Forged (another secret) and unsigned: both ignored, the run trains on past them.
    forged = control("lt-stop", "TERMINATE", {"reason": "forged"}, "mallory", secret="not-it")
    unsigned = control("lt-stop", "TERMINATE", {"reason": "unsigned"}, "mallory")
    send(stack, "lt-stop", forged)
    ignored_at = send(stack, "lt-stop", unsigned)
    eventually(
        lambda: len([e for e in trained() if e.ts * 1000 > ignored_at + 1]) >= 5,
        HANG_GUARD,
        "five steps after the forged TERMINATEs",
    )

    signed = control("lt-stop", "TERMINATE", {"reason": "enough"}, "ops:alice", secret=SECRET)
    landed = send(stack, "lt-stop", signed)
    out = run.succeeded(HANG_GUARD)
    events = check_all(stack, "lt-stop")
    finished = stack.finished("lt-stop").data
    assert (finished["status"], finished["by"], finished["reason"]) == (
        "terminated",
        "ops:alice",
        "enough",
    )
    assert "status terminated by ops:alice" in out
    assert "from 'mallory' ignored: bad signature" in out  # each ignored one is logged
    assert "from 'mallory' ignored: unsigned" in out
    # Within one step: the step under way when the TERMINATE landed ends, no other starts.
    # (An envelope's `ts` is the trainer's clock at the step's end, the entry id the server's:
    # one machine's clock.)
    after = [e.iteration for e in steps(events) if e.ts * 1000 > landed + 1]
    assert len(after) <= 1, after
    assert finished["iteration"] == steps(events)[-1].iteration < 4 * EPOCH
    # The epoch it cut short has no EPOCH_COMPLETED for train (as with our Engine) ...
    cut = finished["iteration"] // EPOCH
    assert cut not in split_epochs(events, "train")
    assert [e.data["split"] for e in events if e.type == "TERMINATE"] == ["train"]


def test_a_stop_by_lightnings_own_early_stopping_is_the_programs_with_its_message(
    stack: Stack,
) -> None:
    program(stack, "lt-pl-es", "--epochs", "12", "--pl-patience", "1").succeeded(HANG_GUARD)
    events = check_all(stack, "lt-pl-es")
    finished = stack.finished("lt-pl-es").data
    assert (finished["status"], finished["by"]) == ("terminated", None), finished
    assert finished["reason"].startswith(
        "Lightning's EarlyStopping: Monitored metric val_accuracy did not improve in the last 1"
    ), finished
    # Lightning stopped at an epoch's end: that epoch is complete on the bus, for both splits.
    last = finished["epochs"] - 1
    assert last < 11
    assert sorted(split_epochs(events, "train")) == sorted(split_epochs(events, "val"))
    assert max(split_epochs(events, "train")) == last


def test_ddp_a_stop_on_one_rank_stops_both_ranks_at_the_same_step(stack: Stack) -> None:
    # Rank 1's program alone sets should_stop after step 7: without the agreement rank 0 would
    # train on and wait in DDP's all-reduce for a rank that has left. Agreement every 5 steps.
    metrics = stack.worker("metrics", "lt-ddp")
    out = program(
        stack,
        "lt-ddp",
        "--devices",
        "2",
        "--epochs",
        "2",
        "--stop-rank",
        "1",
        "--stop-step",
        "7",
        "--stop-sync-every",
        "5",
    ).succeeded(HANG_GUARD)
    stopped = dict(re.findall(r"^rank (\d) stopped at step (\d+)", out, re.MULTILINE))
    assert stopped == {"0": "10", "1": "10"}, out  # the first agreement point after step 7
    check_all(stack, "lt-ddp")
    ends = [e for e in stack.events("lt-ddp", "RUN_FINISHED")]
    assert sorted(e.source for e in ends) == ["trainer:0", "trainer:1"]
    for end in ends:
        assert (end.data["status"], end.data["iteration"]) == ("terminated", 10), end.data
        assert end.data["reason"] == "trainer.should_stop set by the program on rank 1"
    started = stack.events("lt-ddp", "RUN_STARTED")
    assert sorted((e.data["rank"], e.data["world_size"]) for e in started) == [(0, 2), (1, 2)]

    # Lightning validates before it stops. Each rank published its own share's accuracy state;
    # the metrics worker's merge of them is what torchmetrics computed over both shares (its own
    # sync across the ranks, which each rank published as its value).
    metrics.succeeded(HANG_GUARD)
    val = [e for e in stack.events("lt-ddp", "EPOCH_COMPLETED") if e.data["split"] == "val"]
    assert sorted(e.source for e in val) == ["trainer:0", "trainer:1"]
    synced = {e.data["metrics"]["accuracy"] for e in val}
    assert len(synced) == 1
    merged = [e.data for e in stack.events("lt-ddp", "METRICS") if e.data["split"] == "val"]
    assert [(m["ranks"], m["values"]["accuracy"]) for m in merged] == [
        ([0, 1], pytest.approx(synced.pop()))
    ]


def test_a_checkpoint_request_is_saved_by_lightning_and_filed_by_the_checkpoint_worker(
    stack: Stack,
) -> None:
    directory = stack.cwd / "checkpoints"
    worker = stack.worker("checkpoint", "lt-ckpt", "--n-saved", "all")
    run = program(
        stack, "lt-ckpt", "--epochs", "2", "--step-delay", "0.05", "--checkpoint-dir", directory
    )
    eventually(lambda: len(steps(stack.events("lt-ckpt"))) >= 5, HANG_GUARD, "five steps")
    landed_after = steps(stack.events("lt-ckpt"))[-1].iteration
    send(stack, "lt-ckpt", control("lt-ckpt", "CHECKPOINT_REQUEST", {"reason": "look"}, "ops"))
    run.succeeded(HANG_GUARD)
    worker.succeeded(HANG_GUARD)
    events = check_all(stack, "lt-ckpt")

    readies = [e for e in events if e.type == "CHECKPOINT_READY"]
    requested = [e for e in readies if e.data["reason"] == "requested"]
    assert len(requested) == 1, [e.data for e in readies]
    ready = requested[0]
    assert ready.data["framework"] == "lightning"
    # Lightning's own file, where its checkpoints go, at the step the request was served at.
    own = Path(ready.data["framework_path"])
    assert own.parent == stack.cwd / "lightning" / "checkpoints"
    assert own.name == f"requested-epoch=0-step={ready.iteration}.ckpt"
    assert landed_after <= ready.iteration < EPOCH
    saved = torch.load(own, weights_only=True)
    assert saved["global_step"] == ready.iteration
    assert set(saved["state_dict"]) == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    # The worker filed it (and the ModelCheckpoint's epoch-end files) into the run's directory.
    filed = {e.data["iteration"]: e.data for e in stack.events("lt-ckpt", "CHECKPOINT_SAVED")}
    assert set(filed) == {e.iteration for e in readies}
    assert Path(filed[ready.iteration]["path"]).parent == directory
    assert filed[ready.iteration]["sha256"] == ready.data["sha256"]
    assert Path(filed[ready.iteration]["path"]).read_bytes() == own.read_bytes()
    assert own.exists()  # Lightning keeps its own file


def test_an_exception_in_the_program_is_published_and_fails_the_run(stack: Stack) -> None:
    run = program(stack, "lt-fail", "--fail-step", "3")
    assert run.wait(HANG_GUARD) != 0
    events = check_all(stack, "lt-fail")
    raised = [e for e in events if e.type == "EXCEPTION_RAISED"]
    assert [(e.data["error_type"], e.data["message"]) for e in raised] == [
        ("RuntimeError", "the program failed at step 3")
    ]
    assert "training_step" in raised[0].data["traceback"]
    finished = stack.finished("lt-fail").data
    assert (finished["status"], finished["reason"]) == (
        "failed",
        "RuntimeError: the program failed at step 3",
    )
    assert len(steps(events)) == 3


# ---- the metric names and states, in process (torchmetrics is the reference) ------------------


def test_each_logged_value_goes_to_the_split_its_prefix_or_its_loop_names() -> None:
    from trainer.adapters.lightning_metrics import epoch_metrics

    logged = {
        "train_loss": 2.0,  # the last step's, beside its epoch value below
        "train_loss_step": 2.0,
        "train_loss_epoch": 1.5,
        "training/acc": 0.75,
        "trainer_steps": 3,  # "trainer" is no prefix: an unprefixed name
        "val_loss": 0.5,
        "validation.f1": 0.25,
        "valid-top5": 0.875,
        "lr": 0.01,
        "val_acc_step": 0.5,
    }
    assert epoch_metrics(logged, "train") == {
        "loss": 1.5,
        "acc": 0.75,
        "trainer_steps": 3.0,
        "lr": 0.01,
    }
    assert epoch_metrics(logged, "val") == {"loss": 0.5, "f1": 0.25, "top5": 0.875}
    # An unprefixed value logged by the validation loop is the val split's.
    assert "lr" in epoch_metrics(logged, "val", logged_by_val={"lr"})
    assert "lr" not in epoch_metrics(logged, "train", logged_by_val={"lr"})


def _torchmetrics_cases() -> list:
    import torchmetrics

    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(90, 10, generator=gen), torch.randint(0, 10, (90,), generator=gen)
    probs, bits = torch.rand(90, generator=gen), torch.randint(0, 2, (90,), generator=gen)
    preds, targets = torch.randn(90, generator=gen), torch.randn(90, generator=gen)
    c = torchmetrics.classification
    return [
        (lambda: c.MulticlassAccuracy(10, average="micro"), (logits, labels)),
        (lambda: torchmetrics.Accuracy(task="multiclass", num_classes=10), (logits, labels)),
        (lambda: c.BinaryAccuracy(), (probs, bits)),
        (lambda: torchmetrics.MeanSquaredError(), (preds, targets)),
        (lambda: torchmetrics.MeanAbsoluteError(), (preds, targets)),
        (lambda: torchmetrics.MeanMetric(), (preds.abs(),)),
    ]


@pytest.mark.parametrize("case", range(6))
def test_a_torchmetrics_state_merges_to_torchmetrics_own_value(case: int) -> None:
    from trainer.adapters.lightning_metrics import torchmetric_state
    from trainer.metrics.registry import metric_from_message

    make, data = _torchmetrics_cases()[case]
    whole, first, second = make(), make(), make()
    whole.update(*data)
    first.update(*(d[:40] for d in data))  # two ranks' shares of the data
    second.update(*(d[40:] for d in data))
    ours = metric_from_message(torchmetric_state(first))
    ours.merge(metric_from_message(torchmetric_state(second)).state_dict())
    assert ours.compute() == pytest.approx(float(whole.compute()), rel=1e-6)


def test_a_torchmetric_without_a_counterpart_travels_as_a_value_only() -> None:
    import torchmetrics

    from trainer.adapters.lightning_metrics import torchmetric_state

    macro = torchmetrics.classification.MulticlassAccuracy(10)  # average="macro"
    rmse = torchmetrics.MeanSquaredError(squared=False)
    f1 = torchmetrics.classification.MulticlassF1Score(10)
    assert [torchmetric_state(m) for m in (macro, rmse, f1)] == [None, None, None]
