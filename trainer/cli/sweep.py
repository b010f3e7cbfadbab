"""`trainer sweep [CONFIG] [key=value ...] --param KEY=SPEC ... [--trials N] [--parallel P]
[--sampler grid|random|tpe] [--seed S] [--bus URL] [--nproc N] [--pruner RULE] [--sweep-id ID]`.

A hyperparameter sweep: every trial is a normal run (its own run id, directory, checkpoints
and workers) whose RUN_STARTED carries `sweep` (id, trial, params); trials that ended are
replaced until N ran. Optuna suggests the values (the `sweep` extra); pruning is a `pruner`
worker's, on the bus, like any voter (the `sweep.pruner` section or --pruner runs one in this
process).

With --bus the trials are a queue on that bus: this command runs P of them itself (each a
`trainer run` process) and `trainer agent --bus URL --sweep ID` on any machine takes others;
--parallel 0 leaves them all to agents. Without --bus, as Optuna's in-memory studies do, the
whole sweep runs in this process on one in-memory bus: P trials at a time on threads, the pruner
beside them; trials of several ranks (--nproc) and agents need --bus.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from bus import InvalidTopic, Topics, open_bus
from trainer import config
from trainer.cli.environment import BUS_URL_ENV
from trainer.cli.errors import UsageError
from trainer.cli.overrides import split_config_and_overrides
from trainer.cli.reach import check_bus
from trainer.cli.sweep_session import (
    Stop,
    agent_name,
    embedded_pruner,
    local_agent,
    pruner_options,
)
from trainer.config import Config
from trainer.sweep_spec import SAMPLERS, SweepPlan, plan_sweep, trial_config
from workers.sweeps.orders import trial_run_id

# Exit status when every trial failed (as `trainer run` for a failed run); interrupted: 130.
FAILED = 1
INTERRUPTED = 130


def add_parser(commands: Any) -> None:
    """Register the `sweep` command."""
    sweep = commands.add_parser(
        "sweep",
        help="run a hyperparameter sweep: trials as normal runs, pruned on the bus",
        description="Run trials of CONFIG (with key=value overrides) that vary the keys "
        "--param (or the config's sweep: section) names, N in all, P at a time. SPEC: "
        "choice(a, b, ...), uniform(lo, hi), loguniform(lo, hi), int(lo, hi). With --bus the "
        "trials are a queue that `trainer agent --bus URL --sweep ID` on other machines share; "
        "without it the sweep runs in this process on an in-memory bus.",
    )
    sweep.add_argument("config", nargs="?", metavar="CONFIG", help="YAML config of the trials")
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of every trial")
    sweep.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=SPEC",
        help="a config key and the values it takes, e.g. --param optim.lr='loguniform(1e-4, "
        "1e-1)'; repeatable (adds to, or replaces, the config's sweep.params)",
    )
    sweep.add_argument(
        "--trials", type=int, metavar="N", help="trials in all (default sweep.trials; grid: all)"
    )
    sweep.add_argument(
        "--parallel",
        type=int,
        metavar="P",
        help="trials this command runs at once (default sweep.parallel, 1); 0: only agents",
    )
    sweep.add_argument(
        "--sampler", choices=SAMPLERS, help="how values are chosen (default sweep.sampler, tpe)"
    )
    sweep.add_argument("--seed", type=int, metavar="S", help="the sampler's seed")
    sweep.add_argument(
        "--bus",
        metavar="URL",
        default=os.environ.get(BUS_URL_ENV) or None,
        help=f"put the trials on this bus (redis://...) as a queue for agents (default: "
        f"${BUS_URL_ENV}; unset: the whole sweep in this process, on an in-memory bus)",
    )
    sweep.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="ranks per trial (default sweep.nproc, 1; needs --bus)",
    )
    sweep.add_argument(
        "--pruner",
        metavar="RULE",
        help="run a pruner in this process with this rule (asha, median, hyperband), options "
        "from sweep.pruner; or run `trainer worker pruner --sweep ID` anywhere",
    )
    sweep.add_argument("--sweep-id", metavar="ID", help="the sweep's id (default: a new one)")
    sweep.set_defaults(handler=command)


def command(args: argparse.Namespace, extras: list[str]) -> int:
    """Plan the sweep, refuse what cannot work, then run it to its end."""
    config_path, overrides = split_config_and_overrides(args.config, args.overrides, extras)
    cfg = config.load(config_path, overrides)
    plan = plan_sweep(
        cfg,
        args.param,
        trials=args.trials,
        parallel=args.parallel,
        sampler=args.sampler,
        seed=args.seed,
        nproc=args.nproc,
    )
    if args.pruner is not None:
        plan = _with_pruner(plan, args.pruner)
    namespace = cfg.bus.namespace
    if args.bus is None and plan.nproc > 1:
        raise UsageError(
            f"--nproc {plan.nproc}: the ranks of a trial are processes, which cannot share an "
            "in-memory bus with this sweep; give --bus redis://HOST:PORT/0"
        )
    if args.bus is None and plan.parallel == 0:
        raise UsageError(
            "--parallel 0 leaves every trial to agents (`trainer agent`), which need a shared "
            "bus: give --bus redis://HOST:PORT/0, or --parallel 1 or more"
        )
    sweep_id = args.sweep_id or new_sweep_id(cfg.run.name)
    try:
        Topics(namespace).trials(trial_run_id(sweep_id, plan.trials))
    except InvalidTopic as exc:
        raise UsageError(f"--sweep-id {sweep_id!r}: {exc}") from None
    if args.bus is not None:
        check_bus(args.bus, namespace)
    pruner = pruner_options(plan.pruner, sweep_id) if plan.pruner else None
    from workers.sweeps.sampler import SamplerUnavailable, Suggester

    try:
        suggester = Suggester(plan)
    except SamplerUnavailable as exc:
        raise UsageError(str(exc)) from None
    return asyncio.run(_sweep(args.bus, namespace, sweep_id, plan, cfg, suggester, pruner))


def _stop_on_failure(stop: asyncio.Event) -> Any:
    """A done-callback: a helper task that failed stops the sweep (its error is raised later)."""

    def done(task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            stop.set()

    return done


def new_sweep_id(name: str) -> str:
    """`<run.name>-sweep-<YYYYmmdd-HHMMSS>-<4 hex>`."""
    return f"{name}-sweep-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _with_pruner(plan: SweepPlan, rule: str) -> SweepPlan:
    from dataclasses import replace

    return replace(plan, pruner={**plan.pruner, "rule": rule})


async def _sweep(
    bus_url: str | None,
    namespace: str,
    sweep_id: str,
    plan: SweepPlan,
    cfg: Config,
    suggester: Any,
    pruner: dict[str, Any] | None,
) -> int:
    from workers.sweeps.bus_reads import find_sweep
    from workers.sweeps.coordinator import Coordinator

    in_process = bus_url is None
    bus = open_bus(bus_url or f"memory://sweep-{sweep_id}")
    topics = Topics(namespace)
    stop = Stop()
    stop.install()
    tasks: list[asyncio.Task[int]] = []
    pruner_stop = asyncio.Event()
    threads = None
    try:
        if await find_sweep(bus, topics, sweep_id) is not None:
            raise UsageError(f"--sweep-id {sweep_id!r}: a sweep of that id ran on this bus already")
        progress = Progress(plan)
        coordinator = Coordinator(
            bus,
            topics,
            sweep_id,
            plan,
            lambda params: trial_config(cfg, params).to_dict(),
            cfg.to_dict(),
            suggester=suggester,
            on_progress=progress.show,
        )
        _print_start(sweep_id, plan, bus_url, namespace)
        await coordinator.announce()
        if pruner is not None:
            tasks.append(
                asyncio.create_task(embedded_pruner(bus.url, namespace, pruner, pruner_stop))
            )
        agent = None
        if plan.parallel > 0:
            agent, threads = local_agent(
                bus,
                topics,
                sweep_id,
                slots=plan.parallel,
                reclaim_after=plan.reclaim_after,
                in_process=in_process,
                name=agent_name("sweep"),
            )
            tasks.append(asyncio.create_task(agent.run(stop.event)))
            tasks[-1].add_done_callback(_stop_on_failure(stop.event))
        try:
            state = await coordinator.run(stop.event)
        except BaseException:
            stop.event.set()  # the local agent stops its trials: nobody follows them any more
            raise
        for task in tasks[1 if pruner is not None else 0 :]:
            await task  # the local agent ends with the sweep (or stops its trials on a signal)
    finally:
        pruner_stop.set()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        stop.remove()
        if threads is not None:
            threads.close()
        await bus.close()
    _print_end(state, cfg, sweep_id)
    if stop.signal is not None:
        return INTERRUPTED
    counts = state.counts()
    return FAILED if counts["failed"] == counts["done"] and counts["done"] else 0


class Progress:
    """Prints each trial's end once, and the sweep's progress line when it changes."""

    def __init__(self, plan: SweepPlan) -> None:
        self.plan = plan
        self.reported: set[int] = set()
        self.line = ""

    def show(self, state: Any) -> None:
        """Print what is new in `state`."""
        from workers.sweeps.state import format_params

        for number, trial in sorted(state.trials.items()):
            if not trial.ended or number in self.reported:
                continue
            self.reported.add(number)
            best = trial.best(self.plan.objective)
            value = f"{self.plan.objective.key} {best:.4f}" if best is not None else "no value"
            how = trial.status
            if trial.rung is not None:
                how = f"pruned by {trial.by} at rung {trial.rung[0]} (epoch {trial.rung[1]})"
            elif trial.status == "terminated":
                how = f"stopped by {trial.by}: {trial.reason}"
            elif trial.status == "failed":
                how = f"failed: {trial.reason}"
            print(
                f"trial {number} ({format_params(trial.params)}): {how}; {trial.epochs} "
                f"epochs, best {value}",
                flush=True,
            )
        line = state.progress()
        if line != self.line and state.started is not None:
            self.line = line
            print(line, flush=True)


def _print_start(sweep_id: str, plan: SweepPlan, bus_url: str | None, namespace: str) -> None:
    from bus.urls import redact

    print(f"sweep id: {sweep_id}", flush=True)
    where = f"on {redact(bus_url)}" if bus_url else "in this process (in-memory bus)"
    print(
        f"{plan.trials} trials ({plan.sampler}), {plan.parallel} at a time {where}; "
        f"goal: {plan.objective.mode} {plan.objective.key}",
        flush=True,
    )
    if bus_url:
        print(f"more agents: trainer agent --bus {redact(bus_url)} --sweep {sweep_id}", flush=True)
    if not plan.pruner:
        print(
            f"no pruner in this process: trials run to their end unless one follows the sweep "
            f"(trainer worker pruner --sweep {sweep_id} ...)",
            flush=True,
        )


def _print_end(state: Any, cfg: Config, sweep_id: str) -> None:
    from workers.sweeps.state import format_params

    best = state.best()
    if best is not None:
        value = best.best(state.objective)
        print(
            f"best: trial {best.trial} ({format_params(best.params)}): {state.objective.key} "
            f"{value:.4f}, run {best.run_id}",
            flush=True,
        )
    runs = Path(cfg.run.dir)
    plot = _plot(runs, sweep_id)
    print(f"compare: trainer runs compare --sweep {sweep_id}", flush=True)
    if plot is not None:
        print(f"curves: {plot}", flush=True)


def _plot(runs: Path, sweep_id: str) -> Path | None:
    """The PNG of every trial's curve, under the runs directory, if the trials are there."""
    from trainer.tracking.sweeps import plot_sweep, sweep_records

    try:
        records = sweep_records(runs, sweep_id)
        if not records:
            return None
        return plot_sweep(records, runs / f"{sweep_id}.png")
    except (OSError, ValueError) as exc:
        print(f"trainer: warning: no plot of the sweep: {exc}", file=sys.stderr, flush=True)
        return None
