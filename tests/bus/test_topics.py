"""Topic names: what Topics builds, what it refuses, and the Topics a name belongs to."""

from __future__ import annotations

import pytest

from bus import Consumer, InMemoryBus, InvalidTopic, Topics, topics_of


def test_topics_of_gives_back_the_namespace_of_every_name_topics_builds() -> None:
    lab = Topics("lab")
    for topic in (lab.events("r1"), lab.control("r-2.b_c"), lab.registry(), lab.dead_letter()):
        assert topics_of(topic) == lab


@pytest.mark.parametrize(
    "topic",
    [
        "lab:run:r1",
        "lab:run:r1:events:extra",
        "lab:other",
        "events",
        "",
        ":runs",
        "lab:run::events",
    ],
)
def test_topics_of_refuses_a_name_topics_never_builds_naming_it(topic: str) -> None:
    with pytest.raises(InvalidTopic, match="is not a bus topic name") as info:
        topics_of(topic)
    assert repr(topic) in str(info.value)


@pytest.mark.parametrize("bad", ["r1\n", "r1\r\n", "\nr1", "r 1", "r1:x", "", "-r1", "r" * 129])
def test_a_run_id_or_namespace_that_cannot_name_a_topic_is_refused(bad: str) -> None:
    with pytest.raises(InvalidTopic, match="not usable in a topic name"):
        Topics("lab").events(bad)
    with pytest.raises(InvalidTopic, match="not usable in a topic name"):
        Topics(bad)


def test_a_topic_name_ending_in_a_newline_has_no_namespace() -> None:
    with pytest.raises(InvalidTopic):
        topics_of("lab:run:r1:events\n")
    with pytest.raises(InvalidTopic):
        topics_of("lab\n:runs")


def test_a_consumer_dead_letters_into_its_topics_namespace_by_default() -> None:
    bus = InMemoryBus()
    lab = Topics("lab")
    consumer = Consumer(bus, lab.events("r1"), "g", lambda env: None)
    assert consumer.dead_letter_topic == "lab:deadletter"
    chosen = Consumer(bus, lab.events("r1"), "g", lambda env: None, dead_letter_topic="x:y")
    assert chosen.dead_letter_topic == "x:y"


def test_a_consumer_of_a_foreign_topic_must_be_told_where_dead_letters_go() -> None:
    with pytest.raises(InvalidTopic, match="pass the Consumer a dead_letter_topic"):
        Consumer(InMemoryBus(), "somewhere-else", "g", lambda env: None)


def test_a_consumer_refuses_a_bad_dead_letter_cap_when_made_not_at_its_first_dead_letter() -> None:
    with pytest.raises(ValueError, match="'lab:deadletter' must be an integer >= 0, got -1"):
        Consumer(InMemoryBus(), Topics("lab").events("r1"), "g", print, dead_letter_maxlen=-1)
