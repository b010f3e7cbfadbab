"""Other frameworks' training loops on the bus: Lightning, Hugging Face, Ignite.

`trainer.adapters.core.LoopBridge` is the framework-neutral core every adapter calls from its
framework's hooks; `trainer.adapters.ignite.attach_bus`, `trainer.adapters.lightning` and
`trainer.adapters.hf` are the adapters, each needing its framework as an extra
(`pip install -e ".[ignite]"`, `[lightning]`, `[hf]`). Importing this package imports no
framework and nothing heavy: names load when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.adapters.core import LoopBridge, StepDecision
    from trainer.adapters.extras import MissingFramework

_LAZY = {
    "LoopBridge": "trainer.adapters.core",
    "StepDecision": "trainer.adapters.core",
    "MissingFramework": "trainer.adapters.extras",
}

__all__ = ["LoopBridge", "MissingFramework", "StepDecision"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainer.adapters' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
