"""One name, one meaning: no two modules of bus, trainer and workers define the same name."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def public_definitions() -> dict[str, list[str]]:
    """Each public class name and each `...KINDS` constant, with the modules that define it."""
    where: dict[str, list[str]] = defaultdict(list)
    for package in ("bus", "trainer", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for node in ast.parse(path.read_text(), str(path)).body:
                if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                    where[node.name].append(module)
                targets = [node.target] if isinstance(node, ast.AnnAssign) else []
                targets += node.targets if isinstance(node, ast.Assign) else []
                for target in targets:
                    if isinstance(target, ast.Name) and target.id.endswith("KINDS"):
                        where[target.id].append(module)
    return where


def test_no_public_class_or_kinds_name_is_defined_twice() -> None:
    # A reader (and an import) must not confuse bus.Tail with a file follower, or the
    # in-process Checkpoint handler with a checkpoint the monitor shows.
    twice = {name: modules for name, modules in public_definitions().items() if len(modules) > 1}
    assert twice == {}, "rename one of each, after what it means"
