"""The ACL users of docs/protocol.md section 7, on a private Redis: each role can do its job.

The `ACL SETUSER` lines are read out of the document itself, so that the page and what the
code needs cannot drift apart. After each scenario the server's ACL LOG must hold no refusal.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from redis_server import RedisServer

from bus import (
    BEGINNING,
    NOW,
    BusAuthError,
    Consumer,
    Envelope,
    Publisher,
    Rejected,
    Topics,
    decode,
    encode,
    open_bus,
    tail,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
ROLES = ("trainer", "worker", "monitor")
DOCUMENTED_NAMESPACE = "trainer"


def documented_acl() -> dict[str, list[str]]:
    """The `ACL SETUSER` lines of protocol.md section 7 as argument lists, by user name."""
    text = DOC.read_text()
    start, end = text.index("\n## 7. "), text.index("\n## 8. ")
    lines = [
        shlex.split(line)
        for line in text[start:end].splitlines()
        if line.startswith("ACL SETUSER ")
    ]
    return {args[2]: args for args in lines}


def in_namespace(args: list[str], namespace: str) -> list[str]:
    """A documented line for another namespace, changed as section 7 says to."""
    keys = f"~{DOCUMENTED_NAMESPACE}:*"
    assert keys in args, f"the documented line {shlex.join(args)!r} no longer grants {keys}"
    return [f"~{namespace}:*" if a == keys else a for a in args]


def without(args: list[str], *rules: str) -> list[str]:
    """A documented line minus some of its rules (the optional ones)."""
    assert set(rules) <= set(args), f"{rules} are not in {shlex.join(args)!r}"
    return [a for a in args if a not in rules]


def admin(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port)


def create_user(server: RedisServer, args: list[str]) -> str:
    """Run one ACL SETUSER line on the server; return a bus URL logging in as that user."""
    client = admin(server)
    try:
        client.execute_command(*args)
        client.execute_command("ACL", "SAVE")  # so that a restarted server still knows it
    finally:
        client.close()
    user = args[2]
    passwords = [a[1:] for a in args if a.startswith(">")]
    assert passwords, f"the documented line for {user!r} sets no password"
    return (
        f"redis://{quote(user, safe='')}:{quote(passwords[0], safe='')}@127.0.0.1:{server.port}/0"
    )


def refusals(server: RedisServer) -> list[str]:
    """What the server's ACL LOG says it refused: "user: command (reason)"."""
    client = admin(server)
    try:
        entries = client.acl_log()
    finally:
        client.close()
    return [
        f"{e['username']}: {e['object']} ({e['reason']})"
        for e in entries
        # redis-py sends CLIENT SETINFO on connecting and ignores a refusal (Redis >= 7.2).
        if e["object"] != "client|setinfo"
    ]


def pending(server: RedisServer, topic: str, group: str) -> list[dict]:
    """The group's pending entries (XPENDING, as the admin: it changes nothing)."""
    client = admin(server)
    try:
        return client.xpending_range(topic, group, "-", "+", 100)
    finally:
        client.close()


@pytest.fixture
def acl_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A durable private Redis whose ACL users survive a restart (an aclfile, ACL SAVE)."""
    aclfile = tmp_path / "users.acl"
    aclfile.write_text("")
    server = RedisServer(durable=True, extra=["--aclfile", str(aclfile)]).start()
    yield server
    server.close()


def env(i: int, run_id: str = "r1", kind: str = "ITERATION_COMPLETED") -> Envelope:
    return Envelope(type=kind, run_id=run_id, source="trainer:0", iteration=i, data={"i": i})


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait for `condition`; fail after `timeout` s (a hang guard, not a timing test)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


async def envelope_ids(url: str, topic: str) -> list[str]:
    """Envelope ids of a whole topic in stream order, read as the server's default user."""
    bus = open_bus(url)
    ids: list[str] = []
    after = BEGINNING
    try:
        while entries := await bus.read(topic, after, count=5000, block=None):
            ids.extend(decode(e.payload).id for e in entries)
            after = entries[-1].id
    finally:
        await bus.close()
    return ids


def test_protocol_md_gives_one_acl_line_per_role() -> None:
    acl = documented_acl()
    assert sorted(acl) == sorted(ROLES)
    for user, args in acl.items():
        assert args[:3] == ["ACL", "SETUSER", user]
        assert "reset" in args and "on" in args, f"{user}: the line must define the whole user"
        assert f"~{DOCUMENTED_NAMESPACE}:*" in args
        assert not any(a.startswith("+@") for a in args), f"{user}: categories grant too much"


# -- publishing through a server crash: the write in flight is checked before it is retried ---


@pytest.mark.parametrize(
    ("role", "scripts"), [("trainer", True), ("trainer", False), ("worker", True)]
)
async def test_a_publisher_rides_out_a_crash_with_its_documented_acl(
    acl_server: RedisServer, role: str, scripts: bool
) -> None:
    args = documented_acl()[role]
    if not scripts:
        args = without(args, "+evalsha", "+eval")  # section 7: optional, pipelined without
    url = create_user(acl_server, args)
    topic = Topics(DOCUMENTED_NAMESPACE).events("r1")
    bus = open_bus(url)
    pub = Publisher(bus, max_batch=100, max_outbox=1000, backoff_initial=0.01, backoff_max=0.1)
    published: list[str] = []
    stop_at: list[int] = []

    async def produce() -> None:
        # Never idle, so the crash finds a write in flight (or fails the next one): either way
        # the publisher cannot know what the server kept and must read the topic back.
        while not stop_at or len(published) < stop_at[0]:
            e = env(len(published))
            await pub.publish(topic, e)
            published.append(e.id)
            if len(published) % 20 == 0:
                await asyncio.sleep(0)

    producer = asyncio.create_task(produce())
    await wait_until(lambda: pub.stats().published >= 500, "the first envelopes to be written")
    acl_server.kill()
    await wait_until(lambda: not pub.stats().connected, "the publisher to notice the crash")
    acl_server.start()
    stop_at.append(len(published) + 500)
    await asyncio.wait_for(producer, 60)
    await pub.close(timeout=60)  # raises PublisherFailed had a command been refused
    await bus.close()

    assert refusals(acl_server) == []
    # The restarted server counts only the publisher's commands: it did read the topic back.
    client = admin(acl_server)
    reads = client.info("commandstats").get("cmdstat_xread", {}).get("calls", 0)
    client.close()
    assert reads > 0, "the publisher never checked what the crash left: nothing was tested"
    written = await envelope_ids(acl_server.url, topic)
    assert list(dict.fromkeys(written)) == published  # each once, in order
    assert len(written) == len(published)  # and not written twice: the check worked
    assert pub.stats().outages == 1


async def test_a_publisher_that_may_not_read_back_writes_a_failed_batch_again(
    acl_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The pre-fix documented worker had no XREAD: such a publisher must not die of it.
    url = create_user(acl_server, without(documented_acl()["trainer"], "+xread", "+xrevrange"))
    topic = Topics(DOCUMENTED_NAMESPACE).events("r1")
    bus = open_bus(url)
    pub = Publisher(bus, max_batch=100, max_outbox=1000, backoff_initial=0.01, backoff_max=0.1)
    sent = [env(i) for i in range(100)]
    for e in sent[:50]:
        await pub.publish(topic, e)
    await pub.flush()
    acl_server.kill()
    for e in sent[50:]:
        await pub.publish(topic, e)
    await wait_until(lambda: not pub.stats().connected, "the publisher to notice the crash")
    acl_server.start()
    await pub.close(timeout=60)  # raises PublisherFailed had the refusal stopped it
    await bus.close()

    written = await envelope_ids(acl_server.url, topic)
    assert list(dict.fromkeys(written)) == [e.id for e in sent]
    assert "grant the bus user XREAD and XREVRANGE" in caplog.text


# -- consuming: groups, retries and dead letters under the worker's ACL -----------------------


async def test_a_worker_consumes_retries_and_dead_letters_with_its_documented_acl(
    acl_server: RedisServer,
) -> None:
    topics = Topics("lab")  # not the default namespace: its dead letters must stay in it
    url = create_user(acl_server, in_namespace(documented_acl()["worker"], "lab"))
    feeder = open_bus(acl_server.url)
    await feeder.append(topics.registry(), [encode(env(0, kind="RUN_STARTED"))])
    await feeder.append(
        topics.events("r1"),
        [
            encode(env(0)),
            b"\x93not an envelope",
            encode(env(1)),  # fails once, handled when redelivered
            encode(env(2, kind="BAD")),  # rejected: dead-lettered at once
            encode(env(3)),
        ],
    )
    handled: list[int] = []
    failed_once: set[int] = set()

    def handle(e: Envelope) -> None:
        if e.type == "BAD":
            raise Rejected("no such type")
        if e.iteration == 1 and 1 not in failed_once:
            failed_once.add(1)
            raise RuntimeError("flaky")
        handled.append(e.iteration)

    bus = open_bus(url)
    consumer = Consumer(
        bus, topics.events("r1"), "metrics", handle, block=0.05, claim_idle=0.1, claim_every=0.05
    )
    assert consumer.dead_letter_topic == "lab:deadletter"
    pub = Publisher(bus)
    async with consumer:
        await wait_until(lambda: sorted(handled) == [0, 1, 3], "every good envelope handled")
        # A worker's reports and control envelopes, and its tail of the registry.
        await pub.publish(topics.events("r1"), env(9, kind="METRICS"))
        await pub.publish(topics.control("r1"), env(9, kind="WORKER_JOINED"))
        await pub.close()
        registry = [e.type async for e in tail(bus, topics.registry(), BEGINNING, follow=False)]
    letters = await feeder.read(topics.dead_letter(), BEGINNING, count=10, block=None)
    await bus.close()
    await feeder.close()

    assert refusals(acl_server) == []
    assert registry == ["RUN_STARTED"]
    assert pending(acl_server, topics.events("r1"), "metrics") == []
    reasons = [decode(e.payload).data["reason"].split(":")[0] for e in letters]
    assert reasons == ["undecodable", "rejected by the handler"]


async def test_a_refused_dead_letter_leaves_the_entry_pending_and_the_worker_consuming(
    acl_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    topics = Topics("lab")
    worker_acl = in_namespace(documented_acl()["worker"], "lab")
    url = create_user(acl_server, worker_acl)
    feeder = open_bus(acl_server.url)
    events = topics.events("r1")
    garbage = (await feeder.append(events, [encode(env(0)), b"garbage", encode(env(1))]))[1]
    handled: list[int] = []
    bus = open_bus(url)

    def still_pending() -> list[str]:
        return [p["message_id"].decode() for p in pending(acl_server, events, "metrics")]

    # A dead-letter topic this worker may not write: every dead letter is refused (NOPERM).
    consumer = Consumer(
        bus,
        events,
        "metrics",
        lambda e: handled.append(e.iteration),
        block=0.05,
        claim_idle=0.1,
        claim_every=0.05,
        dead_letter_topic="elsewhere:deadletter",
    )
    with caplog.at_level(logging.ERROR, logger="bus.consumer"):
        await consumer.start()
        await wait_until(lambda: handled == [0, 1], "the entries around the bad one handled")
        await wait_until(lambda: consumer.stats.dead_letters_refused >= 2, "a retried refusal")
        # Still consuming: the refusals did not kill it, and the bad entry is kept.
        await feeder.append(events, [encode(env(2))])
        await wait_until(lambda: handled == [0, 1, 2], "an entry appended after the refusals")
        await wait_until(lambda: still_pending() == [garbage], "only the bad entry pending")
        # Once the user may write there, the next retry dead-letters it and acks it.
        grant = admin(acl_server)
        grant.execute_command("ACL", "SETUSER", "worker", "~elsewhere:*")
        grant.close()
        await wait_until(lambda: consumer.stats.dead_lettered == 1, "the retried dead letter")
        await consumer.stop()
    assert "'elsewhere:deadletter'" in caplog.text and "grant it XADD" in caplog.text
    assert still_pending() == []
    [letter] = await feeder.read("elsewhere:deadletter", BEGINNING, count=10, block=None)
    assert decode(letter.payload).data["payload"] == b"garbage"
    await bus.close()
    await feeder.close()


# -- monitoring: tails only -------------------------------------------------------------------


async def test_a_monitor_tails_with_its_documented_acl_and_can_change_nothing(
    acl_server: RedisServer,
) -> None:
    topics = Topics(DOCUMENTED_NAMESPACE)
    url = create_user(acl_server, documented_acl()["monitor"])
    writer = open_bus(acl_server.url)
    await writer.append(topics.events("r1"), [encode(env(i)) for i in range(3)])
    monitor = open_bus(url)
    try:
        history = [e.iteration async for e in tail(monitor, topics.events("r1"), follow=False)]
        live = tail(monitor, topics.events("r1"), NOW, block=0.05)
        await live.open()
        await writer.append(topics.events("r1"), [encode(env(3))])
        following = aiter(live)
        newest = await anext(following)
        await following.aclose()
        assert (history, newest.iteration) == ([0, 1, 2], 3)
        assert await monitor.length(topics.events("r1")) == 4
        await monitor.ping()
        assert refusals(acl_server) == []

        with pytest.raises(BusAuthError, match="XADD"):
            await monitor.append(topics.events("r1"), [encode(env(4))])
        with pytest.raises(BusAuthError, match="XGROUP"):
            await monitor.ensure_group(topics.events("r1"), "snoop")
    finally:
        await monitor.close()
        await writer.close()
