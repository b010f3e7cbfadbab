"""The frameworks the adapters need, each an optional extra, and the error when one is missing.

An adapter module imports its framework through `require` at its top, so that importing it
without the extra fails at once with one line naming the fix.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from trainer.errors import TrainerError


class MissingFramework(TrainerError, ImportError):
    """An adapter's framework is not installed; the message names the extra to install."""


def require(module: str, *, adapter: str, framework: str, extra: str) -> ModuleType:
    """Import `module` for `adapter`; MissingFramework names the extra when it is not there."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingFramework(
            f"{adapter} needs {framework}: pip install -e '.[{extra}]' torch==2.13.0 "
            f"(importing {module!r} failed: {exc})"
        ) from None
