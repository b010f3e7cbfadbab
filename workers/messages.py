"""Names of the message types workers read and send (docs/protocol.md lists their data)."""

from __future__ import annotations

# On a run's events topic (and, for RUN_STARTED/RUN_FINISHED, on the registry).
RUN_STARTED = "RUN_STARTED"
RUN_FINISHED = "RUN_FINISHED"
ITERATION_COMPLETED = "ITERATION_COMPLETED"
EPOCH_COMPLETED = "EPOCH_COMPLETED"
METRICS = "METRICS"

# On a run's control topic.
WORKER_JOINED = "WORKER_JOINED"
WORKER_LEFT = "WORKER_LEFT"
HEARTBEAT = "HEARTBEAT"
VOTE = "VOTE"

# The split of the trainer's primary engine, whose EPOCH_COMPLETED closes an epoch.
PRIMARY_SPLIT = "train"
