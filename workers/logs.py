"""Structured log lines for workers: `ts=.. level=.. worker=.. kind=.. run=.. event=.. k=v`."""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Mapping, MutableMapping
from typing import Any

# Context keys come first, in this order, so that lines of one worker and run line up.
_CONTEXT = ("worker", "kind", "run")
_HANDLER_NAME = "workers.logfmt"
# What makes a value need quotes: it would not read back as one `key=value` pair. One regex
# search, not a test per character: a voter logs a line with a long reason at every epoch.
_NEEDS_QUOTES = re.compile(r'[\s"=\\]')


class WorkerLog(logging.LoggerAdapter):
    """A logger adapter that carries a worker's context and merges each call's `extra` into it.

    `log.info("vote", extra={"stop": True, "epoch": "3/10"})` renders as
    `... worker=w kind=early-stop run=r1 event=vote stop=true epoch=3/10` with LogfmtFormatter.
    """

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        """Put the context and the call's extra fields into the record's `fields`."""
        fields = dict(self.extra or {})
        fields.update(kwargs.pop("extra", None) or {})
        kwargs["extra"] = {"fields": fields}
        return msg, kwargs


def worker_log(name: str, **context: Any) -> WorkerLog:
    """Return a WorkerLog on logger `name` carrying `context` (worker, kind, run...)."""
    return WorkerLog(logging.getLogger(name), context)


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    text = str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    # Quoted with escapes so that one record stays one line, whatever the message holds.
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return '"' + escaped.replace("\r", "\\r").replace("\t", "\\t") + '"'


class LogfmtFormatter(logging.Formatter):
    """One line per record: ts, level, the worker's context, event (the message), then fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as logfmt-like `key=value` pairs."""
        fields: Mapping[str, Any] = getattr(record, "fields", None) or {}
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        pairs: list[tuple[str, Any]] = [
            ("ts", f"{ts}.{int(record.msecs):03d}Z"),
            ("level", record.levelname.lower()),
        ]
        pairs += [(key, fields[key]) for key in _CONTEXT if key in fields]
        if not fields:
            # A library's record (bus.consumer...): its logger says where it comes from.
            pairs.append(("logger", record.name))
        pairs.append(("event", record.getMessage()))
        pairs += [(key, value) for key, value in fields.items() if key not in _CONTEXT]
        if record.exc_info:
            pairs.append(("error", self.formatException(record.exc_info)))
        return " ".join(f"{key}={_value(value)}" for key, value in pairs)


def configure_logging(level: int | str = logging.INFO) -> None:
    """Send every log record to stderr as logfmt-like lines (once per process)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(LogfmtFormatter())
    root.addHandler(handler)
    root.setLevel(level)
