"""RunContext: what a worker kind knows of the run it follows, and how it talks back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

from bus import Bus, Envelope, Publisher, Topics, sign
from bus.messages import RUN_STARTED, VOTE

log = logging.getLogger(__name__)

_MISSING = object()


def config_value(config: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """Return the value at dotted `key` (e.g. "checkpoint.n_saved") in `config`, else `default`."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping):
            return default
        node = node.get(part, _MISSING)
        if node is _MISSING:
            return default
    return node


class RunContext:
    """One followed run as a worker kind sees it: ids, the run's config, publishing, side tasks.

    The runtime fills `config` (and `started`, `world_size`) from the run's RUN_STARTED, read
    from the registry or from the events topic, before it delivers anything else to the kind.
    """

    def __init__(
        self,
        *,
        run_id: str,
        kind: str,
        name: str,
        topics: Topics,
        bus: Bus,
        publisher: Publisher,
        log: logging.LoggerAdapter,
        secret: str | None = None,
        shared: dict[str, Any] | None = None,
    ) -> None:
        self.run_id = run_id
        self.kind = kind
        self.name = name
        self.topics = topics
        self.bus = bus
        self.log = log
        self.config: dict[str, Any] = {}
        # The run's RUN_STARTED envelope (its `ts` is when the run started) once known.
        self.started: Envelope | None = None
        self.world_size = 1
        self._publisher = publisher
        self._secret = secret or None
        # What the instances of a kind in one worker process share across the runs they follow
        # (the pruner: its sweep's rungs); a kind keeps its own keys in it.
        self.shared: dict[str, Any] = shared if shared is not None else {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set when the worker stops: a kind waiting inside `handle` (for a report of another
        # kind) gives up at once, so that SIGTERM never waits for it.
        self.stopping = asyncio.Event()

    def learn_started(self, env: Envelope) -> None:
        """Take the run's config and world size from a RUN_STARTED envelope (the runtime's job)."""
        if env.type != RUN_STARTED:
            raise ValueError(f"learn_started needs a RUN_STARTED envelope, got {env.type!r}")
        config = env.data.get("config")
        self.config = dict(config) if isinstance(config, Mapping) else {}
        world_size = env.data.get("world_size")
        if isinstance(world_size, int) and not isinstance(world_size, bool) and world_size >= 1:
            self.world_size = world_size
        self.started = env

    def setting(self, option: Any, key: str, default: Any) -> Any:
        """Return `option` unless None, else the run's config value at dotted `key`, else `default`.

        A key present in the config with the value None counts as set: null in a config means
        "off" (e.g. `early_stopping.patience: null`), which the default must not override.
        """
        if option is not None:
            return option
        return config_value(self.config, key, default)

    @property
    def epochs(self) -> int | None:
        """The run's planned epochs (config `train.epochs`), or None when it does not say."""
        epochs = config_value(self.config, "train.epochs")
        return epochs if type(epochs) is int and epochs >= 1 else None

    def epoch_label(self, epoch: int) -> str:
        """Trainer epoch `epoch` (0-based, as on the wire) as people count it: "3/10" or "3"."""
        total = self.epochs
        return f"{epoch + 1}/{total}" if total is not None else str(epoch + 1)

    def _envelope(self, type: str, data: dict[str, Any], epoch: int, iteration: int) -> Envelope:
        return Envelope(
            type=type,
            run_id=self.run_id,
            source=self.name,
            data=data,
            epoch=epoch,
            iteration=iteration,
        )

    async def publish(
        self, type: str, data: dict[str, Any], *, epoch: int = 0, iteration: int = 0
    ) -> None:
        """Publish a report (METRICS, CHECKPOINT_SAVED...) on the run's events topic."""
        env = self._envelope(type, data, epoch, iteration)
        await self._publisher.publish(self.topics.events(self.run_id), env)

    async def written(self) -> None:
        """Wait until everything published or sent so far is on the bus."""
        await self._publisher.flush()

    async def control(
        self, type: str, data: dict[str, Any], *, epoch: int = 0, iteration: int = 0
    ) -> None:
        """Send a signal to the trainer on the run's control topic, signed when a secret is set."""
        env = self._envelope(type, data, epoch, iteration)
        if self._secret is not None:
            env = sign(env, self._secret)
        await self._publisher.publish(self.topics.control(self.run_id), env)

    async def vote(self, stop: bool, reason: str, epoch: int, iteration: int = 0) -> None:
        """Vote stop or continue on trainer epoch `epoch` (0-indexed), with a reason."""
        data = {"stop": bool(stop), "reason": reason, "voter": self.name, "epoch": int(epoch)}
        label = self.epoch_label(epoch)
        self.log.info("vote", extra={"stop": bool(stop), "epoch": label, "reason": reason})
        await self.control(VOTE, data, epoch=epoch, iteration=iteration)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `coro` as a side task of this run's worker, cancelled when the worker closes."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.kind}:{self.run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._side_task_done)
        return task

    def _side_task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Nobody awaits a side task: without this its failure would pass unnoticed.
            self.log.error("side task failed", exc_info=task.exception())

    async def cancel_side_tasks(self) -> None:
        """Cancel the side tasks still running and wait for them (the runtime's job)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
