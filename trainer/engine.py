"""The Engine: one loop over epochs and batches that fires events to handlers."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from trainer.errors import TrainerError
from trainer.events import AnyEvent, EventEnum, Events, FilteredEvent, base_event, flatten
from trainer.state import State

ProcessFunction = Callable[["Engine", Any], Any]
Handler = Callable[..., Any]

_ITERATION_EVENTS = (Events.ITERATION_STARTED, Events.ITERATION_COMPLETED)
_EPOCH_EVENTS = (Events.EPOCH_STARTED, Events.EPOCH_COMPLETED)
_STATE_KEYS = {
    "iteration": int,
    "epoch": int,
    "epoch_iteration": int,
    "epochs_completed": int,
    "max_epochs": int,
    "epoch_length": (int, type(None)),
    "pass_position": int,
}


class DataExhaustedError(TrainerError, RuntimeError):
    """The data ran out before the epoch's length and cannot be iterated again."""


@dataclass(eq=False)
class _Registration:
    handler: Handler
    event: EventEnum | FilteredEvent
    priority: float
    seq: int
    is_async: bool
    invoke: Callable[..., Any]


class RemovableHandle:
    """Returned by `add_event_handler`; `remove()` (or leaving a `with` block) detaches it."""

    def __init__(self, engine: Engine, handler: Handler, event: EventEnum | FilteredEvent) -> None:
        self._engine, self._handler, self._event = engine, handler, event

    def remove(self) -> None:
        """Detach the handler if it is still attached."""
        if self._engine.has_event_handler(self._handler, base_event(self._event)):
            self._engine.remove_event_handler(self._handler, base_event(self._event))

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _name(obj: object) -> str:
    return getattr(obj, "__name__", None) or repr(obj)


def _epoch_setters(data: Iterable[Any]) -> tuple[Callable[[int], Any], ...]:
    """The `set_epoch` methods of the data's samplers (a DistributedSampler's, say), once each."""
    batch_sampler = getattr(data, "batch_sampler", None)
    holders = (
        getattr(data, "sampler", None),
        batch_sampler,
        getattr(batch_sampler, "sampler", None),
    )
    setters: list[Callable[[int], Any]] = []
    seen: list[object] = []
    for holder in holders:
        set_epoch = getattr(holder, "set_epoch", None)
        # A DataLoader's sampler is usually also its batch sampler's: tell it the epoch once.
        if callable(set_epoch) and not any(holder is other for other in seen):
            seen.append(holder)
            setters.append(set_epoch)
    return tuple(setters)


def _is_async(fn: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 (callable objects with async __call__)
    return call is not None and inspect.iscoroutinefunction(call)


class Engine:
    """Runs `process_function(engine, batch)` over data for some epochs, firing events.

    Handlers and the process function may be plain or `async def`. `run` is synchronous;
    `await arun(...)` does the same inside an event loop.
    """

    def __init__(self, process_function: ProcessFunction) -> None:
        if not callable(process_function):
            raise TypeError(f"process_function must be callable, got {process_function!r}")
        self._check_signature(process_function, "process_function", 2, (), {}, allow_bare=False)
        self._process_function = process_function
        self._process_is_async = _is_async(process_function)
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.state = State()
        self.should_terminate = False
        # Why the last terminate() was called, when its caller said (RUN_FINISHED's reason).
        self.stop_reason: str | None = None
        self.should_terminate_single_epoch = False
        self._stop_requested = False
        self._allowed_events: set[EventEnum] = set(Events)
        self._registrations: dict[EventEnum, list[_Registration]] = {e: [] for e in Events}
        # Copy-on-write lists of invokers: a handler that attaches or removes handlers while
        # an event is being fired never disturbs the iteration in progress.
        self._invokers: dict[EventEnum, list[Callable[..., Any]]] = {e: [] for e in Events}
        self._seq = 0
        self._async_handlers = 0
        self._fired: dict[EventEnum, int] = {}
        self._metrics: dict[str, Any] = {}
        self._data: Iterable[Any] | None = None
        self._data_iter: Iterator[Any] | None = None
        self._pass_position = 0
        # The epoch whose start opened the current pass: what its sampler's set_epoch was told.
        self._pass_epoch = 0
        self._set_epoch: tuple[Callable[[int], Any], ...] = ()
        self._epochs_completed = 0
        self._resume_epoch_iteration = 0
        self._resume_skip = 0
        self._can_continue = False
        self._running = False

    # ----------------------------------------------------------------------------- events

    def register_events(self, *event_enums: type[EventEnum] | EventEnum) -> None:
        """Allow custom events (an EventEnum class or members of one) to be fired and handled."""
        for item in event_enums:
            members = list(item) if isinstance(item, type) else [item]
            for event in members:
                if not isinstance(event, EventEnum):
                    raise TypeError(
                        f"register_events takes EventEnum subclasses or their members, got "
                        f"{event!r}"
                    )
                if event not in self._allowed_events:
                    self._allowed_events.add(event)
                    self._registrations[event] = []
                    self._invokers[event] = []

    def add_event_handler(
        self, event: AnyEvent, handler: Handler, *args: Any, priority: float = 0, **kwargs: Any
    ) -> RemovableHandle:
        """Attach `handler(engine, *args, **kwargs)` to an event, a filtered event or a list."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r} for event {event}")
        if isinstance(priority, bool) or not isinstance(priority, (int, float)):
            raise TypeError(f"priority must be a number, got {priority!r}")
        handle = None
        for single in flatten(event):
            plain = self._check_event(base_event(single))
            n_event_args = 1 if plain is Events.EXCEPTION_RAISED else 0
            takes_engine = self._check_signature(
                handler, f"handler for {single}", 1 + n_event_args, args, kwargs, allow_bare=True
            )
            invoke = self._compile(handler, single, takes_engine, args, kwargs)
            is_async = _is_async(handler)
            self._seq += 1
            registration = _Registration(handler, single, priority, self._seq, is_async, invoke)
            ordered = sorted(
                [*self._registrations[plain], registration], key=lambda r: (-r.priority, r.seq)
            )
            self._registrations[plain] = ordered
            self._invokers[plain] = [r.invoke for r in ordered]
            self._async_handlers += is_async
            handle = RemovableHandle(self, handler, single)
        assert handle is not None  # flatten never returns an empty list
        return handle

    # The guide's spelling; one implementation.
    attach_handler = add_event_handler

    def on(
        self,
        event: AnyEvent,
        handler: Handler | None = None,
        *args: Any,
        priority: float = 0,
        **kwargs: Any,
    ) -> Any:
        """Attach a handler, or used as `@engine.on(event, priority=...)` return a decorator."""
        if handler is None:

            def decorator(fn: Handler) -> Handler:
                self.add_event_handler(event, fn, *args, priority=priority, **kwargs)
                return fn

            return decorator
        return self.add_event_handler(event, handler, *args, priority=priority, **kwargs)

    def has_event_handler(self, handler: Handler, event: EventEnum | None = None) -> bool:
        """Whether `handler` is attached to `event` (to any event when None); filters count."""
        events = [base_event(event)] if event is not None else list(self._registrations)
        return any(r.handler == handler for e in events for r in self._registrations.get(e, ()))

    def remove_event_handler(self, handler: Handler, event: EventEnum | FilteredEvent) -> None:
        """Detach every attachment of `handler` to `event`, filtered or not."""
        plain = base_event(event)
        current = self._registrations.get(plain, [])
        kept = [r for r in current if r.handler != handler]
        if len(kept) == len(current):
            raise ValueError(f"handler {_name(handler)} is not attached to {plain}")
        self._async_handlers -= sum(r.is_async for r in current if r.handler == handler)
        self._registrations[plain] = kept
        self._invokers[plain] = [r.invoke for r in kept]

    def handlers(self, event: EventEnum | FilteredEvent) -> list[Handler]:
        """The handlers attached to `event` (filtered or not), in the order they run."""
        return [r.handler for r in self._registrations.get(base_event(event), ())]

    @property
    def custom_events(self) -> tuple[EventEnum, ...]:
        """The events added with `register_events`, beyond the built-in Events."""
        return tuple(e for e in self._allowed_events if not isinstance(e, Events))

    def fire_event(self, event: EventEnum) -> None:
        """Run the handlers of an event now (from a sync process function or handler)."""
        plain = self._check_event(event, firing=True)
        self._fired[plain] = self._fired.get(plain, 0) + 1
        for invoke in self._invokers[plain]:
            result = invoke(self)
            if result is not None and inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()
                raise TypeError(
                    f"a handler of {plain} is async: fire it with `await engine.afire_event(...)`"
                )

    async def afire_event(self, event: EventEnum) -> None:
        """Run the handlers of an event now, awaiting async ones (from async code)."""
        await self._fire(self._check_event(event, firing=True))

    def _check_event(self, event: EventEnum, firing: bool = False) -> EventEnum:
        if not isinstance(event, EventEnum):
            raise TypeError(f"{event!r} is not an event (an Events or EventEnum member)")
        if event not in self._allowed_events:
            action = "fire" if firing else "attach a handler to"
            raise ValueError(
                f"cannot {action} {event}: it is not registered; call "
                f"engine.register_events({type(event).__name__}) first"
            )
        return event

    @staticmethod
    def _check_signature(
        fn: Callable[..., Any],
        what: str,
        n_leading: int,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        allow_bare: bool,
    ) -> bool:
        """Return whether `fn` takes the leading arguments; raise if it can take neither form."""
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins have no signature: trust them
            return True
        try:
            signature.bind(*([None] * n_leading), *args, **kwargs)
            return True
        except TypeError:
            pass
        if allow_bare and n_leading == 1 and not args and not kwargs:
            try:
                signature.bind()
                return False
            except TypeError:
                pass
        leading = "engine, batch" if what == "process_function" else "engine"
        if n_leading == 2 and what != "process_function":
            leading = "engine, exception"
        extra = "".join(f", {a!r}" for a in args) + "".join(f", {k}=..." for k in kwargs)
        params = signature.replace(return_annotation=inspect.Signature.empty)
        raise TypeError(
            f"{what} {_name(fn)}{params} cannot be called as {_name(fn)}({leading}{extra})"
        )

    def _compile(
        self,
        handler: Handler,
        event: EventEnum | FilteredEvent,
        takes_engine: bool,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Callable[..., Any]:
        """Build the cheapest callable that invokes `handler` as registered."""
        if takes_engine and not args and not kwargs:
            call = handler
        elif takes_engine and not kwargs:
            # Positional extras only (a metric's name, say): skip the kwargs unpacking.

            def call(engine: Engine, *event_args: Any) -> Any:
                return handler(engine, *event_args, *args)

        elif takes_engine:

            def call(engine: Engine, *event_args: Any) -> Any:
                return handler(engine, *event_args, *args, **kwargs)

        else:

            def call(engine: Engine, *event_args: Any) -> Any:
                return handler()

        if not isinstance(event, FilteredEvent):
            return call
        accept, count = event.filter, self._counter(event.event)

        def filtered(engine: Engine, *event_args: Any) -> Any:
            if accept(engine, count()):
                return call(engine, *event_args)
            return None

        return filtered

    def _counter(self, event: EventEnum) -> Callable[[], int]:
        """What a filter on `event` counts (see DESIGN.md: iterations, epochs, or firings)."""
        state_of = self
        if event in _ITERATION_EVENTS:
            return lambda: state_of.state.iteration
        if event in _EPOCH_EVENTS:
            return lambda: state_of.state.epoch + 1
        return lambda: state_of._fired.get(event, 0)

    # ----------------------------------------------------------------------------- metrics

    def add_metric(self, metric: Any, name: str) -> None:
        """Attach a metric: reset per epoch, updated per iteration, computed into state.metrics.

        The Engine calls `metric.started(engine)`, `metric.iteration_completed(engine, name)` and
        `metric.completed(engine, name)` before any other handler of the same event.
        """
        for hook in ("started", "iteration_completed", "completed"):
            if not callable(getattr(metric, hook, None)):
                raise TypeError(
                    f"metric {name!r} ({type(metric).__name__}) has no {hook}() method; "
                    "metrics derive from trainer.metrics.Metric"
                )
        self._metrics[name] = metric
        # Infinite priority: metrics are ready before any user handler of the same event.
        self.add_event_handler(Events.EPOCH_STARTED, metric.started, priority=math.inf)
        self.add_event_handler(
            Events.ITERATION_COMPLETED, metric.iteration_completed, name, priority=math.inf
        )
        self.add_event_handler(Events.EPOCH_COMPLETED, metric.completed, name, priority=math.inf)

    @property
    def metrics(self) -> dict[str, Any]:
        """The metrics attached with `add_metric`, by name (a copy)."""
        return dict(self._metrics)

    def add_metrics(self, metrics: dict[str, Any]) -> None:
        """Attach several metrics by name."""
        for name, metric in metrics.items():
            self.add_metric(metric, name)

    # ----------------------------------------------------------------------------- control

    def terminate(self, reason: str | None = None) -> None:
        """Stop the run at the next event boundary; TERMINATE then COMPLETED fire.

        `reason` says why, for people: a run on the bus reports it in RUN_FINISHED.
        """
        self.should_terminate = True
        self.stop_reason = reason
        self._stop_requested = True

    def terminate_epoch(self) -> None:
        """End the current epoch at the next event boundary; its EPOCH_COMPLETED still fires."""
        self.should_terminate_single_epoch = True
        self._stop_requested = True

    def withdraw_stop(self) -> bool:
        """Take back a terminate() not acted on yet, so the run goes on; whether one was pending.

        Called from a handler, before the Engine reaches its next event boundary (e.g. by the
        last handler of the event the terminate() came in). A pending terminate_epoch() stays.
        """
        pending = self.should_terminate
        self.should_terminate = False
        self.stop_reason = None
        # The loops break out on this flag, which terminate_epoch() sets too.
        self._stop_requested = self.should_terminate_single_epoch
        return pending

    # ----------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """The counters needed to resume at the exact iteration, as plain Python values."""
        s = self.state
        return {
            "iteration": s.iteration,
            "epoch": s.epoch,
            "epoch_iteration": 0 if self._at_epoch_boundary() else s.epoch_iteration,
            "epochs_completed": self._epochs_completed,
            "max_epochs": s.max_epochs if s.max_epochs is not None else 1,
            "epoch_length": s.epoch_length,
            "pass_position": self._pass_position,
        }

    def _at_epoch_boundary(self) -> bool:
        return self._epochs_completed > self.state.epoch or self.state.iteration == 0

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore counters saved by `state_dict`; the next `run(data)` resumes from them."""
        if self._running:
            raise RuntimeError("load_state_dict() cannot be called while the engine is running")
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        for key, types in _STATE_KEYS.items():
            if key not in state_dict:
                raise KeyError(f"engine state_dict is missing the key {key!r}")
            value = state_dict[key]
            if isinstance(value, bool) or not isinstance(value, types):
                raise TypeError(f"engine state_dict key {key!r} has a bad value {value!r}")
            if isinstance(value, int) and value < 0:
                raise ValueError(f"engine state_dict key {key!r} must not be negative: {value}")
        if state_dict["max_epochs"] < 1:
            raise ValueError(f"engine state_dict key 'max_epochs' must be >= 1: {state_dict}")
        s = State()
        s.iteration = state_dict["iteration"]
        s.epoch = state_dict["epoch"]
        s.epoch_iteration = state_dict["epoch_iteration"]
        s.max_epochs = state_dict["max_epochs"]
        s.epoch_length = state_dict["epoch_length"]
        self.state = s
        self._epochs_completed = state_dict["epochs_completed"]
        self._resume_epoch_iteration = state_dict["epoch_iteration"]
        self._resume_skip = state_dict["pass_position"]
        self._pass_position = state_dict["pass_position"]
        self._pass_epoch = self._loaded_pass_epoch()
        self._data_iter = None
        self._can_continue = True

    def _loaded_pass_epoch(self) -> int:
        """The epoch in which the loaded state's pass over the data began.

        Within the epoch to run next when it has consumed no more batches than that epoch has;
        else as many epochs of `epoch_length` back as the rest of the pass spans.
        """
        into = self._resume_epoch_iteration  # 0 at an epoch boundary
        before = self._pass_position - into  # batches of the pass taken before this epoch
        if before <= 0:
            return self._epochs_completed
        length = self.state.epoch_length or before
        return max(0, self._epochs_completed - math.ceil(before / length))

    # ----------------------------------------------------------------------------- running

    def run(
        self,
        data: Iterable[Any],
        max_epochs: int | None = None,
        epoch_length: int | None = None,
    ) -> State:
        """Run over `data` for `max_epochs` epochs (1 by default) and return the State."""
        self._setup(data, max_epochs, epoch_length)
        if self._process_is_async or self._async_handlers:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(self._run())
            raise RuntimeError(
                "this engine has an async process function or handlers and an event loop is "
                "already running in this thread: use `await engine.arun(...)` instead of run()"
            )
        # Nothing is async: drive the coroutine by hand, with no event loop and no overhead.
        coroutine = self._run()
        try:
            coroutine.send(None)
        except StopIteration as finished:
            return finished.value
        coroutine.close()
        raise RuntimeError(
            "a handler registered as a plain function returned an awaitable that suspended; "
            "declare it `async def` or run the engine with `await engine.arun(...)`"
        )

    async def arun(
        self,
        data: Iterable[Any],
        max_epochs: int | None = None,
        epoch_length: int | None = None,
    ) -> State:
        """Like `run`, awaiting async handlers and process function in the running loop."""
        self._setup(data, max_epochs, epoch_length)
        return await self._run()

    def _setup(self, data: Iterable[Any], max_epochs: int | None, epoch_length: int | None) -> None:
        """Validate the arguments and prepare a fresh run or the continuation of one."""
        if self._running:
            raise RuntimeError("run() called while this engine is already running")
        if not hasattr(data, "__iter__"):
            raise TypeError(
                f"data must be iterable (a DataLoader, list or generator), "
                f"got {type(data).__name__}"
            )
        for name, value in (("max_epochs", max_epochs), ("epoch_length", epoch_length)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        sized = hasattr(data, "__len__")
        if sized and len(data) == 0:  # type: ignore[arg-type]
            raise ValueError(f"data is empty: {type(data).__name__} of length 0")

        if self._can_continue:
            s = self.state
            if max_epochs is not None:
                if max_epochs < self._epochs_completed:
                    raise ValueError(
                        f"max_epochs={max_epochs} is less than the {self._epochs_completed} "
                        "epochs this run has already completed"
                    )
                s.max_epochs = max_epochs
            if epoch_length is not None and s.epoch_length not in (None, epoch_length):
                raise ValueError(
                    f"epoch_length={epoch_length} differs from the resumed run's "
                    f"epoch_length={s.epoch_length}"
                )
            if s.epoch_length is None:
                s.epoch_length = epoch_length or (len(data) if sized else None)  # type: ignore[arg-type]
            if data is not self._data:
                self._data_iter = None
                self._resume_skip = self._pass_position
        else:
            s = State()
            s.max_epochs = max_epochs or 1
            s.epoch_length = epoch_length or (len(data) if sized else None)  # type: ignore[arg-type]
            self.state = s
            self._epochs_completed = 0
            self._resume_epoch_iteration = 0
            self._resume_skip = 0
            self._pass_position = 0
            self._pass_epoch = 0
            self._data_iter = None
        s.dataloader = data
        self._data = data
        # Looked up once per run; called once per epoch (and before a resumed pass is reopened).
        self._set_epoch = _epoch_setters(data)
        if self._data_iter is None and self._resume_skip:
            # The resumed pass must replay the order it had, which its sampler draws from the
            # epoch it began in, so the sampler learns that epoch before the pass is reopened.
            for set_epoch in self._set_epoch:
                set_epoch(self._pass_epoch)
            self._position_data(data, self._resume_skip)
        self._resume_skip = 0

    def _position_data(self, data: Iterable[Any], skip: int) -> None:
        """Open a fresh pass over `data` and skip the batches the resumed epoch consumed."""
        if hasattr(data, "__len__") and skip >= len(data):  # type: ignore[arg-type]
            self._data_iter = None  # the pass was complete: the next batch starts a new one
            self._pass_position = 0
            return
        iterator = iter(data)
        for consumed in range(skip):
            try:
                next(iterator)
            except StopIteration:
                raise DataExhaustedError(
                    f"cannot resume: the state says {skip} batches of the current pass were "
                    f"consumed, but the data ran out after {consumed}"
                ) from None
        self._data_iter = iterator
        self._pass_position = skip

    async def _run(self) -> State:
        s = self.state
        self._running = True
        self.should_terminate = self.should_terminate_single_epoch = False
        self.stop_reason = None
        self._stop_requested = False
        self._fired.clear()
        started_at = perf_counter()
        try:
            await self._fire(Events.STARTED)
            while self._epochs_completed < s.max_epochs and not self.should_terminate:  # type: ignore[operator]
                await self._run_epoch()
            if self.should_terminate:
                await self._fire(Events.TERMINATE)
            s.times["COMPLETED"] = perf_counter() - started_at
            await self._fire(Events.COMPLETED)
            self._can_continue = False
            self._data_iter = None
        except Exception as exc:
            self._can_continue = not self.should_terminate
            if not self._invokers[Events.EXCEPTION_RAISED]:
                raise
            self.logger.debug("exception in run handled by EXCEPTION_RAISED handlers: %r", exc)
            await self._fire(Events.EXCEPTION_RAISED, exc)
        finally:
            self._running = False
        return s

    async def _run_epoch(self) -> None:
        s = self.state
        s.epoch = self._epochs_completed
        s.epoch_iteration = self._resume_epoch_iteration
        self._resume_epoch_iteration = 0
        # Before EPOCH_STARTED, so that a handler of the user's calling set_epoch has the last
        # word. A pass opened during this epoch then shuffles by it, alike on every rank.
        for set_epoch in self._set_epoch:
            set_epoch(s.epoch)
        started_at = perf_counter()
        await self._fire(Events.EPOCH_STARTED)
        if self.should_terminate:
            return
        if not self.should_terminate_single_epoch:
            await self._iterate()
            if self.should_terminate:
                return
        if self.should_terminate_single_epoch:
            self.should_terminate_single_epoch = self._stop_requested = False
            self._data_iter = None  # the next epoch starts a fresh pass over the data
            self._pass_position = 0  # ... so a state saved at this boundary resumes there
        self._epochs_completed += 1
        s.times["EPOCH_COMPLETED"] = perf_counter() - started_at
        await self._fire(Events.EPOCH_COMPLETED)

    async def _iterate(self) -> None:
        """The hot loop: one epoch's batches, with the per-iteration events fired inline."""
        s = self.state
        invokers = self._invokers
        process, process_is_async = self._process_function, self._process_is_async
        isawaitable = inspect.isawaitable
        started, completed = Events.ITERATION_STARTED, Events.ITERATION_COMPLETED
        length = s.epoch_length
        iterator = self._data_iter
        while length is None or s.epoch_iteration < length:
            try:
                if iterator is None:
                    raise StopIteration
                batch = next(iterator)
            except StopIteration:
                fresh = self._next_pass()
                if fresh is None:  # unsized data: the pass is the epoch
                    s.epoch_length = length = s.epoch_iteration
                    break
                iterator, batch = fresh
            self._pass_position += 1
            s.iteration += 1
            s.epoch_iteration += 1
            s.batch = batch
            for invoke in invokers[started]:
                result = invoke(self)
                if result is not None and isawaitable(result):
                    await result
            if self._stop_requested:
                break
            output = process(self, batch)
            if process_is_async:
                output = await output
            s.output = output
            for invoke in invokers[completed]:
                result = invoke(self)
                if result is not None and isawaitable(result):
                    await result
            if self._stop_requested:
                break

    def _next_pass(self) -> tuple[Iterator[Any], Any] | None:
        """Start a new pass over the data and return it with its first batch.

        Returns None when the data has no length and the pass that just ended was the epoch.
        """
        s = self.state
        if s.epoch_length is None and s.epoch_iteration > 0:
            self._data_iter = None
            return None
        data = self._data
        assert data is not None
        iterator = iter(data)
        self._pass_position = 0
        self._pass_epoch = s.epoch
        try:
            first = next(iterator)
        except StopIteration:
            self._data_iter = None
            reason = (
                f"{type(data).__name__} is a one-shot iterator; pass a re-iterable "
                "(a list or a DataLoader) or an epoch_length it can supply"
                if iterator is data
                else f"a new pass over {type(data).__name__} yields nothing"
            )
            raise DataExhaustedError(
                f"data ran out after {s.epoch_iteration} of {s.epoch_length or '?'} iterations "
                f"in epoch {s.epoch + 1}/{s.max_epochs} and cannot be iterated again: {reason}"
            ) from None
        self._data_iter = iterator
        return iterator, first

    async def _fire(self, event: EventEnum, *event_args: Any) -> None:
        self._fired[event] = self._fired.get(event, 0) + 1
        for invoke in self._invokers[event]:
            result = invoke(self, *event_args)
            if result is not None and inspect.isawaitable(result):
                await result
