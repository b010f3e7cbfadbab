"""Workers without a metrics worker: in a one-rank run nobody waits for one (issue 13)."""

from __future__ import annotations

from stack_harness import Stack, manifest
from test_stack_votes import epoch_metrics, in_process_stop_epoch


def test_checkpoint_and_early_stop_workers_alone_never_wait_for_a_metrics_worker(
    stack: Stack,
) -> None:
    patience, min_delta, epochs = 1, 0.01, 10
    config = stack.config(
        train={"epochs": epochs},
        early_stopping={"patience": patience, "min_delta": min_delta},
        checkpoint={"every": 1, "unit": "epoch", "n_saved": None, "n_best": 1},
        # A barrier that never times out in this test's life, and a score that would wait an
        # hour: the run ends only if neither worker ever waits for the metrics worker.
        bus={"barrier": True, "barrier_timeout": 3600.0},
    )
    run_dir = stack.cwd / "alone"
    workers = [
        stack.worker("early-stop", "alone", "--name", "es-alone"),
        stack.worker("checkpoint", "alone", "--score-timeout", "3600"),
    ]
    stack.trainer(config, "alone", "--run-dir", run_dir).succeeded()
    outputs = [w.succeeded() for w in workers]

    # The voter stopped the run where in-process EarlyStopping stops it.
    finished = stack.finished("alone")
    assert (finished.data["status"], finished.data["by"]) == ("terminated", "es-alone")
    accuracies = epoch_metrics(stack, "alone", "val")
    last = finished.data["epochs"] - 1
    scores = [accuracies[epoch]["accuracy"] for epoch in range(last + 1)]
    assert in_process_stop_epoch(scores, patience, min_delta) == last < epochs - 1
    # Every epoch's checkpoint is filed with its epoch's validation accuracy as its score.
    saved = stack.events("alone", "CHECKPOINT_SAVED")
    assert [e.data["score"] for e in saved] == scores
    assert {e["file"] for e in manifest(run_dir / "checkpoints")["checkpoints"]} == {
        e.data["path"].rsplit("/", 1)[1] for e in saved
    }
    for out in outputs:
        assert "event=waiting" not in out and "no score" not in out, out
