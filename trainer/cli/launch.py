"""The ranks of one job: `trainer run CONFIG --nproc N` starting them, and each rank's own part.

With --bus the ranks share the run on that bus; without it (the embedded default) they share it
through torch.distributed alone: rank 0 runs the config's workers on its in-memory bus and
publishes the job's figures, reduced over every rank, there (`trainer.bridge.run`).

The parent (`launch_ranks`) makes the run directory and the run id, then runs torch's own
launcher, `python -m torch.distributed.run --standalone --nproc-per-node N -m trainer.cli run
...`, which gives each rank RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. When a
rank fails, the parent prints one line naming it and how it ended, from the launcher's failure
summary or else from the ranks' records, and exits 1; it exits 0 only if every rank did.

Each rank (`RankProcess`) joins the process group, records itself under the run directory's
`.ranks/` (rank, pid, host), ends with its launcher (a rank left alone would train on or wait in
a collective), and on a failure looks there for a rank of this host whose process is gone: the
lost rank that its RUN_FINISHED then names.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from trainer.cli.errors import UsageError
from trainer.errors import TrainerError
from trainer.manifest import write_json_atomic

RANKS_DIR = ".ranks"
# Seconds a failed rank looks for the peer whose loss failed it: a killed process closes its
# sockets a moment before it is gone.
LOST_RANK_WAIT = 2.0
# Seconds the parent waits for the launcher once it was interrupted itself.
INTERRUPT_WAIT = 60.0
# Lines of the launcher's error output kept for its failure summary.
TAIL_LINES = 400
FAILED = 1
# What a rank's collective raises when a peer's connection breaks (gloo over TCP) or times out.
_COLLECTIVE_ERROR = re.compile(
    r"gloo|connection (?:reset|closed)|broken pipe|timed out|timeout|peer", re.IGNORECASE
)
# One failure of the launcher's summary (torch.distributed.elastic's ChildFailedError).
_SUMMARY_FAILURE = re.compile(
    r"rank\s*:\s*(?P<rank>\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(?P<code>-?\d+)"
    r"\s*\(pid:\s*(?P<pid>\d+)\)"
)


class RankLost(TrainerError, RuntimeError):
    """A rank's run ended because another rank of the job was lost (its collective failed)."""


class RankStopped(BaseException):
    """A rank was told to stop by a signal (its launcher ending the job); ends the run failed.

    A BaseException, as KeyboardInterrupt is: no `except Exception` on the way may swallow it.
    """


def world_from_env() -> int:
    """WORLD_SIZE as torchrun sets it for each rank; 1 outside a launcher."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(1, int(value))
    except ValueError:
        raise UsageError(
            f"WORLD_SIZE={value!r} in the environment is not a number of ranks; unset it, or "
            "start the ranks with torchrun"
        ) from None


# --- the parent: `trainer run --nproc N` -----------------------------------------------------


def refuse_unshared_bus(nproc: int, bus_url: str | None) -> None:
    """UsageError if `bus_url` is given but several processes cannot share it (memory:)."""
    if bus_url is not None and bus_url.startswith("memory:"):
        raise UsageError(
            f"--nproc {nproc} with --bus {bus_url}: the in-memory bus lives inside one process, "
            "so the ranks cannot share it; leave --bus (and TRAINER_BUS_URL) out for the "
            "embedded default, where rank 0 runs the workers, or pass --bus redis://HOST:PORT/0"
        )


def torchrun_argv(
    nproc: int,
    config_path: str | Path | None,
    overrides: Sequence[str],
    *,
    bus_url: str | None,
    run_id: str,
    run_dir: Path,
    resume: str | Path | None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The launcher's command line: N ranks of `trainer run` on one run id and directory
    (`extra`: more options of `trainer run` that every rank takes)."""
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "trainer.cli",
        "run",
    ]
    if config_path is not None:
        argv.append(str(config_path))
    argv += overrides
    if bus_url is not None:  # without: the embedded default, its workers on rank 0
        argv += ["--bus", bus_url]
    argv += ["--run-id", run_id, "--run-dir", str(run_dir)]
    if resume is not None:
        argv += ["--resume", str(resume)]
    return [*argv, *extra]


@dataclass(frozen=True)
class RankEnding:
    """How one rank's process ended: its exit code (negative: the signal that killed it)."""

    rank: int
    exitcode: int | None
    pid: int | None = None

    def how(self) -> str:
        """E.g. "rank 1 (pid 4242) was killed by SIGKILL" or "rank 0 exited with status 1"."""
        who = f"rank {self.rank}" + (f" (pid {self.pid})" if self.pid else "")
        code = self.exitcode
        if code is None:
            return f"{who} ended without reporting how (killed before it could)"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"{who} was killed by {name}"
        return f"{who} exited with status {code}"


def summary_failures(text: str) -> list[RankEnding]:
    """The failures of the launcher's summary, the first observed one (its root cause) first."""
    head, found, root_part = text.rpartition("Root Cause")
    if not found:
        head, root_part = text, ""

    def parsed(part: str) -> list[RankEnding]:
        return [
            RankEnding(int(m["rank"]), int(m["code"]), int(m["pid"]))
            for m in _SUMMARY_FAILURE.finditer(part)
        ]

    roots = parsed(root_part)
    return [*roots, *(f for f in parsed(head) if f not in roots)]


def recorded_failures(run_dir: Path, nproc: int) -> list[RankEnding]:
    """The ranks whose records under `.ranks/` never say they ended (killed outright: likely
    the first to fail), then those whose records say they failed."""
    killed, failed = [], []
    for rank in range(nproc):
        record = _read_json(run_dir / RANKS_DIR / f"{rank}.json")
        ended = _read_json(run_dir / RANKS_DIR / f"{rank}.exit.json")
        pid = record.get("pid") if record else None
        if ended is None:
            killed.append(RankEnding(rank, None, pid))
        elif ended.get("status") != 0:
            failed.append(RankEnding(rank, ended.get("status"), pid))
    return killed + failed


def failure_line(failures: Sequence[RankEnding], launcher_status: int) -> str:
    """One line saying which rank failed first and how, then how the others ended."""
    if not failures:
        return f"the job failed: torch's launcher exited with status {launcher_status}"
    first, *others = failures
    line = f"the job failed: {first.how()}"
    if others:
        line += "; then " + ", ".join(other.how() for other in others)
    return line


class _Forward:
    """Copies the launcher's error output to ours as it comes, keeping its last lines."""

    def __init__(self, source: IO[bytes], sink: IO[bytes]) -> None:
        self.lines: deque[bytes] = deque(maxlen=TAIL_LINES)
        self._source, self._sink = source, sink
        self._thread = threading.Thread(target=self._copy, name="launcher-stderr", daemon=True)
        self._thread.start()

    def _copy(self) -> None:
        for line in iter(self._source.readline, b""):
            self.lines.append(line)
            self._sink.write(line)
            self._sink.flush()

    def text(self, timeout: float = 5.0) -> str:
        """What was kept, once the launcher's output has ended."""
        self._thread.join(timeout)
        return b"".join(self.lines).decode("utf-8", "replace")


def launch_ranks(
    nproc: int,
    config_path: str | Path | None,
    overrides: Sequence[str],
    *,
    bus_url: str | None,
    run_id: str,
    run_dir: Path,
    resume: str | Path | None,
    extra: Sequence[str] = (),
) -> int:
    """Run `nproc` ranks through torch's launcher; 0 if every rank succeeded, else 1."""
    ranks_dir = run_dir / RANKS_DIR
    shutil.rmtree(ranks_dir, ignore_errors=True)  # records of an earlier launch of this run
    ranks_dir.mkdir(parents=True, exist_ok=True)
    argv = torchrun_argv(
        nproc,
        config_path,
        overrides,
        bus_url=bus_url,
        run_id=run_id,
        run_dir=run_dir,
        resume=resume,
        extra=extra,
    )
    print(f"starting {nproc} ranks of run {run_id} with torch.distributed.run", flush=True)
    launcher = subprocess.Popen(argv, stderr=subprocess.PIPE)
    assert launcher.stderr is not None
    forward = _Forward(launcher.stderr, sys.stderr.buffer)

    def pass_on(signum: int, frame: FrameType | None) -> None:
        # `docker stop` and the like signal this process alone: the launcher stops the ranks,
        # which end their runs, and this process then reports as for any other ending.
        launcher.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        status = launcher.wait()
    except KeyboardInterrupt:
        # The launcher got the same SIGINT (one process group) and stops the ranks itself.
        try:
            launcher.wait(INTERRUPT_WAIT)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    text = forward.text()
    if status == 0:
        return 0
    failures = summary_failures(text) or recorded_failures(run_dir, nproc)
    if not failures and _all_ended_well(run_dir, nproc):
        # E.g. stopped while it waited for the ranks' exit: the job itself is complete.
        print(
            f"trainer: warning: every rank ended with status 0, torch's launcher with {status}",
            file=sys.stderr,
            flush=True,
        )
        return 0
    print(f"trainer: error: {failure_line(failures, status)}", file=sys.stderr, flush=True)
    return FAILED


def _all_ended_well(run_dir: Path, nproc: int) -> bool:
    """Whether every rank recorded exit status 0."""
    ended = [_read_json(run_dir / RANKS_DIR / f"{rank}.exit.json") for rank in range(nproc)]
    return all(e is not None and e.get("status") == 0 for e in ended)


# --- a rank --------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if it is missing or not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _process_gone(pid: int) -> bool:
    """Whether process `pid` of this host has ended (a zombie, not yet reaped, counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc: ask the kernel whether the pid exists
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    state = stat.rpartition(")")[2].split()[:1]
    return state in (["Z"], ["X"])


def _die_with_parent() -> None:
    """Have the kernel send SIGTERM when the launcher that started this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher was gone before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


class _StopOnSignal:
    """SIGTERM handler raising RankStopped once, while the rank trains; ignored after that."""

    def __init__(self) -> None:
        self.armed = True

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.armed:
            self.armed = False
            raise RankStopped(f"stopped by {signal.Signals(signum).name}")


class RankProcess:
    """This process as one rank of a job: its record, its signals, naming a lost peer."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self.host = socket.gethostname()
        self.ranks_dir: Path | None = None
        self._stop = _StopOnSignal()

    @classmethod
    def join(cls, timeout: float) -> RankProcess:
        """Join the job's process group from torchrun's environment (waits for every rank)."""
        from trainer.distributed import init_from_env

        if os.environ.get("TORCHELASTIC_RUN_ID"):
            _die_with_parent()  # started by torch's launcher: end with it
        rank, world_size = init_from_env(timeout)
        process = cls(rank, world_size)
        signal.signal(signal.SIGTERM, process._stop)
        return process

    def shared_run_dir(self, proposed: Path | None, make: Any) -> Path:
        """The run directory every rank uses: `proposed`, else the one rank 0 makes (`make()`)."""
        if proposed is not None:
            return proposed
        import torch.distributed as dist

        chosen = [str(make()) if self.rank == 0 else None]
        dist.broadcast_object_list(chosen, src=0)
        return Path(str(chosen[0]))

    def record(self, run_dir: Path) -> None:
        """Write this rank's record: what the others and the parent read if it is lost."""
        self.ranks_dir = run_dir / RANKS_DIR
        data = {
            "rank": self.rank,
            "world_size": self.world_size,
            "pid": os.getpid(),
            "host": self.host,
            "local_rank": int(os.environ.get("LOCAL_RANK", self.rank)),
        }
        write_json_atomic(self.ranks_dir / f"{self.rank}.json", data)
        stale = self.ranks_dir / f"{self.rank}.exit.json"
        stale.unlink(missing_ok=True)

    def ended(self, status: int) -> None:
        """Record this rank's exit status (a rank killed outright leaves none)."""
        if self.ranks_dir is not None:
            # On a failed write the status still reaches the launcher as the exit code.
            with contextlib.suppress(OSError):
                write_json_atomic(self.ranks_dir / f"{self.rank}.exit.json", {"status": status})

    def quiet(self) -> None:
        """Ignore further stop signals: the run is ending anyway and must publish its end."""
        self._stop.armed = False

    def lost_ranks(self, wait: float = 0.0) -> list[RankEnding]:
        """Ranks of this host whose process has ended, waiting up to `wait` s for one."""
        deadline = time.monotonic() + wait
        while True:
            lost = []
            for rank in range(self.world_size):
                if rank == self.rank or self.ranks_dir is None:
                    continue
                record = _read_json(self.ranks_dir / f"{rank}.json")
                if not record or record.get("host") != self.host:
                    continue  # not known here: on another host, or never recorded
                pid = record.get("pid")
                if isinstance(pid, int) and _process_gone(pid):
                    lost.append(RankEnding(rank, None, pid))
            if lost or time.monotonic() >= deadline:
                return lost
            time.sleep(0.05)

    def explain(self, exc: BaseException) -> BaseException:
        """The exception this rank's RUN_FINISHED reports: a lost rank named where it is known."""
        self.quiet()
        stopped = isinstance(exc, RankStopped)
        collective = stopped or _looks_collective(exc)
        # A broken collective may come a moment before the peer's process is gone; a launcher
        # stopping this rank because a peer failed has already seen that peer end.
        lost = self.lost_ranks(wait=LOST_RANK_WAIT if collective and not stopped else 0.0)
        what = _first_line(exc)
        if lost:
            names = ", ".join(f"rank {r.rank} (pid {r.pid} on {self.host})" for r in lost)
            verb = "were" if len(lost) > 1 else "was"
            return RankLost(f"{names} {verb} lost: its process ended; on rank {self.rank}: {what}")
        if collective and not isinstance(exc, RankStopped):
            return RankLost(
                f"a rank of the job was lost or stalled (no rank of this host {self.host} has "
                f"ended; see the launcher's report); on rank {self.rank}: {what}"
            )
        return exc


def _looks_collective(exc: BaseException) -> bool:
    """Whether `exc` (or what it came from) is a collective that failed on a peer."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if type(seen).__name__ in ("DistBackendError", "DistNetworkError", "DistStoreError"):
            return True
        if isinstance(seen, RuntimeError) and _COLLECTIVE_ERROR.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, shortened: what a one-line reason can carry."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if len(message) > 240:
        message = message[:237] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
