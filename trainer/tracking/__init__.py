"""The tracking store: one directory per run with metadata, metrics, media and artifacts.

Use it directly::

    from trainer import tracking

    with tracking.run(project="digits", name="mlp", config=cfg, tags=["baseline"]) as run:
        run.define_metric("val/accuracy", "max")
        run.log({"train/loss": 0.3, "epoch": 1}, step=23)
        run.log_histogram("weights/fc1", model.fc1.weight)
        run.log_image("val/samples", array)
        model_files = tracking.Artifact("model", type="model")
        model_files.add_file("model.pt")
        run.log_artifact(model_files, aliases=["best"])
    # leaving the block finishes the run: "completed", or "failed" with the error

Modes (`set_mode`, env TRAINER_TRACKING_MODE, or `run(mode=)`): "offline" writes the run
directory here; "online" sends the records to the bus, where the tracking worker writes them;
"disabled" writes nothing.

Writers. A Run turns each call into a record, a msgpack-native dict ``{"kind": "meta" | "log" |
"histogram" | "image" | "artifact" | "finish", ..., "key"?: str}``, and hands it to its Sink.
`LocalSink(run_dir).apply(record)` applies a record to the files of a run directory, under
the run's lock and skipping a record whose key was already applied (by any process). The
tracking worker builds the same records from bus envelopes and applies them the same way, so
one writer serves every mode. docs/tracking.md lists every record field and file.

Readers: `trainer.tracking.reader` (`list_runs`, `read_run`, `find_run`); exports:
`trainer.tracking.mlflow_export.export_mlflow`; TensorBoard reads the run directory as is.

Importing this package loads neither torch nor the bus: a tensor given to `log_histogram` or
`log_image` is converted with its own methods (`.detach().cpu().numpy()`).
"""

from __future__ import annotations

from trainer.tracking.artifact import Artifact
from trainer.tracking.errors import RunNotFound, TrackingError
from trainer.tracking.local import LocalSink
from trainer.tracking.modes import MODES, get_mode, set_mode
from trainer.tracking.records import inline_files
from trainer.tracking.runs import Run, open_run, run
from trainer.tracking.sink import NullSink, Sink, set_online_sink

__all__ = [
    "MODES",
    "Artifact",
    "LocalSink",
    "NullSink",
    "Run",
    "RunNotFound",
    "Sink",
    "TrackingError",
    "get_mode",
    "inline_files",
    "open_run",
    "run",
    "set_mode",
    "set_online_sink",
]
