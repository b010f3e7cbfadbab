"""`trainer config [CONFIG] [key=value ...]`: print the resolved config as YAML."""

from __future__ import annotations

import argparse
from typing import Any

from trainer import config
from trainer.cli.overrides import split_config_and_overrides


def add_parser(commands: Any) -> None:
    """Register the `config` command."""
    show = commands.add_parser(
        "config",
        help="print the resolved config",
        description="Print the config CONFIG and overrides resolve to, as YAML, and exit.",
    )
    show.add_argument("config", nargs="?", metavar="CONFIG", help="YAML config file")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="overrides")
    show.set_defaults(handler=command)


def command(args: argparse.Namespace, extras: list[str]) -> int:
    """Print the resolved config."""
    config_path, overrides = split_config_and_overrides(args.config, args.overrides, extras)
    print(config.load(config_path, overrides).to_yaml(), end="")
    return 0
