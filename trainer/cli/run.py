"""`trainer run [CONFIG] [key=value ...] [--bus URL] [--run-id ID] [--resume ...] [--run-dir DIR]`.

Without --bus the embedded default runs: the trainer and the workers the config lists, in this
process, on an in-memory bus. With --bus only the trainer runs, publishing run ID; workers
attach to it from anywhere (`trainer worker KIND --bus URL --run ID`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from trainer import config
from trainer.cli.environment import BUS_URL_ENV, SECRET_ENV
from trainer.cli.errors import UsageError
from trainer.cli.overrides import split_config_and_overrides
from trainer.cli.reach import check_bus
from trainer.config import Config, ConfigError
from trainer.run_dir import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    ResumeError,
    ResumePoint,
    new_run_dir,
    resolve_resume,
)

# Exit status of a run that failed (an exception ended it); stops by vote or TERMINATE are 0.
FAILED = 1
ENDINGS = {"completed": "", "terminated": " (stopped{by}: {reason})", "failed": " (failed)"}


def add_parser(commands: Any) -> None:
    """Register the `run` command."""
    run = commands.add_parser(
        "run",
        help="train as a config says",
        description="Train as CONFIG (YAML) says, with key=value overrides applied on top (before "
        "or after the options). Without CONFIG the embedded default runs: an MLP on "
        "scikit-learn's digits. Without --bus, the workers the config lists run in this process.",
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
        "--bus",
        metavar="URL",
        default=os.environ.get(BUS_URL_ENV) or None,
        help="publish the run on this bus (redis://[user:password@]host:port/db) and run only "
        f"the trainer; workers attach with `trainer worker KIND --bus URL --run ID` (default: "
        f"${BUS_URL_ENV}; unset: the embedded default, workers in this process)",
    )
    run.add_argument(
        "--run-id",
        metavar="ID",
        help="the run's id on the bus (default: the run directory's name, printed at start)",
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
    run.set_defaults(handler=command)


def command(args: argparse.Namespace, extras: list[str]) -> int:
    """Build the config, find the run directory and checkpoint, and train."""
    config_path, overrides = split_config_and_overrides(args.config, args.overrides, extras)
    cfg = config.load(config_path, overrides)
    resume: ResumePoint | None = None
    try:
        if args.resume is not None:
            resume = resolve_resume(args.resume, args.run_dir, cfg.run.dir, cfg.run.name)
            if config_path is None and resume.run_dir is not None:
                # No CONFIG given: continue with the config the resumed run was saved with.
                cfg = config.load(resume.run_dir / CONFIG_FILE, overrides)
        cfg.freeze()
        policy = _vote_policy(cfg)
        run_dir = _chosen_run_dir(args, resume)
    except ResumeError as exc:
        raise UsageError(str(exc)) from None

    if args.bus is not None:
        check_bus(args.bus, cfg.bus.namespace)  # before any run directory is made
    from trainer.checkpoint_store import CheckpointError  # torch loads only when training
    from trainer.job import Job

    try:
        job = Job(cfg, resume)  # refuses a bad job before any directory is created
    except (CheckpointError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    if run_dir is None:
        run_dir = new_run_dir(cfg.run.dir, cfg.run.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = args.run_id or run_dir.name
    if resume is not None:
        print(f"resuming from {resume.checkpoint}", flush=True)

    from trainer.bridge import BusRun
    from trainer.cli.embedded import EmbeddedWorkers

    link = BusRun(
        args.bus or f"memory://{run_id}",
        run_id,
        namespace=cfg.bus.namespace,
        config=cfg.to_dict(),
        publish_every=cfg.bus.publish_every,
        policy=policy,
        barrier=cfg.bus.barrier,
        barrier_timeout=cfg.bus.barrier_timeout,
        heartbeat_timeout=cfg.bus.heartbeat_timeout,
        secret=os.environ.get(SECRET_ENV) or None,
        resumed_from=str(resume.checkpoint) if resume is not None else None,
        checkpoint_dir=(run_dir / CHECKPOINT_DIR).resolve(),
        run_dir=run_dir.resolve(),
    )
    print(f"run id: {run_id}", flush=True)
    workers = None
    try:
        if args.bus is None:
            workers = EmbeddedWorkers.start(link, cfg.workers, namespace=cfg.bus.namespace)
        result = job.run(run_dir, link, echo=lambda line: print(line, flush=True))
        if workers is not None:
            workers.wait()
    finally:
        if workers is not None:
            workers.stop()
        link.close()
    result.latest_checkpoint, result.best_checkpoint = _kept(run_dir / CHECKPOINT_DIR)
    result.write()
    by = f" by {result.by}" if result.by else ""
    ending = ENDINGS[result.status].format(by=by, reason=result.reason)
    print(
        f"final validation {result.val_summary()} after {result.epochs} epochs, "
        f"{result.iteration} iterations{ending}"
    )
    print(f"outputs: {run_dir}")
    return FAILED if result.status == "failed" else 0


def _vote_policy(cfg: Config) -> str | int:
    """`bus.policy` as the bridge takes it: any, majority, all, or a quorum k >= 1."""
    value = str(cfg.bus.policy)
    if value in ("any", "majority", "all"):
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise ConfigError(
        f"bad value for 'bus.policy' (set by {cfg.source_of('bus.policy')}): {value!r}; use "
        "any, majority, all, or a quorum of k stop votes (a whole number >= 1)",
        key="bus.policy",
    )


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


def _kept(checkpoint_dir: Path) -> tuple[str | None, str | None]:
    """The latest and best checkpoint files the checkpoint worker's manifest names, if any."""
    from trainer.manifest import read_manifest

    manifest = read_manifest(checkpoint_dir, missing_ok=True)
    return manifest.get("latest"), manifest.get("best")
