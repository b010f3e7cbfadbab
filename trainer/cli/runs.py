"""`trainer runs ls|show|compare|plot|export`: look at tracked runs in a runs directory.

RUN is a run id, a run's name or a prefix of its id (the newest run matching, with a note on
stderr naming the others), or a run directory's path. The runs directory is --dir ROOT, else
$TRAINER_RUNS_DIR, else ./runs. Epochs are shown counted from 1 ("3/10": the third of ten), as
the trainer prints them. rich and matplotlib are imported only by the actions that use them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainer.cli.errors import UsageError
from trainer.tracking.errors import RunNotFound
from trainer.tracking.layout import CHECKPOINTS_ARTIFACT, RUNS_DIR_ENV, runs_root
from trainer.tracking.reader import (
    RunRecord,
    epochs_completed,
    find_run,
    list_runs,
    max_epochs,
    read_run,
)

STATUS_STYLE = {
    "completed": "green",
    "running": "cyan",
    "terminated": "yellow",
    "failed": "red",
}


def add_parser(commands: Any) -> None:
    """Register the `runs` command and its actions."""
    runs = commands.add_parser(
        "runs",
        help="list, show, compare, plot and export tracked runs",
        description="Look at the runs the tracking store wrote. RUN is a run id, a run's name or "
        "a prefix of its id (the newest matching run; stderr names the others), or a run "
        f"directory. The runs directory is --dir, else ${RUNS_DIR_ENV}, else ./runs.",
    )
    actions = runs.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("ls", aliases=["list"], help="list the runs, newest first")
    listing.add_argument("--project", metavar="P", help="only the runs of project P")
    listing.add_argument(
        "--sweep", metavar="ID", help="only the trials of sweep ID, with their values"
    )
    listing.set_defaults(action_handler=list_command)

    show = actions.add_parser("show", help="everything about one run")
    show.add_argument("run", metavar="RUN")
    show.set_defaults(action_handler=show_command)

    compare = actions.add_parser(
        "compare", help="config differences and final metrics of runs, side by side"
    )
    compare.add_argument("runs", nargs="*", metavar="RUN", help="two runs or more")
    compare.add_argument(
        "--sweep",
        metavar="ID",
        help="every trial of sweep ID: values, best value, epochs used, who pruned it and where",
    )
    compare.set_defaults(action_handler=compare_command)

    plot = actions.add_parser("plot", help="plot metrics against step into a PNG")
    plot.add_argument("runs", nargs="*", metavar="RUN")
    plot.add_argument(
        "--sweep",
        metavar="ID",
        help="every trial of sweep ID: its curve of the sweep's metric, pruned ones marked",
    )
    plot.add_argument(
        "--metric",
        "-m",
        action="append",
        metavar="M",
        help="a logged key (val/loss) or a metric of every split (loss); repeatable "
        "(default: every logged key except epoch)",
    )
    plot.add_argument("-o", "--output", required=True, metavar="FILE.png", help="PNG to write")
    plot.set_defaults(action_handler=plot_command)

    export = actions.add_parser("export", help="export a run to another tool's format")
    export.add_argument("run", metavar="RUN")
    export.add_argument("dest", metavar="DIR", help="where to write (an MLflow file store)")
    export.add_argument("--format", choices=["mlflow"], default="mlflow", help="default mlflow")
    export.set_defaults(action_handler=export_command)

    for action in (listing, show, compare, plot, export):
        action.add_argument(
            "--dir",
            metavar="ROOT",
            help=f"runs directory (default: ${RUNS_DIR_ENV}, else runs)",
        )
    runs.set_defaults(handler=command)


def command(args: argparse.Namespace, extras: list[str]) -> int:
    """Run the chosen action."""
    if extras:
        raise UsageError(f"trainer runs {args.action}: unrecognized arguments: {' '.join(extras)}")
    handler: Callable[[argparse.Namespace, Path], int] = args.action_handler
    try:
        return handler(args, runs_root(args.dir))
    except RunNotFound as exc:
        raise UsageError(str(exc)) from None


def list_command(args: argparse.Namespace, root: Path) -> int:
    """`runs ls`: a table of the runs under ROOT."""
    if args.sweep is not None:
        return _list_trials(root, args.sweep)
    infos = list_runs(root, project=args.project)
    console = _console()
    if not infos:
        which = f" of project {args.project!r}" if args.project else ""
        console.print(f"no runs{which} in {root}")
        return 0
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("name", "id", "status", "epochs", "best", "duration", "started"):
        table.add_column(column, no_wrap=column in ("id", "started"))
    for info in infos:
        best = f"{info.best[0]} {format_value(info.best[1])}" if info.best else ""
        table.add_row(
            info.name,
            info.id,
            _status(info.status),
            format_epochs(info.epochs, info.max_epochs),
            best,
            format_duration(info.duration_s),
            format_time(info.started_at),
        )
    console.print(table)
    return 0


def show_command(args: argparse.Namespace, root: Path) -> int:
    """`runs show RUN`: the run's metadata, config, summary, artifacts and media."""
    from rich.table import Table
    from rich.text import Text

    record = read_run(_find(root, args.run))
    meta = record.meta
    total = max_epochs(meta)
    console = _console()
    about = Table.grid(padding=(0, 2))
    about.add_column(style="bold")
    about.add_column()
    ending = meta.get("reason") or ""
    if meta.get("by"):
        ending = f"{ending} (by {meta['by']})".strip()
    for label, value in (
        ("id", record.id),
        ("name", record.name),
        ("project", meta.get("project", "")),
        ("status", _status(str(meta.get("status", "unknown")))),
        ("reason", ending),
        ("error", meta.get("error") or ""),
        ("tags", ", ".join(meta.get("tags") or [])),
        ("notes", meta.get("notes") or ""),
        ("epochs", format_epochs(epochs_completed(record.dir, meta, record.summary), total)),
        ("host", f"{meta.get('host', '')} (pid {meta.get('pid', '?')})"),
        ("started", format_time(meta.get("started_at"))),
        ("finished", format_time(meta.get("finished_at"))),
        ("duration", format_duration(meta.get("duration_s"))),
        ("directory", str(record.dir)),
    ):
        if value:
            about.add_row(label, value if isinstance(value, Text) else str(value))
    console.print(about)

    config = flat_config(meta.get("config") or {})
    if config:
        table = Table(title="config", box=None, title_justify="left", header_style="bold")
        table.add_column("key")
        table.add_column("value")
        for key, value in config.items():
            table.add_row(key, format_value(value))
        console.print(table)

    summary = record.summary
    if summary["last"]:
        table = Table(title="metrics", box=None, title_justify="left", header_style="bold")
        for column in ("metric", "last", "best", "best step", "goal"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for key, last in summary["last"].items():
            table.add_row(
                key,
                format_value(last),
                format_value(summary["best"].get(key, "")),
                str(summary["best_step"].get(key, "")),
                summary["goal"].get(key, ""),
            )
        console.print(table)
        console.print(f"{summary['steps']} rows, last step {summary['last_step']}")

    if record.artifacts:
        _print_artifacts(console, record, total)
    _print_media(console, record)
    return 0


def _print_artifacts(console: Any, record: RunRecord, total: int | None) -> None:
    """The versions kept of each artifact (pruned ones only counted), with their aliases."""
    from rich.table import Table

    table = Table(title="artifacts", box=None, title_justify="left", header_style="bold")
    for column in ("name", "type", "version", "epoch", "aliases", "files"):
        table.add_column(column)
    pruned: dict[str, int] = {}
    for name, index in record.artifacts.items():
        aliases: dict[str, list[str]] = {}
        for alias, version in index.get("aliases", {}).items():
            aliases.setdefault(version, []).append(alias)
        for version in index.get("versions", []):
            if version.get("removed"):  # its file is gone: history, not something kept
                pruned[name] = pruned.get(name, 0) + 1
                continue
            files = ", ".join(
                f"{f['name']}" + (" (reference)" if "path" in f else "")
                for f in version.get("files", [])
            )
            table.add_row(
                name,
                index.get("type", ""),
                version["version"],
                _checkpoint_epoch(name, version, total),
                ", ".join(aliases.get(version["version"], [])),
                files,
            )
    if table.rows:
        console.print(table)
    for name, count in pruned.items():
        console.print(f"{name}: {count} pruned version{'s' if count > 1 else ''} not shown")


def _checkpoint_epoch(name: str, version: dict[str, Any], total: int | None) -> str:
    """The epoch a trainer checkpoint holds, counted from 1 (its metadata has the 0-based one)."""
    epoch = (version.get("metadata") or {}).get("epoch")
    if name != CHECKPOINTS_ARTIFACT or not isinstance(epoch, int) or isinstance(epoch, bool):
        return ""  # another artifact's metadata means what its author meant
    return format_epochs(epoch + 1, total)


def _print_media(console: Any, record: RunRecord, limit: int = 20) -> None:
    """The images (step, caption, file; the last `limit`) and the histograms logged."""
    from rich.table import Table

    if not (record.histograms or record.images):
        return
    console.print(f"media: {len(record.histograms)} histograms, {len(record.images)} images")
    if record.images:
        table = Table(title="images", box=None, title_justify="left", header_style="bold")
        for column in ("name", "step", "size", "caption", "file"):
            table.add_column(column, justify="right" if column == "step" else "left")
        for image in record.images[-limit:]:
            width, height = image.get("width"), image.get("height")
            table.add_row(
                str(image.get("name", "")),
                str(image.get("step", "")),
                f"{width}x{height}" if width and height else "",
                str(image.get("caption") or ""),
                str(image.get("file", "")),
            )
        console.print(table)
        if len(record.images) > limit:
            console.print(f"(the last {limit} of {len(record.images)} images)")
    if record.histograms:
        steps: dict[str, list[int]] = {}
        for row in record.histograms:
            steps.setdefault(str(row.get("name", "")), []).append(row.get("step", 0))
        described = (
            f"{name} ({len(s)} step{'s' if len(s) > 1 else ''}, last {max(s)})"
            for name, s in steps.items()
        )
        console.print(f"histograms: {', '.join(described)}")


def compare_command(args: argparse.Namespace, root: Path) -> int:
    """`runs compare RUN RUN...`: config keys that differ, and final metrics side by side."""
    from rich.table import Table

    if args.sweep is not None:
        if args.runs:
            raise UsageError("trainer runs compare: give runs or --sweep ID, not both")
        return _compare_trials(root, args.sweep)
    if len(args.runs) < 2:
        raise UsageError("trainer runs compare: give two runs or more (or --sweep ID)")
    records = [read_run(_find(root, ref)) for ref in args.runs]
    headers = _headers(records)
    console = _console()

    configs = [flat_config(r.meta.get("config") or {}) for r in records]
    keys = list(dict.fromkeys(k for config in configs for k in config))
    missing = object()
    differing = [k for k in keys if len({repr(c.get(k, missing)) for c in configs}) > 1]
    table = Table(title="config differences", box=None, title_justify="left", header_style="bold")
    table.add_column("key")
    for header in headers:
        table.add_column(header)
    for key in differing:
        table.add_row(key, *(format_value(c[key]) if key in c else "-" for c in configs))
    if differing:
        console.print(table)
    else:
        console.print("config: no differences")

    table = Table(title="final metrics", box=None, title_justify="left", header_style="bold")
    table.add_column("metric")
    for header in headers:
        table.add_column(header, justify="right")
    metrics = list(dict.fromkeys(k for r in records for k in r.summary["last"]))
    for key in metrics:
        values = [r.summary["last"].get(key) for r in records]
        goal = next((r.summary["goal"][key] for r in records if key in r.summary["goal"]), "max")
        best = _best_index(values, goal)
        cells = [
            ("-" if v is None else f"[bold]{format_value(v)}[/]" if i == best else format_value(v))
            for i, v in enumerate(values)
        ]
        table.add_row(key, *cells)
    table.add_row(
        "epochs",
        *(
            format_epochs(epochs_completed(r.dir, r.meta, r.summary), max_epochs(r.meta))
            for r in records
        ),
    )
    table.add_row("status", *(_status(str(r.meta.get("status", "unknown"))) for r in records))
    table.add_row("duration", *(format_duration(r.meta.get("duration_s")) for r in records))
    console.print(table)
    return 0


def plot_command(args: argparse.Namespace, root: Path) -> int:
    """`runs plot RUN... -o FILE.png`: metrics against step, a line per run and split."""
    from trainer.tracking.plot import plot_runs

    if args.sweep is not None:
        if args.runs:
            raise UsageError("trainer runs plot: give runs or --sweep ID, not both")
        from trainer.tracking.sweeps import plot_sweep

        path = plot_sweep(_trials(root, args.sweep), args.output)
        print(f"wrote {path}")
        return 0
    if not args.runs:
        raise UsageError("trainer runs plot: give one run or more (or --sweep ID)")
    records = [read_run(_find(root, ref)) for ref in args.runs]
    try:
        path = plot_runs(records, args.metric, args.output)
    except ValueError as exc:
        raise UsageError(f"trainer runs plot: {exc}") from None
    print(f"wrote {path}")
    return 0


def export_command(args: argparse.Namespace, root: Path) -> int:
    """`runs export RUN --format mlflow DIR`: an MLflow file store holding the run."""
    from trainer.tracking.mlflow_export import export_mlflow

    run_dir = _find(root, args.run)
    path = export_mlflow(run_dir, args.dest)
    store = Path(args.dest).absolute()
    print(f"exported {run_dir.name} to {path}")
    print(f"view it: MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {store.as_uri()}")
    return 0


def _trials(root: Path, sweep_id: str) -> list[Any]:
    """The trials of `sweep_id` under ROOT; UsageError naming the sweeps there if none."""
    from trainer.tracking.sweeps import sweep_ids, sweep_records

    trials = sweep_records(root, sweep_id)
    if not trials:
        known = sweep_ids(root)
        there = f"; sweeps there: {', '.join(known[-5:])}" if known else ": it holds no sweep"
        raise UsageError(f"no trial of sweep {sweep_id!r} in {root}{there}")
    return trials


def _trial_status(trial: Any) -> Any:
    from rich.text import Text

    status = trial.status
    return Text(status, style=STATUS_STYLE.get(status, "magenta" if status == "pruned" else ""))


def _list_trials(root: Path, sweep_id: str) -> int:
    """`runs ls --sweep ID`: the sweep's trials with their values and best value."""
    from rich.table import Table

    trials = _trials(root, sweep_id)
    objective = trials[0].objective
    table = Table(box=None, header_style="bold")
    for column in ("trial", "id", "status", "epochs", f"best {objective.key}", "params"):
        table.add_column(column, no_wrap=column == "id")
    for trial in trials:
        table.add_row(
            str(trial.trial),
            trial.record.id,
            _trial_status(trial),
            format_epochs(trial.epochs, max_epochs(trial.record.meta)),
            format_value(trial.best) if trial.best is not None else "",
            _params_text(trial.params),
        )
    _console().print(table)
    return 0


def _compare_trials(root: Path, sweep_id: str) -> int:
    """`runs compare --sweep ID`: every trial's values, best value, epochs used, pruning."""
    from rich.table import Table

    from trainer.tracking.sweeps import best_trial

    trials = _trials(root, sweep_id)
    objective = trials[0].objective
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    best = best_trial(trials)
    table = Table(
        title=f"sweep {sweep_id}: {len(trials)} trials, {objective.mode} {objective.key}",
        box=None,
        title_justify="left",
        header_style="bold",
    )
    table.add_column("trial", justify="right")
    for key in keys:
        table.add_column(key)
    for column in (f"best {objective.key}", "epochs", "status", "pruned by", "at"):
        table.add_column(column, justify="right" if column != "pruned by" else "left", no_wrap=True)
    used = possible = 0
    for trial in trials:
        epochs, total = trial.epochs, max_epochs(trial.record.meta)
        used += epochs or 0
        possible += total or epochs or 0
        value = "" if trial.best is None else format_value(trial.best)
        if trial is best:
            value = f"[bold]{value}[/]"
        meta = trial.record.meta
        pruner = meta.get("voter") or meta.get("by") or "" if trial.rung is not None else ""
        where = f"rung {trial.rung[0]} (epoch {trial.rung[1]})" if trial.rung else ""
        table.add_row(
            str(trial.trial),
            *(format_value(trial.params[k]) if k in trial.params else "-" for k in keys),
            value,
            format_epochs(epochs, total),
            _trial_status(trial),
            pruner,
            where,
        )
    console = _console()
    console.print(table)
    pruned = sum(1 for t in trials if t.status == "pruned")
    share = f" ({used / possible:.0%})" if possible else ""
    console.print(f"epochs used: {used} of {possible}{share}; {pruned} trials pruned")
    if best is not None:
        console.print(
            f"best: trial {best.trial}, {objective.key} {format_value(best.best)}, run "
            f"{best.record.id} ({_params_text(best.params)})"
        )
    return 0


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={format_value(value)}" for key, value in params.items())


def format_epochs(done: int | None, total: int | None) -> str:
    """Epochs completed as people count them, out of the total when known: "3/10", "3"."""
    if done is None:
        return ""
    return f"{done}/{total}" if total else str(done)


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys."""
    from trainer.tracking.mlflow_export import flatten

    return flatten(config, prefix)


def format_value(value: Any) -> str:
    """A value for a table cell: floats with 4 significant digits."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if math.isfinite(value) and value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4g}"


def format_duration(seconds: Any) -> str:
    """A duration as "42s", "3m 05s" or "2h 04m"; empty when unknown."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return ""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def format_time(stamp: Any) -> str:
    """A unix time as local "YYYY-mm-dd HH:MM:SS"; empty when unknown."""
    if not isinstance(stamp, (int, float)):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _find(root: Path, ref: str) -> Path:
    """The run `ref` names; when it matched several, a note on stderr says which and why."""
    return find_run(root, ref, note=lambda text: print(f"note: {text}", file=sys.stderr))


def _best_index(values: Sequence[Any], goal: str) -> int | None:
    numbers = [
        (v, i)
        for i, v in enumerate(values)
        if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))
    ]
    if len(numbers) < 2 or len({v for v, _ in numbers}) < 2:
        return None
    return (min(numbers) if goal == "min" else max(numbers))[1]


def _headers(records: Sequence[RunRecord]) -> list[str]:
    names = [r.name for r in records]
    return [r.id if names.count(r.name) > 1 else r.name for r in records]


def _status(status: str) -> Any:
    from rich.text import Text

    return Text(status, style=STATUS_STYLE.get(status, ""))


def _console() -> Any:
    from rich.console import Console

    # Piped output gets room for whole ids rather than rich's default of 80 columns.
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=160 if wide else None, highlight=False)
