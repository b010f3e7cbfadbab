"""Running `trainer ...` in this process and reading what a run leaves behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trainer.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """`trainer ARGS` through the CLI's entry point; returns (exit status, stdout, stderr)."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def printed(pattern: str, out: str) -> str:
    """The first group of `pattern`'s first match in `out` (multiline), which must match."""
    match = re.search(pattern, out, re.MULTILINE)
    assert match, f"{pattern!r} not in output:\n{out}"
    return match.group(1)


def epoch_values(name: str, out: str) -> list[float]:
    """The value of `name` (e.g. val_r2) on each printed epoch line."""
    return [
        float(v)
        for v in re.findall(rf"^epoch \d+/\d+ .*\b{name} (-?[0-9.]+(?:e[-+]?[0-9]+)?)", out, re.M)
    ]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def manifest(run_dir: Path) -> dict:
    return read_json(run_dir / "checkpoints" / "manifest.json")
