"""A worker kind of your own: found by import path, its options from a declarative SETTINGS."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import pytest

from bus import Envelope
from trainer.cli import main
from workers.base import Setting, Worker
from workers.context import RunContext
from workers.kinds import load_kind

PLUGINS = {
    "guards.py": """
        from workers.base import Setting, Worker

        class Guard(Worker):
            kind = "my-guard"
            votes = True
            SETTINGS = (Setting("limit_mb", float, help="the limit", gt=0),)

            async def handle(self, env):
                pass

        class Nameless(Worker):
            async def handle(self, env):
                pass

        class Plain:
            kind = "plain"
    """,
    "broken.py": "import a_dependency_not_installed\n",
}


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of plugin modules on sys.path (forgotten after the test)."""
    for name, text in PLUGINS.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in PLUGINS:
        sys.modules.pop(name.removesuffix(".py"), None)


def test_a_kind_is_found_by_its_import_path_and_named_on_the_bus_by_its_kind(plugins) -> None:
    kind = load_kind("guards:Guard")
    assert (kind.__name__, kind.kind, kind.votes) == ("Guard", "my-guard", True)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "no_such_pkg.guards:Guard",
            "worker kind 'no_such_pkg.guards:Guard' (config 'workers[1]'): no module "
            "'no_such_pkg' on the path: run from the directory that holds it, put that "
            "directory on PYTHONPATH, or pip install its package",
        ),
        (
            "broken:Guard",
            "worker kind 'broken:Guard' (config 'workers[1]'): broken imports "
            "'a_dependency_not_installed', which is not installed: install it",
        ),
        (
            "guards:Missing",
            "worker kind 'guards:Missing' (config 'workers[1]'): module 'guards' has no "
            "attribute 'Missing'; check the name after ':'",
        ),
        (
            "guards:Plain",
            "worker kind 'guards:Plain' (config 'workers[1]'): guards:Plain is a class, not a "
            "subclass of workers.base.Worker; derive the class from Worker",
        ),
        (
            "guards:Nameless",
            "worker kind 'guards:Nameless' (config 'workers[1]'): guards:Nameless.kind is None; "
            "set the class attribute kind to the name it has on the bus, e.g. kind = "
            "'memory-guard' (letters, digits, '-', '_', '.')",
        ),
        (
            "guards",
            "unknown worker kind 'guards': use one of metrics, checkpoint, tracking, early-stop, "
            "nan-guard, budget, pruner or an import path 'package.module:Class' "
            "(config 'workers[1]')",
        ),
    ],
)
def test_a_bad_kind_is_one_line_naming_it_its_origin_and_the_fix(plugins, name, message) -> None:
    with pytest.raises(ValueError) as caught:
        load_kind(name, where="config 'workers[1]'")
    assert str(caught.value) == message


def test_the_command_line_takes_a_kind_by_import_path(plugins, capsys) -> None:
    assert main(["worker", "guards:Guard", "--help"]) == 0
    assert "--limit-mb LIMIT_MB  the limit; default: off" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        main(["worker", "guards:Missing", "--bus", "redis://127.0.0.1:1/0", "--run", "r"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("trainer: error: trainer worker: worker kind 'guards:Missing' (given")
    assert len(err.splitlines()) == 1
    # A kind option that can never work is refused before the bus is contacted.
    with pytest.raises(SystemExit) as exited:
        main(["worker", "guards:Guard", "--bus", "redis://x:1/0", "--run", "r", "--limit-mb", "-3"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "trainer: error: trainer worker: my-guard --limit-mb -3.0 is not a number > 0\n"
    )


class Sized(Worker):
    """A kind whose options are all declared."""

    kind = "sized"
    SETTINGS = (
        Setting("limit_mb", float, help="the limit", config="extra.sized.limit_mb", gt=0),
        Setting("key", str, default="probe/memory_mb", config="extra.sized.key"),
        Setting("every", int, default=1, ge=1),
    )

    async def handle(self, env: Envelope) -> None:
        pass


def test_settings_make_the_options_their_checks_and_their_values() -> None:
    parser = argparse.ArgumentParser()
    Sized.add_arguments(parser)
    options = vars(parser.parse_args(["--limit-mb", "512"]))
    assert options == {"limit_mb": 512.0, "key": None, "every": None}
    Sized.check_options(options)
    with pytest.raises(ValueError, match=r"^sized --limit-mb -1.0 is not a number > 0$"):
        Sized.check_options({"limit_mb": -1.0})
    with pytest.raises(ValueError, match=r"^sized --every 0 is not an int >= 1$"):
        Sized.check_options({"every": 0})


async def test_a_setting_is_the_option_else_the_runs_config_else_its_default(
    worker_ctx: RunContext,
) -> None:
    ctx = worker_ctx
    config = {"extra": {"sized": {"limit_mb": 64, "key": ""}}}
    ctx.learn_started(Envelope("RUN_STARTED", "r", "trainer:0", {"config": config}))
    worker = Sized(ctx, {"limit_mb": None, "key": None, "every": 3})
    assert (worker.setting("limit_mb"), worker.setting("every")) == (64, 3)
    with pytest.raises(ValueError, match=r"config extra.sized.key '' is not a non-empty string"):
        worker.setting("key")
    assert Sized(ctx, {"limit_mb": 8.0}).setting("limit_mb") == 8.0
    with pytest.raises(TypeError, match="sized votes: set the class attribute votes = True"):
        await worker.vote_stop("no", Envelope("ITERATION_COMPLETED", "r", "trainer:0", {}))
