"""What the framework adapters cost each framework's own loop, and how fast a vote stops it.

For each framework (Ignite, Lightning, Hugging Face; one not installed is skipped with a line
saying so), and first for this project's own Engine with the bridge's BusRun (`engine`: the
code every adapter reuses, so its cost is the reference), its own loop trains the digits MLP
of bench/digits_overhead.py (64-128-10, batch 64, Adam, one thread):

1. overhead: without the adapter, with it on the in-memory bus, and with it on a private
   redis-server (tests/redis_server.py), taking turns so machine noise hits them alike (every
   other round in reverse order). Prints seconds per epoch (median), then adapter/plain as the
   median of the ratios of the same round's turns in wall time, with a bootstrap 95% interval
   of that median, and in the process's CPU time (every thread: the publisher's too); target
   <= 1.03.
2. stop latency: a voter registered before the run appends a stop VOTE at a random moment
   while the framework trains; latency is from the moment the VOTE has landed on the bus (the
   append returned) to the end of the framework's last step. p50/p99 over the trials against
   the target, one step (the median step time) + 50 ms.

    .venv/bin/python bench/adapters_overhead.py [--rounds 20] [--epochs 10] [--trials 40]
        [--frameworks ignite,lightning,hf] [--publish-every 1]

A framework's part is four functions named `<framework>_plain`, `<framework>_adapted` and
`<framework>_stop_trial` (see the Ignite ones), listed in FRAMEWORKS.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import logging
import random
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from digits_overhead import Job, digits_loader  # noqa: E402
from redis_server import RedisServer  # noqa: E402

from bus import Envelope, ThreadedPublisher, Topics, encode, new_id, open_bus  # noqa: E402

TOPICS = Topics()
VOTER = "bench-voter"
# A stop trial's run is long enough never to end before the vote stops it.
TRIAL_EPOCHS = 10_000


@dataclass
class Timing:
    """One turn: wall seconds and the process's CPU seconds (all threads)."""

    wall: float = 0.0
    cpu: float = 0.0


class Window:
    """The training's own time in a turn: from the first epoch's start to the run's end, as the
    framework's hooks see them (the adapter's start and finish, with their thread start-ups and
    final flush, are outside it and measured apart)."""

    def __init__(self) -> None:
        self.timing = Timing()
        self._wall = self._cpu = 0.0

    def open(self, *args: Any) -> None:
        """Call when the first epoch starts."""
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def close(self, *args: Any) -> None:
        """Call when the run completes (before the adapter's own end of the run)."""
        self.timing = Timing(time.perf_counter() - self._wall, time.process_time() - self._cpu)


def timed(run: Callable[[Window], Any]) -> tuple[Timing, Timing]:
    """(the training window, the whole turn) of `run(window)` in wall and CPU seconds."""
    window = Window()
    wall, cpu = time.perf_counter(), time.process_time()
    run(window)
    return window.timing, Timing(time.perf_counter() - wall, time.process_time() - cpu)


class StepClock:
    """The end time of every step of a stop trial, and the trial's stop once it is over."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.running = threading.Event()

    def step(self) -> None:
        """Call at the end of each of the framework's training steps."""
        self.ends.append(time.perf_counter())
        if len(self.ends) == 5:
            self.running.set()  # warmed up: the voter may vote from now on


# ---- Ignite --------------------------------------------------------------------------------


def _ignite_engine(job: Job, window: Window | None = None) -> Any:
    """Ignite's Engine over the job's step, with the epoch's mean loss and accuracy."""
    from ignite.engine import Engine, Events
    from ignite.metrics import Accuracy, Average

    engine = Engine(job.step)
    Average(output_transform=lambda out: out["loss"]).attach(engine, "loss")
    Accuracy(output_transform=lambda out: (out["y_pred"], out["y"])).attach(engine, "accuracy")
    if window is not None:
        engine.add_event_handler(Events.EPOCH_STARTED(once=1), window.open)
        # attach_bus moves its own COMPLETED handler (the run's end) behind this one.
        engine.add_event_handler(Events.COMPLETED, window.close)
    return engine


def ignite_plain(loader: DataLoader, epochs: int, window: Window) -> None:
    """Ignite's own loop, no adapter."""
    _ignite_engine(Job(seed=0), window).run(loader, max_epochs=epochs)


def ignite_adapted(
    loader: DataLoader, epochs: int, bus_url: str, window: Window, publish_every: int = 1
) -> None:
    """Ignite's own loop with attach_bus publishing to `bus_url`."""
    from trainer.adapters.ignite import attach_bus

    engine = _ignite_engine(Job(seed=0), window)
    handle = attach_bus(engine, bus_url, run_id=new_id(), publish_every=publish_every)
    engine.run(loader, max_epochs=epochs)
    assert handle.end is not None and handle.end.status == "completed", handle.end


def ignite_stop_trial(loader: DataLoader, bus_url: str, run_id: str, clock: StepClock) -> None:
    """Ignite's loop with attach_bus on run `run_id`, `clock.step()` after every step, until a
    vote stops it."""
    from ignite.engine import Events

    from trainer.adapters.ignite import attach_bus

    engine = _ignite_engine(Job(seed=0))
    handle = attach_bus(engine, bus_url, run_id=run_id)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda _: clock.step())
    engine.run(loader, max_epochs=TRIAL_EPOCHS)
    assert handle.end is not None and handle.end.voter == VOTER, handle.end


# ---- the reference: this project's own Engine with and without BusRun -----------------------


def engine_plain(loader: DataLoader, epochs: int, window: Window) -> None:
    """This project's Engine over the same step, with Loss and Accuracy, no bus."""
    _our_engine(window).run(loader, max_epochs=epochs)


def engine_adapted(
    loader: DataLoader, epochs: int, bus_url: str, window: Window, publish_every: int = 1
) -> None:
    """The same with the bridge's BusRun publishing to `bus_url`: what the adapters reuse."""
    from trainer.bridge import BusRun

    engine = _our_engine(window)
    run = BusRun(bus_url, new_id(), publish_every=publish_every)
    run.attach(engine)
    with run:
        engine.run(loader, max_epochs=epochs)


def _our_engine(window: Window) -> Any:
    from trainer import Engine, Events
    from trainer.metrics import Accuracy, Loss

    engine = Engine(Job(seed=0).step)
    engine.add_metric(Loss(), "loss")
    engine.add_metric(Accuracy(), "accuracy")
    engine.add_event_handler(Events.EPOCH_STARTED(once=1), window.open)
    engine.add_event_handler(Events.COMPLETED, window.close, priority=float("inf"))
    return engine


def engine_stop_trial(loader: DataLoader, bus_url: str, run_id: str, clock: StepClock) -> None:
    """This Engine with BusRun on run `run_id`, `clock.step()` after every step."""
    from trainer import Engine, Events
    from trainer.bridge import BusRun

    engine = Engine(Job(seed=0).step)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda _: clock.step())
    run = BusRun(bus_url, run_id)
    run.attach(engine)
    with run:
        engine.run(loader, max_epochs=TRIAL_EPOCHS)


# ---- Lightning ------------------------------------------------------------------------------


def _lightning_fit(
    loader: DataLoader, epochs: int, callbacks: list[Any], bus_callback: Any = None
) -> Any:
    """Trainer.fit of the digits MLP (the Job's model and Adam), the epoch's mean loss and
    accuracy logged as Lightning users log them (a torchmetrics Accuracy); no validation."""
    import lightning as L
    import torchmetrics

    job = Job(seed=0)

    class DigitsMLP(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = job.model
            self.accuracy = torchmetrics.Accuracy(task="multiclass", num_classes=10)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            y_pred = self.model(x)
            loss = job.loss_fn(y_pred, y)
            self.accuracy(y_pred, y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            self.log("train_accuracy", self.accuracy, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self) -> Any:
            return job.optimizer

    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=[*callbacks, *([bus_callback] if bus_callback is not None else [])],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(DigitsMLP(), loader)
    return trainer


def _lightning_window(window: Window) -> Any:
    """A callback opening `window` at the first epoch's start and closing it at the training's
    end (on_train_end: before the BusCallback's on_fit_end, where the run finishes)."""
    import lightning as L

    class Timed(L.Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            if trainer.current_epoch == 0:
                window.open()

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            window.close()

    return Timed()


def lightning_plain(loader: DataLoader, epochs: int, window: Window) -> None:
    """Lightning's own loop (Trainer.fit on the digits MLP), no adapter; `window.open()` at the
    first epoch's start, `window.close()` at the fit's end (before the adapter's)."""
    _lightning_fit(loader, epochs, [_lightning_window(window)])


def lightning_adapted(
    loader: DataLoader, epochs: int, bus_url: str, window: Window, publish_every: int = 1
) -> None:
    """Lightning's own loop with the BusCallback publishing to `bus_url`."""
    from trainer.adapters.lightning import BusCallback

    bus = BusCallback(bus_url, new_id(), publish_every=publish_every)
    _lightning_fit(loader, epochs, [_lightning_window(window)], bus)
    assert bus.end is not None and bus.end.status == "completed", bus.end


def lightning_stop_trial(loader: DataLoader, bus_url: str, run_id: str, clock: StepClock) -> None:
    """Lightning's loop with the BusCallback on run `run_id`, `clock.step()` after every step
    (on_train_batch_end), until a vote stops it."""
    import lightning as L

    from trainer.adapters.lightning import BusCallback

    class Steps(L.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            clock.step()

    bus = BusCallback(bus_url, run_id)
    _lightning_fit(loader, TRIAL_EPOCHS, [Steps()], bus)
    assert bus.end is not None and bus.end.voter == VOTER, bus.end


# ---- Hugging Face --------------------------------------------------------------------------

_HF_OUTPUT = Path(tempfile.mkdtemp(prefix="bench-hf-"))  # HF's output_dir (nothing is saved)


class _HFDigits(torch.utils.data.Dataset):
    """The loader's examples as the dicts a Hugging Face Trainer feeds its model."""

    def __init__(self, loader: DataLoader) -> None:
        self.x, self.y = loader.dataset.tensors  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


class _HFModel(torch.nn.Module):
    """The job's MLP returning {"loss", "logits"}, as a Hugging Face model does."""

    def __init__(self, job: Job) -> None:
        super().__init__()
        self.net, self.loss_fn = job.model, job.loss_fn

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(x)
        return {"loss": self.loss_fn(logits, labels), "logits": logits}


def _hf_trainer(loader: DataLoader, epochs: int, callbacks: list[Any]) -> Any:
    """A Trainer on the digits MLP: Adam at 1e-3 (AdamW, no decay), constant rate, a log every
    10 steps, no evaluation, no saves, no printing."""
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    args = TrainingArguments(
        str(_HF_OUTPUT),
        per_device_train_batch_size=loader.batch_size or 64,
        num_train_epochs=epochs,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        weight_decay=0.0,
        logging_steps=10,
        eval_strategy="no",
        save_strategy="no",
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(
        model=_HFModel(Job(seed=0)), args=args, train_dataset=_HFDigits(loader), callbacks=callbacks
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def _hf_callback(**hooks: Callable[..., None]) -> Any:
    """A TrainerCallback running `hooks` (name -> fn(state)) at those hooks."""
    from transformers import TrainerCallback

    class Hooks(TrainerCallback):
        pass

    callback = Hooks()
    for name, fn in hooks.items():
        setattr(callback, name, lambda args, state, control, fn=fn, **kw: fn(state))
    return callback


def _hf_window(window: Window) -> Any:
    """Opens `window` when the first epoch begins, closes it at the end of training (this
    callback comes before the adapter's, so before the run's end is published)."""
    return _hf_callback(
        on_epoch_begin=lambda state: window.open() if state.global_step == 0 else None,
        on_train_end=lambda state: window.close(),
    )


def hf_plain(loader: DataLoader, epochs: int, window: Window) -> None:
    """The Hugging Face Trainer's own loop on the digits MLP, no adapter; `window` as for
    Lightning (on_epoch_begin of the first epoch, on_train_end before the adapter's)."""
    _hf_trainer(loader, epochs, [_hf_window(window)]).train()


def hf_adapted(
    loader: DataLoader, epochs: int, bus_url: str, window: Window, publish_every: int = 1
) -> None:
    """The Hugging Face Trainer's loop with the bus TrainerCallback publishing to `bus_url`."""
    from trainer.adapters.hf import BusTrainerCallback

    bus = BusTrainerCallback(bus_url, new_id(), publish_every=publish_every)
    _hf_trainer(loader, epochs, [_hf_window(window), bus]).train()
    assert bus.end is not None and bus.end.status == "completed", bus.end


def hf_stop_trial(loader: DataLoader, bus_url: str, run_id: str, clock: StepClock) -> None:
    """The Hugging Face Trainer with the bus callback on run `run_id`, `clock.step()` after
    every step (on_step_end), until a vote stops it."""
    from trainer.adapters.hf import BusTrainerCallback

    # No checkpoint at the stop: the latency is to the last step's end, the save comes after.
    bus = BusTrainerCallback(bus_url, run_id, save_on_stop=False)
    clock_cb = _hf_callback(on_step_end=lambda state: clock.step())
    _hf_trainer(loader, TRIAL_EPOCHS, [bus, clock_cb]).train()
    assert bus.end is not None and bus.end.voter == VOTER, bus.end


@dataclass(frozen=True)
class Framework:
    """A framework's part of the benchmark: its package, its extra and its three functions."""

    name: str
    module: str  # imported to tell whether it is installed
    extra: str
    plain: Callable[[DataLoader, int, Window], None]
    adapted: Callable[[DataLoader, int, str, Window, int], None]  # the last: publish_every
    stop_trial: Callable[[DataLoader, str, str, StepClock], None]


FRAMEWORKS = [
    # Not a framework: the bridge on our own Engine, what each adapter's cost compares with.
    Framework("engine", "trainer", "test", engine_plain, engine_adapted, engine_stop_trial),
    Framework("ignite", "ignite", "ignite", ignite_plain, ignite_adapted, ignite_stop_trial),
    Framework(
        "lightning",
        "lightning",
        "lightning",
        lightning_plain,
        lightning_adapted,
        lightning_stop_trial,
    ),
    Framework("hf", "transformers", "hf", hf_plain, hf_adapted, hf_stop_trial),
]


# ---- the harness -----------------------------------------------------------------------------


def overhead(fw: Framework, loader: DataLoader, buses: dict[str, str], args: Any) -> None:
    """Adapter against plain, per bus: seconds per epoch and median per-turn ratios."""
    contenders: dict[str, Callable[[Window], None]] = {
        "plain": lambda window: fw.plain(loader, args.epochs, window),
        **{
            f"adapter, {bus}": (
                lambda window, url=url: fw.adapted(
                    loader, args.epochs, url, window, args.publish_every
                )
            )
            for bus, url in buses.items()
        },
    }
    for run in contenders.values():  # warm-up: imports, allocator, autograd caches
        timed(run)
    turns: dict[str, list[tuple[Timing, Timing]]] = {name: [] for name in contenders}
    order = list(contenders)
    for round_ in range(args.rounds):
        # Every other round backwards, so a contender is not always the one after the same
        # other (a turn's allocator and cache state depend on the turn before).
        for name in order if round_ % 2 == 0 else order[::-1]:
            turns[name].append(timed(contenders[name]))
    print(
        f"{fw.name}: {len(loader)} iterations/epoch, {args.rounds} turns of {args.epochs} epochs, "
        f"ITERATION_COMPLETED every {args.publish_every} step(s)"
    )
    for name, t in turns.items():
        wall = statistics.median(w.wall for w, _ in t) / args.epochs
        cpu = statistics.median(w.cpu for w, _ in t) / args.epochs
        outside = statistics.median(whole.wall - w.wall for w, whole in t)
        outside_cpu = statistics.median(whole.cpu - w.cpu for w, whole in t)
        print(
            f"  {name:17s} {wall * 1e3:7.2f} ms/epoch wall {cpu * 1e3:7.2f} ms/epoch CPU; "
            f"outside the epochs (set-up, start, finish) {outside * 1e3:6.1f} ms wall "
            f"{outside_cpu * 1e3:6.1f} ms CPU per run"
        )
    plain = [w for w, _ in turns["plain"]]
    for name in contenders:
        if name == "plain":
            continue
        pairs = list(zip([w for w, _ in turns[name]], plain, strict=True))
        walls = [a.wall / b.wall for a, b in pairs]
        wall = statistics.median(walls)
        cpu = statistics.median(a.cpu / b.cpu for a, b in pairs)
        low, high = median_interval(walls)
        print(
            f"  {name}/plain = {wall:.3f} wall (95% interval of the median {low:.3f}-{high:.3f}), "
            f"{cpu:.3f} CPU  (target <= 1.03)"
        )


def median_interval(values: list[float], draws: int = 2000) -> tuple[float, float]:
    """A bootstrap 95% interval of the median of `values`: how far the noise moves it."""
    rng = random.Random(1)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _vote(
    client: ThreadedPublisher, run_id: str, clock: StepClock, delay: float, landed: list[float]
) -> None:
    """The voter: once training runs, wait `delay` s, append a stop VOTE, note when it landed."""
    clock.running.wait(60)
    time.sleep(delay)  # at any phase of a step
    data = {"stop": True, "reason": "bench", "voter": VOTER, "epoch": 0}
    ballot = encode(Envelope("VOTE", run_id, VOTER, data))
    topic = TOPICS.control(run_id)
    client.submit(lambda bus: bus.append(topic, [ballot])).result(30)
    landed.append(time.perf_counter())


def stop_latency(fw: Framework, loader: DataLoader, bus: str, url: str, args: Any) -> None:
    """VOTE landed -> the framework's last step, over `args.trials` trials on one bus."""
    client = ThreadedPublisher(lambda: open_bus(url))
    latencies, steps_after, step_times = [], [], []
    rng = random.Random(0)
    try:
        for _ in range(args.trials):
            run_id = new_id()
            topic = TOPICS.control(run_id)
            joined = Envelope(
                "WORKER_JOINED", run_id, VOTER, {"kind": "bench", "name": VOTER, "votes": True}
            )
            client.submit(lambda b, e=joined, t=topic: b.append(t, [encode(e)])).result(30)
            clock = StepClock()
            landed: list[float] = []
            voter = threading.Thread(
                target=_vote,
                args=(client, run_id, clock, rng.uniform(0.0, 0.05), landed),
                daemon=True,
            )
            voter.start()
            fw.stop_trial(loader, url, run_id, clock)
            voter.join(60)
            ends = clock.ends
            latencies.append(ends[-1] - landed[0])
            steps_after.append(sum(1 for end in ends if end > landed[0]))
            step_times += [b - a for a, b in itertools.pairwise(ends[5:])]
    finally:
        client.close()
    step = statistics.median(step_times)
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    target = step + 0.05
    print(
        f"  stop latency, {bus}: p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms over "
        f"{args.trials} trials (step {step * 1e3:.2f} ms; target p99 <= {target * 1e3:.2f} ms: "
        f"{'met' if p99 <= target else 'MISSED'}); steps begun after the vote: max "
        f"{max(steps_after)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="turns per contender")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per turn")
    parser.add_argument("--trials", type=int, default=40, help="stop trials per bus")
    parser.add_argument(
        "--frameworks", default=",".join(fw.name for fw in FRAMEWORKS), help="which to measure"
    )
    parser.add_argument(
        "--publish-every",
        type=int,
        default=1,
        help="the adapters' publish_every in the overhead turns (ITERATION_COMPLETED every n)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)  # the frameworks' and the bridge's info lines
    torch.set_num_threads(1)
    chosen = set(args.frameworks.split(","))

    server = RedisServer().start()
    try:
        buses = {"memory": f"memory://bench-{new_id()}", "redis": server.url}
        loader = digits_loader()
        for fw in FRAMEWORKS:
            if fw.name not in chosen:
                continue
            if importlib.util.find_spec(fw.module) is None:
                print(f"{fw.name}: skipped, not installed (pip install -e '.[{fw.extra}]')")
                continue
            try:
                overhead(fw, loader, buses, args)
                for bus, url in buses.items():
                    stop_latency(fw, loader, bus, url, args)
            except NotImplementedError as exc:
                print(f"{fw.name}: skipped, {exc}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
