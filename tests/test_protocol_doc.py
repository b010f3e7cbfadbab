"""docs/protocol.md section 10 documents every message of the catalogue with its `data` keys.

The catalogue is `bus.messages` (DESIGN.md section 4.1), the contract that clients in other
languages rely on; a message or key missing from the page is a defect of the page.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bus.messages import REQUIRED

PAGE = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

# type -> its required data keys on every topic it travels on (TERMINATE: the event's split
# and the control signal's reason).
CATALOGUE: dict[str, list[str]] = {}
for by_type in REQUIRED.values():
    for type_, keys in by_type.items():
        CATALOGUE.setdefault(type_, [])
        CATALOGUE[type_] += [key for key in keys if key not in CATALOGUE[type_]]


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
