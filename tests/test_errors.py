"""One error root per package: every exception a package defines derives from its root."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import bus
import trainer
import workers
from bus.errors import BusError
from trainer.adapters.extras import MissingFramework
from trainer.errors import TrainerError
from workers.errors import WorkerError

# Signals to stop, not errors: drawn as such in each root's docstring.
SIGNALS = {
    "bus.tail._Closed",
    "trainer.cli.launch.RankStopped",
    "workers.base.WorkerStopping",
    "workers.monitor.app._Stopped",
}


def exceptions_defined_in(package: object) -> list[type[BaseException]]:
    """Every exception class defined by a module of `package`, found by walking it."""
    found = []
    for module_info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        if module_info.name.rpartition(".")[2] == "__main__":
            continue  # runs the command when imported
        try:
            module = importlib.import_module(module_info.name)
        except MissingFramework:
            continue  # an adapter whose framework (an optional extra) is not installed
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found.append(value)
    return found


@pytest.mark.parametrize(
    ("package", "root"), [(trainer, TrainerError), (workers, WorkerError), (bus, BusError)]
)
def test_every_exception_of_a_package_derives_from_its_root(
    package: object, root: type[Exception]
) -> None:
    classes = exceptions_defined_in(package)
    assert root in classes
    rootless = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in classes
        if not issubclass(cls, root) and f"{cls.__module__}.{cls.__qualname__}" not in SIGNALS
    ]
    assert rootless == [], f"derive these from {root.__module__}.{root.__name__}"


@pytest.mark.parametrize("root", [TrainerError, WorkerError, BusError])
def test_each_root_draws_its_whole_tree(root: type[Exception]) -> None:
    # The tree in the root module's docstring lists every error, so a reader sees them all.
    package = importlib.import_module(root.__module__.partition(".")[0])
    tree = inspect.getmodule(root).__doc__ or ""
    for cls in exceptions_defined_in(package):
        if issubclass(cls, root):
            assert re.search(rf"^ +(\W+ )?{cls.__name__}\b", tree, re.MULTILINE), cls.__name__


def test_errors_keep_the_builtin_bases_callers_catch() -> None:
    from trainer.config import ConfigError
    from trainer.tracking.errors import RunNotFound, TrackingError

    assert issubclass(ConfigError, ValueError)
    assert issubclass(RunNotFound, LookupError)
    assert issubclass(RunNotFound, TrackingError)
