"""The dependency direction of DESIGN.md section 2, and commands that must not load torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_of_pyproject_hold() -> None:
    # bus imports nothing of ours; workers never import the Engine, the job, the bridge or the
    # CLI; only the CLI imports workers (pyproject.toml, [tool.importlinter]).
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def modules_loaded_by(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "argv",
    [
        ["worker", "early-stop", "--help"],
        ["worker", "nan-guard", "--help"],
        ["worker", "budget", "--help"],
        ["worker", "checkpoint", "--help"],
        ["config"],
    ],
)
def test_commands_that_need_no_torch_do_not_import_it(argv: list[str]) -> None:
    code = (
        "import contextlib, io\n"
        "from trainer.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main({argv!r}) == 0\n"
    )
    assert "torch" not in modules_loaded_by(code)
