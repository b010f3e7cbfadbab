"""Online mode: a Run's records published on the bus, where a `tracking` worker writes them.

`tracking.run(..., mode="online")` (or `tracking.set_mode("online")`) builds this sink: the run
is announced like a trainer's (RUN_STARTED on its events topic and on the registry, so that a
`trainer worker tracking --follow` anywhere finds it), every record travels as one TRACK
envelope on the run's events topic, and `finish()` announces RUN_FINISHED. The bus is the one
`TRAINER_BUS_URL` names, in the namespace `TRAINER_BUS_NAMESPACE` (default `trainer`).

Artifact files travel inside their record, so an online artifact is limited by the envelope
size (bus.MAX_ENVELOPE_BYTES); put bigger files on shared storage and `add_reference` them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from bus import (
    DEFAULT_NAMESPACE,
    MAX_ENVELOPE_BYTES,
    Envelope,
    ThreadedPublisher,
    Topics,
    encode,
    open_bus,
)
from bus.messages import RUN_FINISHED, RUN_STARTED, TRACK
from bus.urls import redact
from trainer.tracking.errors import TrackingError
from trainer.tracking.records import inline_files

BUS_URL_ENV = "TRAINER_BUS_URL"
NAMESPACE_ENV = "TRAINER_BUS_NAMESPACE"
# Seconds `finish()` waits for the records to reach the bus.
CLOSE_TIMEOUT = 30.0


def make_sink(meta: Mapping[str, Any]) -> OnlineSink:
    """The sink of a new online run, from its first meta record and the environment."""
    url = os.environ.get(BUS_URL_ENV, "").strip()
    if not url:
        raise TrackingError(
            f"tracking mode 'online' publishes to the bus ${BUS_URL_ENV} names, and it is not "
            f"set: export {BUS_URL_ENV}=redis://host:6379/0, or use mode 'offline'"
        )
    namespace = os.environ.get(NAMESPACE_ENV, "").strip() or DEFAULT_NAMESPACE
    return OnlineSink(url, namespace, meta.get("fields") or {})


class OnlineSink:
    """Publishes a run's records as TRACK envelopes, between RUN_STARTED and RUN_FINISHED."""

    def __init__(self, url: str, namespace: str, fields: Mapping[str, Any]) -> None:
        self.run_id = str(fields["id"])
        self.url = url
        topics = Topics(namespace)
        self.events, self.registry = topics.events(self.run_id), topics.registry()
        self.source = f"tracking:{socket.gethostname()}:{os.getpid()}"
        self.last_step = 0
        self.epochs = 0
        self.publisher = ThreadedPublisher(lambda: open_bus(url))
        self._announce(
            RUN_STARTED,
            {
                "config": dict(fields.get("config") or {}),
                "rank": 0,
                "world_size": 1,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "resumed_from": None,
                "checkpoint_dir": None,
                "run_dir": None,
                "namespace": namespace,
                "project": fields.get("project"),
                "name": fields.get("name"),
                "tags": list(fields.get("tags") or []),
                "tracking": True,  # a tracking-only run: no engine publishes lifecycle events
            },
        )

    def write(self, record: dict[str, Any]) -> None:
        """Publish one record (artifact files inlined); online, no version number comes back."""
        data = inline_files(record)
        env = self._envelope(TRACK, data)
        size = len(encode(env))
        if size > MAX_ENVELOPE_BYTES:
            what = f"artifact {data.get('name')!r}" if data.get("kind") == "artifact" else "record"
            raise TrackingError(
                f"online run {self.run_id}: {what} is {size:,} bytes on the wire, over the bus "
                f"limit of {MAX_ENVELOPE_BYTES:,}; put big files on shared storage and use "
                "Artifact.add_reference, or track this run offline"
            )
        self.publisher.publish(self.events, env)
        if data.get("kind") == "log":
            self._count(data)
        if data.get("kind") == "finish":
            self._announce(
                RUN_FINISHED,
                {
                    "status": data.get("status", "completed"),
                    "reason": str(data.get("reason") or ""),
                    "by": data.get("by"),
                    "epochs": self.epochs,
                    "iteration": self.last_step,
                },
            )

    def close(self) -> None:
        """Send what is queued and stop the publisher thread."""
        try:
            self.publisher.close(timeout=CLOSE_TIMEOUT)
        except Exception as exc:
            raise TrackingError(
                f"online run {self.run_id}: records may not have reached the bus at "
                f"{redact(self.url)}: {exc}"
            ) from exc

    def _count(self, record: Mapping[str, Any]) -> None:
        step = record.get("step")
        if isinstance(step, int):
            self.last_step = max(self.last_step, step)
        epoch = (record.get("values") or {}).get("epoch")
        if isinstance(epoch, (int, float)) and not isinstance(epoch, bool):
            self.epochs = max(self.epochs, int(epoch))

    def _envelope(self, type: str, data: dict[str, Any]) -> Envelope:
        return Envelope(
            type=type,
            run_id=self.run_id,
            source=self.source,
            data=data,
            epoch=self.epochs,
            iteration=self.last_step,
        )

    def _announce(self, type: str, data: dict[str, Any]) -> None:
        env = self._envelope(type, data)
        self.publisher.publish(self.events, env)
        self.publisher.publish(self.registry, env)
