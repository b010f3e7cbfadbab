"""Import paths ("package.module:Name") named in configs and on command lines, resolved here.

Data sets, models, worker kinds and probes plug in by such a path, so that your own code needs
no change to this project. Torch-free: `trainer worker` resolves kinds with it too.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from trainer.errors import TrainerError


class PluginError(TrainerError, ValueError):
    """An import path that names nothing usable; the message names it, its origin and the fix."""


def is_import_path(name: str) -> bool:
    """Whether `name` is written as an import path ("package.module:Name") rather than a name."""
    return ":" in name


def _dotted(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _cwd_importable() -> None:
    # As `python -m`, uvicorn and gunicorn do: code beside where the command runs imports, also
    # from the `trainer` console script (whose sys.path starts at its own bin/ directory).
    # Appended: it never shadows an installed package.
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)


def import_path(spec: str, *, what: str, where: str) -> Any:
    """The object `spec` ("package.module:Name") names.

    PluginError (one line) names `what` it is (e.g. "worker kind"), `spec`, `where` it came
    from (e.g. "config 'workers[1]'") and the fix, for a malformed path, a module that does not
    import or a missing attribute.
    """
    module_name, _, attr = spec.partition(":")
    head = f"{what} {spec!r} ({where})"
    if not (_dotted(module_name) and _dotted(attr)):
        raise PluginError(f"{head} is not an import path: write 'package.module:Name'")
    _cwd_importable()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            fix = (
                f"no module {missing!r} on the path: run from the directory that holds it, "
                "put that directory on PYTHONPATH, or pip install its package"
            )
        else:
            fix = f"{module_name} imports {missing!r}, which is not installed: install it"
        raise PluginError(f"{head}: {fix}") from exc
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise PluginError(
            f"{head}: importing {module_name!r} failed with {type(exc).__name__}: {detail}; "
            "fix that module"
        ) from exc
    found: Any = module
    for part in attr.split("."):
        if not hasattr(found, part):
            raise PluginError(
                f"{head}: module {module_name!r} has no attribute {attr!r}; "
                "check the name after ':'"
            )
        found = getattr(found, part)
    return found
