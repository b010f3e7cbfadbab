"""Separating CONFIG from `key=value` overrides, wherever on the command line they stand."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trainer.cli.errors import UsageError
from trainer.config import cli_overrides


def is_override(arg: str) -> bool:
    """Whether a command-line word is a config override (`a.b=1` or `--a.b=1`)."""
    return "=" in arg and (not arg.startswith("-") or (arg.startswith("--") and arg[2:3] != "="))


def split_config_and_overrides(
    config: str | None, positionals: Sequence[str], extras: Sequence[str]
) -> tuple[Path | None, list[str]]:
    """CONFIG (optional: a first word holding '=' is an override) and the overrides in order.

    `extras` are the words argparse did not recognise: overrides written after the options.
    Anything else among them is refused, naming it.
    """
    words = [config, *positionals] if config is not None else list(positionals)
    unknown = [w for w in extras if not is_override(w)]
    if unknown:
        raise UsageError(
            f"unrecognized arguments: {' '.join(unknown)} (overrides look like key=value)"
        )
    extras = cli_overrides(extras)
    if words and "=" in words[0] and not Path(words[0]).is_file():
        return None, [*words, *extras]
    config_path = Path(words[0]) if words else None
    strays = [w for w in words[1:] if "=" not in w]
    if strays:
        raise UsageError(
            f"unexpected argument {strays[0]!r} after CONFIG {str(config_path)!r}: "
            "overrides look like key=value"
        )
    return config_path, [*words[1:], *extras]
