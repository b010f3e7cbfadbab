"""`trainer run [CONFIG] [key=value ...] [--bus URL] [--run-id ID] [--resume ...] [--run-dir DIR]
[--nproc N]`.

Without --bus the embedded default runs: the trainer and the workers the config lists, in this
process, on an in-memory bus. With --bus only the trainer runs, publishing run ID; workers
attach to it from anywhere (`trainer worker KIND --bus URL --run ID`).

With --nproc N > 1 this process starts N ranks through torch's launcher (`trainer.cli.launch`)
and waits for them. Under torchrun (WORLD_SIZE > 1 in the environment) this process is one rank:
it joins the process group and trains its share of the job on the shared run (without --bus,
rank 0 runs the workers and the ranks share the run through torch.distributed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer import config
from trainer.cli.environment import BUS_URL_ENV, SECRET_ENV
from trainer.cli.errors import USAGE_ERROR, UsageError
from trainer.cli.launch import (
    RANKS_DIR,
    RankLost,
    RankProcess,
    RankStopped,
    launch_ranks,
    refuse_unshared_bus,
    world_from_env,
)
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

if TYPE_CHECKING:
    from trainer.job import Job  # torch: imported only when training

# Exit status of a run that failed (an exception ended it); stops by vote or TERMINATE are 0.
FAILED = 1
# Held while a job is built: building seeds the global RNGs and draws the model's weights.
BUILD_LOCK = threading.Lock()
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
    run.add_argument(
        "--with-workers",
        action="store_true",
        help="with --bus, run the config's workers in this process too (as without --bus), "
        "publishing on the bus: a self-contained run that other workers may join (what "
        "`trainer agent` runs a sweep's trial as)",
    )
    run.add_argument(
        "--sweep-trial",
        metavar="JSON",
        help="mark the run as a trial of a sweep: its RUN_STARTED carries this map as `sweep` "
        '({"id": ..., "trial": N, "params": {...}}); set by `trainer sweep` and `trainer agent`',
    )
    run.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="train with N ranks on this machine (CPU, gloo), started by torch's launcher "
        "(torch.distributed.run); they share the run on --bus, or without it through "
        "torch.distributed, rank 0 running the workers (default: this process trains alone)",
    )
    run.set_defaults(handler=command)


def command(args: argparse.Namespace, extras: list[str]) -> int:
    """Build the config, find the run directory and checkpoint, and train (or start ranks)."""
    config_path, overrides = split_config_and_overrides(args.config, args.overrides, extras)
    cfg = config.load(config_path, overrides)
    sweep = sweep_marker(args.sweep_trial)
    nproc, world = _nproc(args), world_from_env()
    resume: ResumePoint | None = None
    try:
        if args.resume is not None:
            resume = resolve_resume(args.resume, args.run_dir, cfg.run.dir, cfg.run.name)
            if config_path is None and resume.run_dir is not None:
                # No CONFIG given: continue with the config the resumed run was saved with.
                cfg = config.load(resume.run_dir / CONFIG_FILE, overrides)
        cfg.freeze()
        policy = _vote_policy(cfg)
        from trainer.cli.embedded import check_plugins

        check_plugins(cfg, embedded=args.bus is None or args.with_workers)  # before any run dir
        run_dir = _chosen_run_dir(args, resume)
    except ResumeError as exc:
        raise UsageError(str(exc)) from None

    if nproc > 1 or world > 1:
        refuse_unshared_bus(max(nproc, world), args.bus)
    if args.bus is not None:
        check_bus(args.bus, cfg.bus.namespace)  # before any run directory is made
    if nproc > 1:
        return _start_ranks(args, nproc, config_path, overrides, cfg, resume, run_dir)
    if world > 1:
        return _as_rank(args, cfg, policy, resume, run_dir, sweep)
    return train(cfg, policy, resume, run_dir, None, _target(args, sweep))


def sweep_marker(text: str | None) -> dict[str, Any] | None:
    """--sweep-trial's map, checked as RUN_STARTED's `sweep` must be."""
    if text is None:
        return None
    import json

    from bus import Rejected
    from bus.messages import EVENTS, RUN_STARTED, check_data

    try:
        marker = json.loads(text)
        check_data(RUN_STARTED, {**_STARTED_KEYS, "sweep": marker}, topic=EVENTS)
    except (ValueError, Rejected) as exc:
        raise UsageError(
            f"--sweep-trial {text!r}: {exc}; give a JSON map "
            '{"id": "SWEEP", "trial": N, "params": {...}}'
        ) from None
    return dict(marker)


# Stand-ins for RUN_STARTED's other required keys, to check `sweep` with the one check.
_STARTED_KEYS = {"config": {}, "rank": 0, "world_size": 1, "host": "", "pid": 0}
_STARTED_KEYS["resumed_from"] = None


@dataclass(frozen=True)
class Target:
    """Where a run publishes and who serves it: the bus, whether this process hosts the
    config's workers, its run id if fixed, whether it is a sweep's trial, and its output."""

    bus_url: str | None  # None: an in-memory bus of its own
    with_workers: bool
    run_id: str | None = None
    sweep: dict[str, Any] | None = None
    echo: Callable[[str], None] = field(default=lambda line: print(line, flush=True))


def _target(args: argparse.Namespace, sweep: dict[str, Any] | None) -> Target:
    return Target(
        bus_url=args.bus,
        with_workers=args.bus is None or args.with_workers,
        run_id=args.run_id,
        sweep=sweep,
    )


def _nproc(args: argparse.Namespace) -> int:
    """--nproc, checked: a number of ranks >= 1, not given to a process that is a rank already."""
    if args.nproc is None:
        return 1
    if args.nproc < 1:
        raise UsageError(f"--nproc {args.nproc}: the number of ranks must be 1 or more")
    if args.nproc > 1 and world_from_env() > 1:
        raise UsageError(
            f"--nproc {args.nproc} inside a launcher that started this process as one of "
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} ranks: leave --nproc out under torchrun"
        )
    return args.nproc


def _start_ranks(
    args: argparse.Namespace,
    nproc: int,
    config_path: str | Path | None,
    overrides: list[str],
    cfg: Config,
    resume: ResumePoint | None,
    run_dir: Path | None,
) -> int:
    """Make the run directory and id, then run `nproc` ranks of this command on them."""
    state: dict[str, Any] = {}
    if resume is not None:
        state = _refuse_other_ranks(resume, nproc)  # here, rather than in every rank
        from trainer.job import nothing_to_do

        done = nothing_to_do(cfg, state, resume)
        if done is not None:
            print(done, flush=True)
            return 0
    fresh = run_dir is None
    if run_dir is None:
        run_dir = new_run_dir(cfg.run.dir, cfg.run.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    from trainer.bridge.clock import saved_run_id

    saved = saved_run_id(state) if resume is not None else None
    run_id = args.run_id or _continued_id(resume, run_dir, saved) or run_dir.name
    status = launch_ranks(
        nproc,
        config_path,
        overrides,
        bus_url=args.bus,
        run_id=run_id,
        run_dir=run_dir,
        # The checkpoint found here, so every rank resumes from the same one.
        resume=resume.checkpoint if resume is not None else None,
        extra=_rank_options(args),
    )
    if status != 0 and fresh and not any(p.name != RANKS_DIR for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)  # the ranks refused the job: nothing to keep
    return status


def _rank_options(args: argparse.Namespace) -> list[str]:
    """The options of this command that each rank takes as they are."""
    extra = ["--with-workers"] if args.with_workers else []
    if args.sweep_trial is not None:
        extra += ["--sweep-trial", args.sweep_trial]
    return extra


def _refuse_other_ranks(resume: ResumePoint, nproc: int) -> dict[str, Any]:
    """The checkpoint's states; UsageError if it cannot be read, or was saved by another
    number of ranks."""
    from trainer.checkpoint_store import CheckpointError, load_checkpoint
    from trainer.job import check_resume_ranks

    try:
        state = load_checkpoint(resume.checkpoint, sha256=resume.sha256)
        check_resume_ranks(state, resume, nproc)
    except (CheckpointError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    return state


def _as_rank(
    args: argparse.Namespace,
    cfg: Config,
    policy: str | int,
    resume: ResumePoint | None,
    run_dir: Path | None,
    sweep: dict[str, Any] | None,
) -> int:
    """Train as one rank of a torchrun job; the exit status of this rank."""
    status = FAILED
    ranks: RankProcess | None = None
    try:
        ranks = RankProcess.join(cfg.dist.timeout)
        status = train(cfg, policy, resume, run_dir, ranks, _target(args, sweep))
    except (RankLost, RankStopped) as exc:
        rank = ranks.rank if ranks is not None else os.environ.get("RANK", "?")
        print(f"trainer: error: rank {rank}: {exc}", file=sys.stderr, flush=True)
    except (ConfigError, UsageError):
        status = USAGE_ERROR  # what the command exits with: the record says the same
        raise
    finally:
        if ranks is not None:
            ranks.quiet()
            _leave_group()
            ranks.ended(status)
    return status


def _leave_group() -> None:
    """Leave the process group (no collective: a lost rank cannot make it hang)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as exc:  # the run's end is already out; this rank only exits
            print(f"trainer: warning: leaving the process group: {exc}", file=sys.stderr)


def train(
    cfg: Config,
    policy: str | int,
    resume: ResumePoint | None,
    run_dir: Path | None,
    ranks: RankProcess | None,
    target: Target,
) -> int:
    """Build the job, then train it on the run (as one rank of several when `ranks` is given).

    Several runs may train at once in one process (the trials of `trainer sweep` without a
    bus): each is built under BUILD_LOCK, since building seeds and draws from the global RNGs.
    """
    from trainer.checkpoint_store import CheckpointError  # torch loads only when training
    from trainer.job import Job
    from trainer.reproducibility import prepare_process, seed_rank

    echo = target.echo
    with BUILD_LOCK:
        prepare_process(cfg.run.seed, cfg.run.threads)
        try:
            job = Job(cfg, resume)  # refuses a bad job before any directory is created
        except (CheckpointError, FileNotFoundError) as exc:
            raise UsageError(str(exc)) from None
        seed_rank(cfg.run.seed, job.rank, job.world_size)
    lead = ranks is None or ranks.rank == 0
    if job.nothing_to_do is not None:
        # A finished run resumed as it was: nothing is trained, published or rewritten.
        if lead:
            echo(job.nothing_to_do)
        return 0

    def fresh_dir() -> Path:
        return new_run_dir(cfg.run.dir, cfg.run.name)

    if ranks is not None:
        run_dir = ranks.shared_run_dir(run_dir, fresh_dir)  # plain torchrun: rank 0 makes it
    elif run_dir is None:
        run_dir = fresh_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    if ranks is not None:
        ranks.record(run_dir)
    run_id = target.run_id or _continued_id(resume, run_dir, job.resumed_run_id) or run_dir.name
    if resume is not None and lead:
        echo(f"resuming from {resume.checkpoint}{_resumed_at(job)}")

    from trainer.bridge import BusRun
    from trainer.cli.embedded import EmbeddedWorkers

    link = BusRun(
        target.bus_url or f"memory://{run_id}",
        run_id,
        namespace=cfg.bus.namespace,
        config=cfg.to_dict(),
        rank=job.rank,
        world_size=job.world_size,
        publish_every=cfg.bus.publish_every,
        policy=policy,
        barrier=cfg.bus.barrier,
        barrier_timeout=cfg.bus.barrier_timeout,
        heartbeat_timeout=cfg.bus.heartbeat_timeout,
        secret=os.environ.get(SECRET_ENV) or None,
        resumed_from=str(resume.checkpoint) if resume is not None else None,
        checkpoint_dir=(run_dir / CHECKPOINT_DIR).resolve(),
        run_dir=run_dir.resolve(),
        stop_sync_every=cfg.dist.stop_sync_every,  # between ranks: how often they agree
        probes=list(cfg.bus.probes),
        sweep=target.sweep,
    )
    if lead:
        echo(f"run id: {run_id}")
    workers = None
    try:
        if target.with_workers and lead:  # without a bus, rank 0 hosts the workers
            workers = EmbeddedWorkers.start(link, cfg.workers, namespace=cfg.bus.namespace)
        result = job.run(
            run_dir,
            link,
            echo=echo if lead else (lambda line: None),
            explain=ranks.explain if ranks is not None else None,
        )
        if ranks is not None:
            ranks.quiet()  # the run is over: a late stop signal must not cut its report short
        if workers is not None:
            workers.wait()
    finally:
        if workers is not None:
            workers.stop()
        link.close()
    status = FAILED if result.status == "failed" else 0
    if not lead:
        return status
    result.latest_checkpoint, result.best_checkpoint = _kept(run_dir / CHECKPOINT_DIR)
    result.write()
    by = f" by {result.by}" if result.by else ""
    if result.voter and result.voter != result.by:
        by += f", voter {result.voter}"
    ending = ENDINGS[result.status].format(by=by, reason=result.reason)
    echo(
        f"final validation {result.val_summary()} after {result.epochs} epochs, "
        f"{result.iteration} iterations{ending}"
    )
    echo(f"outputs: {run_dir}")
    return status


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


def _continued_id(resume: ResumePoint | None, run_dir: Path, saved: str | None) -> str | None:
    """The id a resumed run continues under: the one its checkpoint saved, when it continues
    in the run directory the checkpoint belongs to (a resume into another one is a new run)."""
    if resume is None or resume.run_dir is None:
        return None
    return saved if resume.run_dir.resolve() == run_dir.resolve() else None


def _resumed_at(job: Job) -> str:
    """' (in epoch 2/3, after iteration 30)': where the resumed run goes on, counted from 1."""
    state = (job.resume_state or {}).get("trainer")
    if not isinstance(state, dict):
        return ""
    epoch = state.get("epochs_completed", 0) + 1  # the epoch it goes on with, from 1
    where = f"in epoch {epoch}/{job.cfg.train.epochs}, after iteration {state.get('iteration')}"
    return f" ({where})"


def _kept(checkpoint_dir: Path) -> tuple[str | None, str | None]:
    """The latest and best checkpoint files the checkpoint worker's manifest names, if any."""
    from trainer.manifest import read_manifest

    manifest = read_manifest(checkpoint_dir, missing_ok=True)
    return manifest.get("latest"), manifest.get("best")
