"""docs/protocol.md section 10 documents every message of the catalogue with its `data` keys.

The catalogue below is DESIGN.md section 4.1, the contract that clients in other languages
rely on; a message or key missing from the page is a defect of the page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

CATALOGUE = {
    "RUN_STARTED": ["config", "rank", "world_size", "host", "pid", "resumed_from"],
    "STARTED": ["split"],
    "EPOCH_STARTED": ["split"],
    "EPOCH_COMPLETED": ["split", "metrics", "metric_states"],
    "COMPLETED": ["split"],
    "TERMINATE": ["split", "reason"],  # the event's split; the control signal's reason
    "ITERATION_COMPLETED": ["split", "outputs"],
    "EXCEPTION_RAISED": ["split", "error_type", "message", "traceback"],
    "CHECKPOINT_READY": ["path", "size", "sha256", "epoch", "iteration"],
    "RUN_FINISHED": ["status", "reason", "by", "epochs", "iteration"],
    "METRICS": ["split", "epoch", "values", "ranks"],
    "CHECKPOINT_SAVED": ["path", "sha256", "epoch", "iteration", "aliases"],
    "CHECKPOINT_PRUNED": ["path", "sha256", "epoch", "iteration", "aliases"],
    "WORKER_JOINED": ["kind", "name", "votes"],
    "WORKER_LEFT": ["kind", "name"],
    "HEARTBEAT": ["kind", "name"],
    "VOTE": ["stop", "reason", "voter", "epoch"],
    "CHECKPOINT_REQUEST": ["reason"],
}


def rows() -> list[str]:
    """The table rows of section 10."""
    text = PAGE.read_text(encoding="utf-8")
    section = text[text.index("## 10. Messages") :]
    return [line for line in section.splitlines() if line.startswith("| `")]


@pytest.mark.parametrize(("type_", "keys"), sorted(CATALOGUE.items()))
def test_every_message_and_its_data_keys_are_documented(type_: str, keys: list[str]) -> None:
    documented = [row for row in rows() if re.search(rf"`{type_}`", row.split("|")[1])]
    assert documented, f"{type_} has no row in docs/protocol.md section 10"
    text = " ".join(documented)
    missing = [key for key in keys if f"`{key}`" not in text]
    assert not missing, f"{type_}: data keys {missing} are not documented"
