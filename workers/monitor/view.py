"""The monitor's rich renderables: one `render(state, now)` draws everything known of a run.

Epochs are shown 1-indexed ("epoch 2/6" is the second epoch), as the trainer prints them; the
bus carries them 0-indexed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from bus.messages import EPOCH_COMPLETED, METRICS, PRIMARY_SPLIT
from workers.monitor.state import (
    GONE,
    LEFT,
    LIVE,
    KeptCheckpoint,
    MonitorState,
    RankProgress,
    WorkerState,
)

SPARK_BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 30
BAR_WIDTH = 16
STATUS_STYLES = {
    "waiting": "dim",
    "running": "bold cyan",
    "completed": "bold green",
    "terminated": "bold yellow",
    "failed": "bold red",
}


def sparkline(values: Iterable[float], width: int = SPARK_WIDTH) -> str:
    """The last `width` values as block heights from ▁ (lowest) to █ (highest); '·' marks a
    value that is not finite (a NaN loss), and equal values draw a flat middle line."""
    tail = list(values)[-width:] if width > 0 else []
    finite = [v for v in tail if math.isfinite(v)]
    if not finite:
        return "·" * len(tail)
    low, high = min(finite), max(finite)
    top = len(SPARK_BLOCKS) - 1
    out = []
    for value in tail:
        if not math.isfinite(value):
            out.append("·")
        elif high == low:
            out.append(SPARK_BLOCKS[top // 2])
        else:
            out.append(SPARK_BLOCKS[round((value - low) / (high - low) * top)])
    return "".join(out)


def duration(seconds: float | None) -> str:
    """`seconds` as "42s", "3m 04s" or "2h 05m"; "-" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def number(value: float | None) -> str:
    """A metric value with 4 decimals (or 4 significant digits when large or tiny)."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.4g}"
    return f"{value:.4f}"


def _table(title: str) -> Table:
    return Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False
    )


# -- header ------------------------------------------------------------------------------


def _status_line(state: MonitorState) -> Text:
    status = state.status
    line = Text("status: ")
    line.append(status, style=STATUS_STYLES.get(status, "bold"))
    finish = state.finish if state.finished else None
    if finish is not None:
        by, reason = finish.get("by"), finish.get("reason")
        if isinstance(by, str) and by:
            line.append(f" by {by}", style="bold")
        if isinstance(reason, str) and reason and reason != status:  # not "completed: completed"
            line.append(f": {reason}")
        epochs, iteration = finish.get("epochs"), finish.get("iteration")
        if isinstance(epochs, int) and isinstance(iteration, int):
            done = f"{epochs} epoch{'s' if epochs != 1 else ''}"  # a count of completed epochs
            line.append(f" (after {done}, {iteration} iterations)", style="dim")
    return line


def header(state: MonitorState, now: float) -> RenderableType:
    """Which run this is, where it runs, and how it stands (or how it ended)."""
    title = Text("run ", style="bold")
    title.append(state.run_id, style="bold magenta")
    if state.name:
        title.append(f" ({state.name})")
    title.append(f" · namespace {state.namespace}", style="dim")
    if state.started is not None:
        ranks = state.world_size
        title.append(f" · {ranks} rank{'s' if ranks != 1 else ''}", style="dim")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.started.ts))
        title.append(f" · started {started}", style="dim")
    lines: list[RenderableType] = [title, _status_line(state)]
    if state.exception is not None:
        error = f"{state.exception.get('error_type', '?')}: {state.exception.get('message', '')}"
        lines.append(Text(f"exception: {error}", style="red"))
    for source, reason in state.terminate_requests[-3:]:
        lines.append(Text(f"TERMINATE requested by {source}: {reason or '(no reason)'}"))
    resumed = {r.resumed_from for r in state.ranks.values() if r.resumed_from}
    if resumed:
        lines.append(Text(f"resumed from {', '.join(sorted(resumed))}", style="dim"))
    return Group(*lines)


# -- progress ----------------------------------------------------------------------------


def _epoch_cell(state: MonitorState, rank: RankProgress) -> str:
    # The epoch the rank is in, or stopped in (RUN_FINISHED carries it too): a run stopped
    # mid-epoch shows the epoch its last checkpoint and votes name, not the epochs completed.
    max_epochs = state.max_epochs
    shown = rank.epoch_shown
    return f"{shown}/{max_epochs}" if max_epochs else str(shown)


def progress_table(state: MonitorState) -> Table:
    """One row per rank: epoch, iteration, a bar, it/s and ETA."""
    table = _table("Progress")
    for column in ("rank", "host", "epoch", "iteration"):
        table.add_column(column, no_wrap=True)
    table.add_column("progress", width=BAR_WIDTH)
    table.add_column("it/s", justify="right", no_wrap=True)
    table.add_column("ETA", justify="right", no_wrap=True)
    total = state.total_iterations
    for rank in sorted(state.ranks.values(), key=lambda r: r.rank):
        iteration = f"{rank.iteration}/{total}" if total else str(rank.iteration)
        bar: RenderableType = (
            ProgressBar(total=total, completed=min(rank.iteration, total), width=BAR_WIDTH)
            if total
            else Text("")
        )
        rate = rank.rate()
        table.add_row(
            str(rank.rank),
            rank.host or "?",
            _epoch_cell(state, rank),
            iteration,
            bar,
            f"{rate:.1f}" if rate is not None else "-",
            "done" if rank.finish is not None else duration(state.eta(rank)),
        )
    return table


def outputs_lines(state: MonitorState) -> list[Text]:
    """Per rank, the latest train step outputs (e.g. the loss) with a sparkline of each."""
    lines = []
    for rank in sorted(state.ranks.values(), key=lambda r: r.rank):
        if not rank.outputs:
            continue
        line = Text(f"rank {rank.rank} step outputs:", style="dim")
        for name, value in list(rank.outputs.items())[:4]:
            line.append(f"  {name} {number(value)} ")
            line.append(sparkline(rank.output_history.get(name, ())), style="cyan")
        lines.append(line)
    return lines


# -- metrics -----------------------------------------------------------------------------


def metrics_table(state: MonitorState) -> Table:
    """Per split and metric: the latest value, its epoch, and a sparkline of its history."""
    sources = {m.source for m in state.metrics.values()}
    note = "aggregated (METRICS)" if sources == {METRICS} else "per epoch"
    if len(sources) > 1:
        note = "METRICS where aggregated, else the trainer's EPOCH_COMPLETED"
    elif sources == {EPOCH_COMPLETED}:
        note = "the trainer's EPOCH_COMPLETED"
    table = _table(f"Metrics, {note}" if sources else "Metrics")
    for column in ("split", "metric", "epoch"):
        table.add_column(column)
    table.add_column("latest", justify="right")
    table.add_column("min", justify="right")
    table.add_column("max", justify="right")
    table.add_column("history")
    for split in sorted(state.metrics, key=lambda s: (s != PRIMARY_SPLIT, s)):
        for name, points in state.metrics[split].series().items():
            if not points:
                continue
            epoch, latest = points[-1]
            values = [v for _, v in points]
            finite = [v for v in values if math.isfinite(v)]
            table.add_row(
                split,
                name,
                str(epoch + 1),
                number(latest),
                number(min(finite)) if finite else "-",
                number(max(finite)) if finite else "-",
                Text(sparkline(values), style="green"),
            )
    return table


# -- workers -----------------------------------------------------------------------------


WORKER_STYLES = {LIVE: "green", GONE: "red", LEFT: "dim"}


def _worker_state(state: MonitorState, worker: WorkerState, now: float) -> Text:
    status = state.worker_status(worker, now)
    return Text(status, style=WORKER_STYLES[status])


def _vote_cell(worker: WorkerState) -> Text:
    vote = worker.vote
    if vote is None:
        return Text("-" if worker.votes else "", style="dim")
    text = Text("stop" if vote.stop else "continue", style="bold red" if vote.stop else "green")
    if vote.epoch is not None:
        text.append(f" @ epoch {vote.epoch + 1}")
    if vote.reason:
        text.append(f": {vote.reason}", style="dim")
    return text


def workers_table(state: MonitorState, now: float) -> Table:
    """The workers that announced themselves on the control topic, with their last vote."""
    table = _table("Workers")
    table.add_column("name", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("state")
    # Since its last heartbeat (or any sign of life): how long a gone worker has been silent.
    table.add_column("heard", justify="right", no_wrap=True)
    table.add_column("last vote", overflow="fold")
    for worker in state.workers_shown(now):
        age = worker.age(now)
        table.add_row(
            worker.name,
            worker.kind + (" (voter)" if worker.votes else ""),
            _worker_state(state, worker, now),
            f"{duration(age)} ago" if age is not None else "-",
            _vote_cell(worker),
        )
    return table


# -- checkpoints -------------------------------------------------------------------------


def _checkpoint_order(checkpoint: KeptCheckpoint) -> tuple[int, float]:
    return (checkpoint.iteration if checkpoint.iteration is not None else -1, checkpoint.ts)


def checkpoints_table(state: MonitorState, now: float) -> Table:
    """The checkpoints kept: saved and not pruned since, with their aliases."""
    kept = sorted(state.checkpoints.values(), key=_checkpoint_order)
    title = f"Checkpoints, {len(kept)} kept"
    if state.pending_ready and state.live_workers(now, "checkpoint"):
        title += f", {len(state.pending_ready)} being filed"
    table = _table(title)
    table.add_column("file", overflow="fold")
    table.add_column("epoch", justify="right")
    table.add_column("iteration", justify="right")
    table.add_column("score", justify="right")
    table.add_column("aliases")
    for checkpoint in kept:
        table.add_row(
            checkpoint.name,
            str(checkpoint.epoch + 1) if checkpoint.epoch is not None else "-",
            str(checkpoint.iteration) if checkpoint.iteration is not None else "-",
            number(checkpoint.score),
            Text(", ".join(checkpoint.aliases), style="bold"),
        )
    return table


# -- footer ------------------------------------------------------------------------------


def footer(state: MonitorState) -> Text:
    """Dead letters of the run and entries that could not be decoded."""
    letters = state.dead_letters
    line = Text("dead letters: ")
    line.append(str(letters.count), style="bold red" if letters.count else "")
    if letters.count:
        group = f" (group {letters.last_group})" if letters.last_group else ""
        line.append(f", last{group}: {letters.last_reason}")
    bad = sum(state.undecodable.values())
    line.append(" · undecodable entries: ")
    line.append(str(bad), style="bold red" if bad else "")
    if bad:
        where = ", ".join(f"{k} {n}" for k, n in sorted(state.undecodable.items()))
        line.append(f" ({where}; last: {state.last_undecodable})")
    return line


def render(state: MonitorState, now: float) -> RenderableType:
    """Everything known of the run, as of `now` (seconds since the epoch; ages count to it)."""
    parts: list[RenderableType] = [header(state, now), Text("")]
    if state.ranks:
        parts.append(progress_table(state))
        parts.extend(outputs_lines(state))
        parts.append(Text(""))
    if state.metrics:
        parts += [metrics_table(state), Text("")]
    if state.workers:
        parts += [workers_table(state, now), Text("")]
    filing = state.pending_ready and state.live_workers(now, "checkpoint")
    if state.checkpoints or filing:
        parts += [checkpoints_table(state, now), Text("")]
    parts.append(footer(state))
    return Group(*parts)


def waiting(namespace: str, registry: str, runs: Sequence[str] = ()) -> RenderableType:
    """What is shown before any run is found: where the monitor is looking."""
    text = Text(f"waiting for a run to start in namespace {namespace} (registry {registry})")
    if runs:
        text.append(f"; runs seen: {', '.join(runs)}", style="dim")
    return text
