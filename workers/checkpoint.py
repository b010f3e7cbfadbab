"""The checkpoint worker: verifies, scores, files and prunes the checkpoints a run announces.

For each CHECKPOINT_READY: check the file's size and sha256 (a mismatch is dead-lettered),
score it when a score metric is configured and the checkpoint was taken at an epoch end (the
score split's figures for that epoch, `workers.figures`: in a one-rank run the trainer's own
EPOCH_COMPLETED metrics, which come before the checkpoint, so nothing is awaited; with several
ranks the metrics worker's METRICS, awaited up to --score-timeout, saying so in the log), file
it into the run's checkpoint directory under the name the in-process Checkpoint handler would
give it, keep the last `n_saved` and the best `n_best` (trainer.retention), delete the rest,
write the manifest naming latest and best, and publish CHECKPOINT_SAVED (one per READY) and
CHECKPOINT_PRUNED (one per deleted file). A READY is acked once its reports are written; one
delivered again after its filer died sends the reports the manifest recorded of it, unless its
CHECKPOINT_SAVED is on the bus already.

Replicas share a run's READYs through the consumer group. The figures, though, may be delivered
to another replica, so each replica reads them from a tail of the run's events topic of its
own. Torch-free.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from bus import BEGINNING, DecodeError, Envelope, Rejected, decode, tail
from bus.codec import peek_type
from bus.messages import (
    CHECKPOINT_PRUNED,
    CHECKPOINT_READY,
    CHECKPOINT_SAVED,
    EVENTS,
    check_data,
)
from trainer.checkpoint_names import INCOMING_DIR
from trainer.config_schema import CheckpointSection
from trainer.retention import RetentionPolicy
from workers.base import Worker, WorkerStopping
from workers.checkpoint_files import (
    Filed,
    Ready,
    VerificationError,
    file_checkpoint,
    filed_before,
    is_handled,
    moved_before,
    verify,
)
from workers.context import RunContext
from workers.figures import EpochFigures, FiguresWait, awaits_metrics, epoch_figures, own_figures

# Used when neither an option nor the run's config section `checkpoint` sets a value: the
# config schema's defaults, but no score unless one is named (a run whose config is not the
# trainer's may publish no `accuracy`, and waiting for it would only delay every checkpoint).
DEFAULTS: dict[str, Any] = {
    **{key: getattr(CheckpointSection(), key) for key in ("n_saved", "n_best", "mode")},
    "score": None,
}
SCORE_SPLIT = "val"
SCORE_TIMEOUT = 60.0
# Seconds the worker lets a run's events gather between reads: replicas share the READYs read
# by read, so a short linger keeps what one replica holds at a time (and what a replica that
# dies leaves to be reclaimed) small.
READ_LINGER = 0.05
SCAN_BATCH = 1000  # entries per read when looking for a SAVED on the run's events
# How long a READY found filed but unreported waits for its filer's CHECKPOINT_SAVED before the
# reports are sent again: a replica that filed it a moment ago may be writing them right now.
REPORT_GRACE = 1.0
REPORT_POLL = 0.05
ALL = "all"  # --n-saved all / --n-best all: keep every checkpoint by that rule


def _count(text: str) -> int | str:
    """argparse type of --n-saved/--n-best: an integer >= 0, or "all"."""
    if text == ALL:
        return ALL
    value = int(text) if text.isdigit() else -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or 'all', got {text!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _quiet(entry: Any, reason: str) -> None:
    """A tail's hook for an entry that does not decode: say nothing (see _watch_figures)."""


def _keep_count(value: Any, what: str) -> int | None:
    """A retention count from an option or the config: int >= 0, or None/"all" for keep-all."""
    if value is None or value == ALL:
        return None
    if not _is_int(value) or value < 0:
        raise ValueError(f"{what} must be an integer >= 0 or 'all', got {value!r}")
    return value


class CheckpointWorker(Worker):
    """Files each run's checkpoints, keeps the last n and the best k, and says what it did."""

    kind: ClassVar[str] = "checkpoint"
    handles: ClassVar[frozenset[str] | None] = frozenset({CHECKPOINT_READY})
    read_linger: ClassVar[float | None] = READ_LINGER

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """--n-saved, --n-best, --score, --mode, --dir, --score-split, --score-timeout."""
        config = "default: the run's config, checkpoint.%s"
        parser.add_argument(
            "--n-saved",
            type=_count,
            default=None,
            metavar="N|all",
            help="keep the N most recent checkpoints; " + config % "n_saved",
        )
        parser.add_argument(
            "--n-best",
            type=_count,
            default=None,
            metavar="K|all",
            help="and the K best by score; " + config % "n_best",
        )
        parser.add_argument(
            "--score",
            default=None,
            metavar="METRIC",
            help="metric ranking the best (a name in METRICS values); " + config % "score",
        )
        parser.add_argument(
            "--mode",
            choices=("max", "min"),
            default=None,
            help="whether a higher score is better; " + config % "mode",
        )
        parser.add_argument(
            "--dir",
            default=None,
            metavar="PATH",
            help="the run's checkpoint directory as this worker sees it; default: the 'dir' "
            "of each CHECKPOINT_READY",
        )
        parser.add_argument(
            "--score-split",
            default=None,
            metavar="SPLIT",
            help=f"split whose METRICS score the checkpoints; default: {SCORE_SPLIT}",
        )
        parser.add_argument(
            "--score-timeout",
            type=float,
            default=None,
            metavar="SECONDS",
            help="how long to wait for the score of a checkpoint before filing it without "
            f"one; default: {SCORE_TIMEOUT:g}",
        )

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """Refuse counts, a mode or a timeout that can never work."""
        _keep_count(options.get("n_saved"), "--n-saved")
        _keep_count(options.get("n_best"), "--n-best")
        mode = options.get("mode")
        if mode not in (None, "max", "min"):
            raise ValueError(f"--mode must be 'max' or 'min', got {mode!r}")
        timeout = options.get("score_timeout")
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
            raise ValueError(f"--score-timeout must be a number of seconds >= 0, got {timeout!r}")
        if options.get("n_saved") == 0 and options.get("n_best") == 0:
            raise ValueError("--n-saved 0 with --n-best 0 would keep no checkpoint at all")

    def __init__(self, ctx: RunContext, options: Mapping[str, Any]) -> None:
        super().__init__(ctx, options)
        self.check_options(self.options)
        self.score_split: str = self.options.get("score_split") or SCORE_SPLIT
        timeout = self.options.get("score_timeout")
        self.score_timeout: float = SCORE_TIMEOUT if timeout is None else float(timeout)
        # Filled by the side task, from its tail of the run's events topic:
        # (split, epoch) -> the epoch's figures;
        self._figures: dict[tuple[str, int], Mapping[str, Any]] = {}
        # (split, epoch) of EPOCH_COMPLETEDs whose figures only METRICS will bring;
        self._awaiting: set[tuple[str, int]] = set()
        # the CHECKPOINT_READY ids read (everything before one of them has been read too).
        self._readies_read: set[str] = set()
        self._tail_read = asyncio.Event()  # set whenever the tail read something of use
        self._watching: asyncio.Task[None] | None = None
        self._waits = FiguresWait(ctx)

    # --- settings ----------------------------------------------------------------------------

    def _setting(self, name: str) -> Any:
        return self.ctx.setting(self.options.get(name), f"checkpoint.{name}", DEFAULTS[name])

    def retention(self) -> tuple[RetentionPolicy, str | None, str]:
        """The retention policy, the score metric (or None) and the mode, as now configured."""
        score = self._setting("score") or None  # an empty name names no metric
        mode = self._setting("mode")
        if score is not None and not isinstance(score, str):
            raise Rejected(f"checkpoint score must be a metric name, got {score!r}")
        if mode not in ("max", "min"):
            raise Rejected(f"checkpoint mode must be 'max' or 'min', got {mode!r}")
        try:
            keep_last = _keep_count(self._setting("n_saved"), "checkpoint n_saved")
            # As the in-process job does: without a score nothing ranks, so nothing is "best".
            keep_best = _keep_count(self._setting("n_best"), "checkpoint n_best") if score else 0
            if keep_last == 0 and keep_best == 0:
                raise ValueError("n_saved 0 and no best kept would keep no checkpoint at all")
        except ValueError as exc:
            raise Rejected(f"{exc} (from the options or the run's config)") from None
        return RetentionPolicy(keep_last=keep_last, keep_best=keep_best), score, mode

    # --- handling ----------------------------------------------------------------------------

    async def handle(self, env: Envelope) -> None:
        """File each CHECKPOINT_READY; everything else is read by the side task, if at all."""
        if env.type != CHECKPOINT_READY:
            return
        policy, score_name, mode = self.retention()
        ready, directory, epoch_end = self._parse(env)
        # Filed before (by this worker or a replica, then redelivered): only its reports may
        # be left to send, and the incoming file is gone, so it must not be verified.
        if await asyncio.to_thread(is_handled, directory, ready.id):
            await self._report_again(directory, ready)
            return
        try:
            await asyncio.to_thread(verify, ready)
        except VerificationError as exc:
            # A replica may be filing it right now (the file moved, the manifest not yet
            # written): ask again once it holds the lock no more.
            if await asyncio.to_thread(is_handled, directory, ready.id, locked=True):
                await self._report_again(directory, ready)
                return
            # Or one died between the two: the file is in place, only unlisted.
            score = await self._score_of(ready, score_name, mode, epoch_end)
            moved = None
            if not ready.path.exists():
                moved = await asyncio.to_thread(moved_before, directory, ready, score, score_name)
            if moved is None:
                raise Rejected(str(exc)) from None
            self.ctx.log.warning(
                "filing finished",
                extra={"ready": ready.id, "detail": f"found moved to {moved.path} but unlisted"},
            )
            ready = moved
        else:
            score = await self._score_of(ready, score_name, mode, epoch_end)
        filed = await asyncio.to_thread(
            file_checkpoint, directory, ready, score, policy, score_name
        )
        if filed is None:
            await self._report_again(directory, ready)
            return
        await self._report(directory, ready, filed)

    async def flush(self) -> None:
        """Wait until the batch's reports are written: its READYs are acked only then, so a
        replica that dies before leaves them pending for another to report (`_report_again`)."""
        await self.ctx.written()

    def _parse(self, env: Envelope) -> tuple[Ready, Path, bool]:
        """The READY's file, the directory to file it in and whether it ends an epoch."""
        data = env.data
        what = f"CHECKPOINT_READY {env.id}"
        if isinstance(data.get("path"), str):
            what += f" (path {data['path']})"
        try:
            check_data(CHECKPOINT_READY, data, topic=EVENTS)
        except Rejected as exc:
            raise Rejected(f"{what}: {exc}") from None
        name = data.get("name", "checkpoint")
        if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
            raise Rejected(f"{what}: 'name' must be a plain file base name, got {name!r}")
        announced_dir = data.get("dir")
        if announced_dir is not None and not isinstance(announced_dir, str):
            raise Rejected(f"{what}: 'dir' must be a str, got {announced_dir!r}")
        path = Path(data["path"])
        directory = self._directory(announced_dir, path, what)
        if self.options.get("dir") is not None and announced_dir is not None:
            # The shared volume may be mounted elsewhere here than in the trainer's container.
            try:
                relative = path.relative_to(announced_dir)
            except ValueError:
                relative = None
            if relative is not None and (not path.exists() or (directory / relative).exists()):
                path = directory / relative
        ready = Ready(
            id=env.id,
            path=path,
            size=data["size"],
            sha256=data["sha256"],
            epoch=data["epoch"],
            iteration=data["iteration"],
            name=name,
        )
        return ready, directory, data.get("epoch_end") is True

    def _directory(self, announced: str | None, path: Path, what: str) -> Path:
        """--dir, else the READY's dir, else RUN_STARTED's checkpoint_dir, else the file's."""
        chosen = self.options.get("dir") or announced
        if chosen is None and self.ctx.started is not None:
            chosen = self.ctx.started.data.get("checkpoint_dir")
        if chosen is None and path.parent.name == INCOMING_DIR:
            chosen = str(path.parent.parent)
        if not isinstance(chosen, str) or not chosen:
            raise Rejected(
                f"{what}: no checkpoint directory to file it in (no 'dir' in it, no "
                "checkpoint_dir in RUN_STARTED, not under .incoming/); pass --dir"
            )
        return Path(chosen)

    # --- scores ------------------------------------------------------------------------------

    async def _score_of(
        self, ready: Ready, score_name: str | None, mode: str, epoch_end: bool
    ) -> float | None:
        """The checkpoint's score: only one taken at an epoch's end has one, when scored."""
        if score_name is None or not epoch_end:
            return None
        return await self._score(score_name, mode, ready)

    async def _score(self, score_name: str, mode: str, ready: Ready) -> float | None:
        """The checkpoint's higher-is-better score from the figures of its epoch, or None."""
        key = (self.score_split, ready.epoch)
        epoch = self.ctx.epoch_label(ready.epoch)
        context = {"ready": ready.id, "split": key[0], "epoch": epoch, "metric": score_name}
        values, missing = await self._figures_of(key, ready, context)
        if values is None:
            self.ctx.log.warning(
                "no score: filed without one", extra={**context, "detail": missing}
            )
            return None
        value = values.get(score_name)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self.ctx.log.warning(
                "no score: filed without one",
                extra={**context, "detail": f"the {key[0]} figures have {sorted(values)}"},
            )
            return None
        # Higher is better for the retention rule: a "min" metric (a loss) ranks negated, and
        # the file name shows the negated value, as the in-process job names it.
        score = float(value) if mode == "max" else -float(value)
        return None if math.isnan(score) else score

    async def _figures_of(
        self, key: tuple[str, int], ready: Ready, context: dict[str, Any]
    ) -> tuple[Mapping[str, Any] | None, str]:
        """The figures of `key`, or None and why there are none.

        In a one-rank run the tail reads up to the READY itself: the epoch's EPOCH_COMPLETED
        came before it. Only when the figures come as METRICS (several ranks, or metric states
        without metrics) does it wait, up to the score timeout, saying so in the log.
        """
        if self._watching is None:
            self._watching = self.ctx.spawn(self._watch_figures())
        if own_figures(self.ctx.world_size):
            # Bounded all the same: a READY trimmed from the stream is never read by the tail.
            await self._until(
                lambda: key in self._figures or ready.id in self._readies_read, self.score_timeout
            )
            if key in self._figures:
                return self._figures[key], ""
            if key not in self._awaiting:
                return None, (
                    f"no {key[0]} metrics in the run's events for epoch "
                    f"{self.ctx.epoch_label(key[1])} before this checkpoint (not evaluated then?)"
                )
        self._waits.expect(*key, ready=ready.id, metric=context["metric"])
        try:
            found = await self._until(lambda: key in self._figures, self.score_timeout)
        finally:
            self._waits.arrived(*key)
        if not found:
            return None, f"no METRICS within {self.score_timeout:g} s"
        return self._figures[key], ""

    async def _until(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Wait until `done()` (True) or `timeout` s (False); WorkerStopping if the worker stops."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not done():
            if self.ctx.stopping.is_set():
                raise WorkerStopping("the worker stops while waiting for a score: left pending")
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            self._tail_read.clear()
            waits = [
                asyncio.ensure_future(self._tail_read.wait()),
                asyncio.ensure_future(self.ctx.stopping.wait()),
            ]
            try:
                await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
        return True

    async def _watch_figures(self) -> None:
        """Side task: record every epoch's figures of the run, from its first event on."""
        # A tail, not the group: figures delivered to another replica must reach this one too.
        # Entries that do not decode are skipped quietly: the consumer dead-letters them (and
        # logs that), once.
        topic = self.ctx.topics.events(self.ctx.run_id)
        async for env in tail(self.ctx.bus, topic, BEGINNING, on_bad=_quiet):
            if env.type == CHECKPOINT_READY:
                self._readies_read.add(env.id)
                self._tail_read.set()
                continue
            try:
                figures = epoch_figures(env, self.ctx.world_size)
            except Rejected:
                continue  # not for this worker to judge: no figures in it
            if figures is not None:
                self._record(figures)
            elif awaits_metrics(env, self.ctx.world_size):
                split = env.data.get("split")
                if isinstance(split, str):
                    self._awaiting.add((split, env.epoch))

    def _record(self, figures: EpochFigures) -> None:
        self._figures[(figures.split, figures.epoch)] = figures.values
        self._tail_read.set()

    # --- reports -----------------------------------------------------------------------------

    async def _report_again(self, directory: Path, ready: Ready) -> None:
        """Send the reports of a READY filed before unless its CHECKPOINT_SAVED is on the bus.

        A READY is delivered again when whoever filed it did not ack it: a replica that died
        after filing may have died before its reports were written. The manifest recorded
        what they said.
        """
        if await self._report_seen(ready.id):
            self.ctx.log.info("already filed", extra={"ready": ready.id})
            return
        filed = await asyncio.to_thread(filed_before, directory, ready)
        if filed is None:
            self.ctx.log.warning(
                "already filed, reports unknown",
                extra={
                    "ready": ready.id,
                    "detail": "no CHECKPOINT_SAVED of it on the bus and no report of it in the "
                    "manifest (filed too long ago)",
                },
            )
            return
        self.ctx.log.warning(
            "reports sent again",
            extra={
                "ready": ready.id,
                "detail": "filed by a worker that stopped before its CHECKPOINT_SAVED was written",
            },
        )
        await self._report(directory, ready, filed)

    async def _report_seen(self, ready_id: str) -> bool:
        """Whether a CHECKPOINT_SAVED of READY `ready_id` is on the run's events, or lands
        there within REPORT_GRACE s (written by a live filer meanwhile)."""
        deadline = time.monotonic() + REPORT_GRACE
        while not await self._saved_on_bus(ready_id):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(REPORT_POLL)
        return True

    async def _saved_on_bus(self, ready_id: str) -> bool:
        """Whether the run's events hold a CHECKPOINT_SAVED of READY `ready_id`."""
        topic = self.ctx.topics.events(self.ctx.run_id)
        after = BEGINNING
        while True:
            entries = await self.ctx.bus.read(topic, after, count=SCAN_BATCH, block=None)
            for entry in entries:
                if peek_type(entry.payload) != CHECKPOINT_SAVED:
                    continue  # most of a run's events: passed over undecoded
                try:
                    env = decode(entry.payload)
                except DecodeError:
                    continue
                if env.data.get("ready_id") == ready_id:
                    return True
            if len(entries) < SCAN_BATCH:
                return False
            after = entries[-1].id

    async def _report(self, directory: Path, ready: Ready, filed: Filed) -> None:
        saved = filed.saved
        await self.ctx.publish(
            CHECKPOINT_SAVED,
            {
                "path": str(directory / saved["file"]),
                "sha256": saved["sha256"],
                "size": ready.size,
                "epoch": ready.epoch,
                "iteration": ready.iteration,
                "aliases": filed.saved_aliases,
                "score": saved["score"],
                "ready_id": ready.id,
            },
            epoch=ready.epoch,
            iteration=ready.iteration,
        )
        self.ctx.log.info(
            "saved",
            extra={"file": saved["file"], "aliases": ",".join(filed.saved_aliases) or None},
        )
        for entry in filed.pruned:
            # -1: an entry written before epochs were recorded (an older in-process manifest).
            epoch = entry.get("epoch", -1)
            await self.ctx.publish(
                CHECKPOINT_PRUNED,
                {
                    "path": str(directory / entry["file"]),
                    "sha256": entry.get("sha256"),
                    "epoch": epoch,
                    "iteration": entry["step"],
                    "aliases": [],
                    "score": entry.get("score"),
                    "ready_id": entry.get("ready_id"),
                    "pruned_by": ready.id,
                },
                epoch=max(epoch, 0),
                iteration=entry["step"],
            )
            self.ctx.log.info("pruned", extra={"file": entry["file"]})

    async def close(self) -> None:
        """Nothing to release: the runtime cancels the figures tail with the side tasks."""
