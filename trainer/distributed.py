"""The ranks of a torchrun job: who we are, the RNG states of all ranks, and agreed stops.

Imported lazily (by the job and by `BusRun` with `world_size > 1`): it needs torch.

- `world()` is `(rank, world_size)` of the initialised default process group, else `(0, 1)`.
- `init_from_env(timeout)` joins the group torchrun describes in the environment.
- `DistributedRNGState` saves every rank's RNG states in rank 0's checkpoint (a collective).
- `StopAgreement` lets the ranks agree, at the same iteration boundary, on whether to stop
  (and why) and whether to checkpoint: one all-reduce of two int64 flags per agreement, and
  one broadcast of the cause only when a stop is agreed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from trainer.checkpoint_store import capture_rng_state, restore_rng_state

# Bytes the cause of a stop ({signal, reason, by, rank, voter} as UTF-8 JSON) may take on the wire.
CAUSE_BYTES = 512
# What torchrun sets besides WORLD_SIZE; init_process_group's env:// reads them.
_ENV_KEYS = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def world() -> tuple[int, int]:
    """(rank, world_size) of the initialised default process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(timeout: float) -> tuple[int, int]:
    """Join the gloo process group torchrun describes in the environment; return world().

    Nothing happens without WORLD_SIZE > 1 in the environment, or when a group is already
    initialised. `timeout` is how many seconds a collective waits for a rank before failing.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"init_from_env timeout must be a number of seconds > 0, got {timeout!r}")
    raw = os.environ.get("WORLD_SIZE")
    if raw is None or (dist.is_available() and dist.is_initialized()):
        return world()
    try:
        size = int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable WORLD_SIZE={raw!r} is not an int; it is the number of ranks "
            "(torchrun sets it): unset it or set it to a positive int"
        ) from None
    if size < 1:
        raise ValueError(f"environment variable WORLD_SIZE={raw!r} must be >= 1")
    if size == 1:
        return world()
    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={size} asks for {size} ranks, but this torch build has no "
            "torch.distributed; install a torch with distributed support"
        )
    missing = [key for key in _ENV_KEYS if not os.environ.get(key)]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={size} is set but {', '.join(missing)} is not: start the ranks with "
            "torchrun (or `trainer run --nproc N`), which sets all of them"
        )
    dist.init_process_group("gloo", timeout=timedelta(seconds=float(timeout)))
    return world()


def _gather_objects(value: Any) -> list[Any]:
    """`value` of every rank, by rank (a collective: every rank calls it at the same point)."""
    _, size = world()
    if size == 1:
        return [value]
    gathered: list[Any] = [None] * size
    # Between our own ranks over the process group (pickle), never on the bus.
    dist.all_gather_object(gathered, value)
    return gathered


class DistributedRNGState:
    """Every rank's global RNG states, for `to_save`: rank r resumes with rank r's states.

    `state_dict()` is a collective: every rank must call it at the same point (the bridge
    takes checkpoints at the same iteration on every rank; only rank 0 writes them). The
    result holds tensors, ints, floats, strs and lists only, so the checkpoint still loads
    with `torch.load(..., weights_only=True)`.
    """

    def state_dict(self) -> dict[str, Any]:
        """`{"ranks": [rng state of rank 0, rank 1, ...]}`, gathered from every rank."""
        return {"ranks": _gather_objects(capture_rng_state())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore this rank's RNG states: `state["ranks"][rank]`, or a single-process state."""
        if not isinstance(state, Mapping):
            raise TypeError(f"DistributedRNGState state must be a mapping, got {type(state)}")
        if "ranks" not in state:
            # A checkpoint of a single-process run (RNGState): every rank starts from it.
            restore_rng_state(state)
            return
        ranks = state["ranks"]
        rank, size = world()
        if not isinstance(ranks, (list, tuple)) or not ranks:
            raise ValueError(
                f"DistributedRNGState state['ranks'] must be a non-empty list, got {ranks!r}"
            )
        if len(ranks) != size:
            raise ValueError(
                f"the checkpoint holds the RNG states of {len(ranks)} ranks but this job has "
                f"{size}: resume it with as many ranks as it was saved with "
                f"(trainer run --nproc {len(ranks)})"
            )
        restore_rng_state(ranks[rank])


def encode_cause(cause: Mapping[str, Any], size: int = CAUSE_BYTES) -> bytes:
    """`cause` as UTF-8 JSON of at most `size` bytes; a long reason (then by, voter) is cut."""
    fields = {key: cause.get(key) for key in ("signal", "reason", "by", "rank", "voter")}

    def dumped() -> bytes:
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    data = dumped()
    for key in ("reason", "by", "voter"):
        text = fields[key]
        if len(data) <= size or not isinstance(text, str):
            continue
        # Every character takes at least one byte: more than `size` of them never fit.
        keep = min(len(text), size)
        fields[key] = text[:keep]
        data = dumped()
        while len(data) > size and keep > 0:
            # A character takes 1 to 6 bytes in the JSON: cutting a sixth of the excess (in
            # characters) cuts little more than needed, and the excess shrinks every turn.
            keep = max(0, keep - max(1, (len(data) - size) // 6))
            fields[key] = text[:keep] + "…" if keep else ""
            data = dumped()
    if len(data) > size:
        raise ValueError(f"a stop cause cannot fit into {size} bytes: {fields!r}")
    return data


def decode_cause(data: bytes) -> dict[str, Any]:
    """The cause `encode_cause` wrote (zero padding stripped)."""
    # UTF-8 JSON never holds a NUL byte (JSON escapes control characters).
    return json.loads(data.rstrip(b"\0").decode("utf-8"))


@dataclass(frozen=True)
class Launched:
    """An agreement under way: its all-reduce's work, flags, and this rank's stop cause."""

    work: Any  # torch.distributed Work: wait() for the all-reduced flags
    flags: torch.Tensor
    stop: dict[str, Any] | None


@dataclass(frozen=True)
class Agreed:
    """What all ranks agreed at one agreement point."""

    stop: bool
    checkpoint: bool
    # {"signal", "reason", "by", "rank", "voter"} of the lowest rank that asked to stop, or None.
    cause: dict[str, Any] | None = None


class StopAgreement:
    """Agrees stops and checkpoints among the ranks of the default process group.

    Every rank calls `agree()` at the same points (the bridge: every k iterations and at every
    EPOCH_COMPLETED). One all-reduce (MAX) of two int64 flags says whether any rank asks to
    stop, which is the lowest such rank, and whether any asks for a checkpoint; only when a
    stop is agreed does that rank broadcast its cause, a fixed-size UTF-8 byte tensor.
    `agreements` and `seconds` count the agreements and the time spent in their collectives.

    `agree()` waits for the all-reduce; `launch()` starts it without waiting and `finish()`
    waits for it and completes the agreement, so that a rank can train meanwhile (the bridge
    launches at an agreement point's ITERATION_STARTED and finishes at its ITERATION_COMPLETED).
    """

    def __init__(self, cause_bytes: int = CAUSE_BYTES) -> None:
        rank, size = world()
        if size == 1:
            raise RuntimeError(
                "StopAgreement needs an initialised torch.distributed process group of more "
                "than one rank; call trainer.distributed.init_from_env() (under torchrun) first"
            )
        self.rank, self.world_size = rank, size
        self.cause_bytes = cause_bytes
        # NCCL takes tensors on the rank's GPU only; gloo (the CPU default) on the CPU.
        if dist.get_backend() == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        self.agreements = 0
        self.seconds = 0.0
        self.stops = 0  # agreements that agreed on a stop (each also broadcast a cause)
        # The process group's own all-reduce with options made once: dist.all_reduce's checks
        # and wrappers take about twice the CPU of the launch itself (an agreement's CPU on a
        # rank: 31-36 us this way, 40-50 us through dist.all_reduce and a new tensor).
        self._group = dist.group.WORLD
        self._options = dist.AllreduceOptions()
        self._options.reduceOp = dist.ReduceOp.MAX
        self._options.asyncOp = True
        # The CPU flags buffer of the last finished agreement, filled again by the next launch;
        # one never finished (a run that broke off) keeps its own and the next gets a new one.
        self._spare: torch.Tensor | None = None

    def agree(self, stop: Mapping[str, Any] | None, checkpoint: bool = False) -> Agreed:
        """Collective: this rank's stop cause (or None) and checkpoint wish, agreed by all."""
        return self.finish(self.launch(stop, checkpoint))

    def launch(self, stop: Mapping[str, Any] | None, checkpoint: bool = False) -> Launched:
        """Collective, started: send this rank's flags; `finish()` the result before the next.

        Every rank must launch at the same point and finish before launching again; other
        collectives (a DDP step's) may run in between.
        """
        # Flag 0 carries world_size - rank for a rank that stops, so MAX names the lowest.
        mine = self.world_size - self.rank if stop is not None else 0
        started = time.perf_counter()
        flags, self._spare = self._spare, None
        if flags is not None:
            values = flags.numpy()  # a CPU buffer: filled in place, no tensor made
            values[0], values[1] = mine, int(checkpoint)
        else:
            flags = torch.tensor([mine, int(checkpoint)], dtype=torch.int64, device=self.device)
        work = self._group.allreduce([flags], self._options)
        self.seconds += time.perf_counter() - started
        return Launched(work, flags, None if stop is None else dict(stop))

    def finish(self, launched: Launched) -> Agreed:
        """Collective: wait for a launched agreement and complete it; what all ranks agreed."""
        started = time.perf_counter()
        launched.work.wait()
        stop, flags = launched.stop, launched.flags
        top, wanted = flags.tolist()
        if flags.device.type == "cpu":
            self._spare = flags  # the collective is done with it
        cause = None
        if top:
            decider = self.world_size - top
            if decider == self.rank:
                assert stop is not None
                payload = encode_cause({**stop, "rank": self.rank}, self.cause_bytes)
                buffer = torch.zeros(self.cause_bytes, dtype=torch.uint8)
                buffer[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
                buffer = buffer.to(self.device)
            else:
                buffer = torch.zeros(self.cause_bytes, dtype=torch.uint8, device=self.device)
            dist.broadcast(buffer, src=decider)
            cause = decode_cause(buffer.cpu().numpy().tobytes())
            self.stops += 1
        self.seconds += time.perf_counter() - started
        self.agreements += 1
        return Agreed(stop=bool(top), checkpoint=bool(wanted), cause=cause)
