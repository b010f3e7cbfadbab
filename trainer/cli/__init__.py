"""The `trainer` command: one module per subcommand, each parsing its arguments and handing over.

This package is the composition root: the only code that knows the trainer, the bus and the
workers together. Commands that need no torch (`worker` for the voters and the checkpointer,
`config`) never import it.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence

from trainer.cli import agent as agent_command
from trainer.cli import config as config_command
from trainer.cli import monitor as monitor_command
from trainer.cli import run as run_command
from trainer.cli import runs as runs_command
from trainer.cli import sweep as sweep_command
from trainer.cli import web as web_command
from trainer.cli import worker as worker_command
from trainer.cli.errors import USAGE_ERROR, UsageError
from trainer.config import ConfigError

# Exit status when the storage refused a write (a failed run's status, as in `trainer run`).
FAILED = 1
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}

COMMANDS = (
    run_command,
    worker_command,
    monitor_command,
    config_command,
    runs_command,
    web_command,
    sweep_command,
    agent_command,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `trainer` command."""
    parser = argparse.ArgumentParser(
        prog="trainer", description="Train with the event-bus training engine."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trainer` console script; returns the exit status."""
    parser = build_parser()
    # Unknown arguments are handed to the command: overrides may follow the options, and a
    # worker kind parses its own options.
    args, extras = parser.parse_known_args(argv)
    try:
        return args.handler(args, extras)
    except (ConfigError, UsageError) as exc:
        parser.exit(USAGE_ERROR, f"trainer: error: {exc}\n")
    except OSError as exc:
        if exc.errno not in STORAGE_ERRORS:
            raise
        # A full disk or a read-only directory: what could be written is whole (every file is
        # written atomically or appended), and the traceback would say nothing more.
        where = f" {exc.filename}" if exc.filename else ""
        parser.exit(FAILED, f"trainer: error: cannot write{where}: {exc.strerror or exc}\n")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
