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


# What a worker must never load, even through a package's __init__ (import-linter follows import
# statements, not the parent packages Python runs first, so only an import can show this).
ENGINE_SIDE = ("trainer.engine", "trainer.job", "trainer.bridge", "trainer.handlers", "trainer.cli")

# Imports every worker module in turn, discovered (a new module is covered without a change
# here), and names the first one after which an Engine-side module was loaded.
IMPORT_EVERY_WORKER_MODULE = f"""
import importlib, pkgutil, sys
import workers
for found in pkgutil.walk_packages(workers.__path__, "workers."):
    importlib.import_module(found.name)
    loaded = sorted(name for name in sys.modules if name.startswith({ENGINE_SIDE!r}))
    if loaded:
        sys.exit(f"importing {{found.name}} loaded {{', '.join(loaded)}}")
print("imported", found.name)
"""


def test_no_worker_module_loads_the_engine_the_job_or_the_bridge() -> None:
    # DESIGN.md section 2: workers import bus/ and the pure parts of trainer/, never the Engine.
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_WORKER_MODULE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported workers."), done.stdout


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


def test_the_lazy_package_still_offers_every_public_name() -> None:
    import trainer

    assert set(trainer.__all__) <= set(dir(trainer))
    for name in trainer.__all__:
        assert getattr(trainer, name).__name__ == name
