"""The dependency direction of DESIGN.md section 2, and commands that must not load torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    """import-linter run on the packages and the pyproject.toml found in `where`."""
    lint = Path(sys.executable).parent / "lint-imports"
    return subprocess.run(
        [str(lint), "--no-cache"], cwd=where, capture_output=True, text=True, timeout=120
    )


def test_the_import_contracts_of_pyproject_hold() -> None:
    # The layers of pyproject.toml's [tool.importlinter]: bus imports nothing of ours, only the
    # CLI imports workers, workers import only trainer's shared core, every module in its layer.
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_the_contracts_place_a_new_module_and_refuse_a_wrong_import(tmp_path: Path) -> None:
    # On a copy of the packages: a module nobody placed yet, a worker importing the Engine
    # directly and one importing the Engine's events, and the job importing a worker.
    for name in ("bus", "trainer", "workers"):
        shutil.copytree(
            ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "static")
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "trainer" / "unplaced.py").write_text("VALUE = 1\n")
    (tmp_path / "workers" / "unplaced.py").write_text("import trainer.engine\n")
    with open(tmp_path / "workers" / "budget.py", "a") as module:
        module.write("import trainer.events\n")
    with open(tmp_path / "trainer" / "job.py", "a") as module:
        module.write("import workers.kinds\n")
    report = lint_imports(tmp_path).stdout
    assert "Contracts: 0 kept, 4 broken." in report, report
    assert "trainer.job -> workers.kinds" in report
    assert "workers.budget -> trainer.events" in report
    assert "workers.unplaced -> trainer.engine" in report
    assert "- trainer.unplaced" in report and "- workers.unplaced" in report


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
