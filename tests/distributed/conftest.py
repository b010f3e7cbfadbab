"""One two-rank gloo run for the whole directory: each test reads what the ranks reported."""

from __future__ import annotations

from typing import Any

import pytest

from ._digits import EPOCHS, WORLD, digits_scores
from ._launch import run_ranks
from ._programs import all_programs


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Per rank, what `all_programs` returned (the ranks start once: importing torch is slow)."""
    scores, y = digits_scores()
    return run_ranks(all_programs, (scores, y, EPOCHS), tmp_path_factory.mktemp("ranks"), WORLD)
