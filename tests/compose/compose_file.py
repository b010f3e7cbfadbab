"""compose.yaml read as Docker Compose reads it: YAML anchors and merge keys, `${VAR}`
interpolation from the environment, and the argv and environment of each service.

There is no Docker engine on the test machines, so the tests run each service's command as a
local process; this module is what turns a service into that process.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR; $$ is a literal $.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(ValueError):
    """A `${VAR:?message}` (or `${VAR?message}`) whose variable has no value."""


def load(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """The compose file as data, anchors and merge keys expanded, nothing interpolated."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def variables(node: Any) -> list[tuple[str, str | None, str | None]]:
    """Every variable reference in `node`'s strings: (name, operator, argument)."""
    found: list[tuple[str, str | None, str | None]] = []
    if isinstance(node, str):
        for match in _VARIABLE.finditer(node):
            if match["escaped"]:
                continue
            name = match["braced"] or match["bare"]
            found.append((name, match["op"], match["arg"]))
    elif isinstance(node, Mapping):
        for key, value in node.items():
            found += variables(key) + variables(value)
    elif isinstance(node, list):
        for item in node:
            found += variables(item)
    return found


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """`node` with every `${VAR...}` replaced as Compose does, from `env`.

    A required variable without a value raises `MissingVariable` with Compose's message;
    `:?` and `:-` treat an empty value as none, `?` and `-` only an unset one.
    """
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            if match["escaped"]:
                return "$"
            name = match["braced"] or match["bare"]
            op, arg = match["op"], match["arg"] or ""
            value = env.get(name)
            if op in (":-", ":?") and not value:
                value = None
            if value is None:
                if op and op.endswith("?"):
                    # Compose's own words (compose-go's MissingRequiredError).
                    raise MissingVariable(f"required variable {name} is missing a value: {arg}")
                return arg if op and op.endswith("-") else ""
            return value

        return _VARIABLE.sub(replace, node)
    if isinstance(node, Mapping):
        return {interpolate(k, env): interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    return node


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, in either of its two forms, as a dict of strings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {key: value for key, _, value in pairs}
    return {key: "" if value is None else str(value) for key, value in env.items()}


def volume_mounts(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source, container path) of each of a service's volumes (short syntax)."""
    mounts = []
    for item in service.get("volumes") or []:
        source, _, rest = item.partition(":")
        target = rest.split(":")[0]
        mounts.append((source, target))
    return mounts
