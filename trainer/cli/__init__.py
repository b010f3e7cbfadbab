"""The `trainer` command: `trainer run [CONFIG] [key=value ...] [--resume ...] [--run-dir DIR]`.

Without CONFIG the embedded default job runs (an MLP on scikit-learn's digits). This module is
the composition root: it alone turns command-line arguments into a config, a run directory and
a job.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from trainer import config
from trainer.checkpoint_store import CheckpointError
from trainer.config import ConfigError
from trainer.run_dir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    ResumeError,
    ResumePoint,
    new_run_dir,
    resolve_resume,
)

USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `trainer` command."""
    parser = argparse.ArgumentParser(
        prog="trainer", description="Train with the event-bus training engine."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="train as a config says",
        description="Train as CONFIG (YAML) says, with key=value overrides applied on top. "
        "Without CONFIG the embedded default runs: an MLP on scikit-learn's digits.",
    )
    run.add_argument(
        "config",
        nargs="?",
        metavar="CONFIG",
        help="YAML config file (optional: defaults to the embedded digits job)",
    )
    run.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides, e.g. train.epochs=20"
    )
    run.add_argument(
        "--resume",
        metavar="latest|best|PATH",
        help="continue at a checkpoint's iteration: the latest or best one of --run-dir (or of "
        "the newest run of this name), or a checkpoint file or run directory",
    )
    run.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="write outputs here (default: <run.dir>/<run.name>-<timestamp>-<id>, or the "
        "resumed run's directory)",
    )

    show = commands.add_parser(
        "config",
        help="print the resolved config",
        description="Print the config CONFIG and overrides resolve to, as YAML, and exit.",
    )
    show.add_argument("config", nargs="?", metavar="CONFIG", help="YAML config file")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="overrides")
    return parser


def _split_positionals(args: argparse.Namespace) -> tuple[Path | None, list[str]]:
    """CONFIG is optional, so a first positional holding '=' is an override, not a file."""
    positionals = [args.config, *args.overrides] if args.config is not None else []
    if positionals and "=" in positionals[0] and not Path(positionals[0]).is_file():
        return None, positionals
    return (Path(positionals[0]) if positionals else None), positionals[1:]


def _chosen_run_dir(args: argparse.Namespace, resume: ResumePoint | None) -> Path | None:
    """--run-dir, else the resumed run's own directory; None asks for a fresh one."""
    resumed = resume.run_dir if resume is not None else None
    if args.run_dir is None:
        return resumed
    continuing = resumed is not None and resumed.resolve() == args.run_dir.resolve()
    if not continuing and any((args.run_dir / CHECKPOINT_DIR).glob("*.pt")):
        # A new run must not mix its checkpoints with another run's.
        raise ResumeError(
            f"--run-dir {args.run_dir} already holds checkpoints of another run: continue it "
            "with --resume latest, or choose another directory"
        )
    return args.run_dir


def run_command(args: argparse.Namespace) -> int:
    """`trainer run`: build the config, find the run directory and checkpoint, and train."""
    config_path, overrides = _split_positionals(args)
    cfg = config.load(config_path, overrides)
    resume: ResumePoint | None = None
    if args.resume is not None:
        resume = resolve_resume(args.resume, args.run_dir, cfg.run.dir, cfg.run.name)
        if config_path is None and resume.run_dir is not None:
            # No CONFIG given: continue with the config the resumed run was saved with.
            cfg = config.load(resume.run_dir / CONFIG_FILE, overrides)
    cfg.freeze()
    run_dir = _chosen_run_dir(args, resume)

    from trainer.job import Job  # torch and the data stack load only when training

    job = Job(cfg, resume)  # refuses a bad job before any directory is created
    if run_dir is None:
        run_dir = new_run_dir(cfg.run.dir, cfg.run.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume is not None:
        print(f"resuming from {resume.checkpoint}", flush=True)
    result = job.run(run_dir, echo=lambda line: print(line, flush=True))
    ended = {"completed": "", "early_stopped": " (stopped early)", "terminated": " (terminated)"}
    print(
        f"final validation accuracy: {result.val['accuracy']:.4f} "
        f"(loss {result.val['loss']:.4f}) after {result.epochs} epochs, "
        f"{result.iteration} iterations{ended.get(result.status, '')}"
    )
    print(f"outputs: {run_dir}")
    return 0


def config_command(args: argparse.Namespace) -> int:
    """`trainer config`: print the resolved config."""
    config_path, overrides = _split_positionals(args)
    print(config.load(config_path, overrides).to_yaml(), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trainer` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"run": run_command, "config": config_command}
    try:
        return commands[args.command](args)
    except (ConfigError, ResumeError, CheckpointError, FileNotFoundError) as exc:
        parser.exit(USAGE_ERROR, f"trainer: error: {exc}\n")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
