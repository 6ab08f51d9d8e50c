"""`KafkaFeed` in a consumer group, on the real broker: members share the partitions, each
assigned partition starts exactly at the position the database holds at that moment (never at a
Kafka-committed offset), a member that leaves hands its partitions over, and the topic checks of
the manual mode (identity, offsets within the topic) still stop the feed."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import pytest

from cardpay.devstack.kafka_broker import KafkaBroker
from cardpay.kafka.adapters import KafkaFeed, KafkaFeedChanged, KafkaPublisher
from cardpay.kafka.identity import FeedIdentity, InMemoryFeedIdentityStore
from cardpay.kafka.wire import OutboxMessage, encode_event
from domain.events import RecordedEvent
from projector.feed import FeedMessage
from tests.integration.test_kafka import _events

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PARTITIONS = 4


class Database:
    """The positions a projector would have committed: the members' `stored_positions`."""

    def __init__(self) -> None:
        self.positions: dict[str, int] = {}

    def load(self) -> dict[str, int]:
        return dict(self.positions)


async def _publish(servers: str, topic: str, events: Sequence[RecordedEvent]) -> None:
    publisher = KafkaPublisher(servers)
    await publisher.start()
    try:
        await publisher.publish([OutboxMessage(i, topic, e.stream_id, encode_event(e))
                                 for i, e in enumerate(events, 1)])
    finally:
        await publisher.stop()


def _member(broker: KafkaBroker, topic: str, db: Database, group: str) -> KafkaFeed:
    return KafkaFeed(broker.bootstrap_servers, topic, group_id=group, stored_positions=db.load,
                     start_timeout=10.0)


def _owned(feed: KafkaFeed) -> set[int]:
    return {tp.partition for tp in feed._owned}


async def _until(what: str, done: object, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def _drain(feeds: Sequence[KafkaFeed], db: Database, want: int) -> list[FeedMessage]:
    """Poll every member until `want` messages came, committing positions as a projector does."""
    got: list[FeedMessage] = []
    deadline = time.monotonic() + 40
    while len(got) < want:
        assert time.monotonic() < deadline, f"{len(got)} of {want}"
        for feed in feeds:
            batch = await feed.poll(50, 0.1)
            got.extend(batch)
            for message in batch:
                db.positions[message.source] = message.offset + 1
    return got


def test_members_share_partitions_and_each_starts_at_the_stored_position(
        kafka_broker: KafkaBroker) -> None:
    topic = f"group-{random.randrange(10**9)}"
    kafka_broker.create_topic(topic, PARTITIONS)
    events = _events(400, streams=40)
    asyncio.run(_publish(kafka_broker.bootstrap_servers, topic, events))
    db = Database()
    # Partitions 0 and 1 were projected up to offset 5 and 9 before: exactly the rest comes.
    db.positions = {f"{topic}:0": 5, f"{topic}:1": 9}
    group = f"g-{topic}"

    async def scenario() -> tuple[list[FeedMessage], list[FeedMessage]]:
        first, second = (_member(kafka_broker, topic, db, group) for _ in range(2))
        await first.start(db.load())
        await second.start(db.load())
        try:
            await _until("both members own partitions", lambda: (
                _owned(first) and _owned(second) and not _owned(first) & _owned(second)
                and _owned(first) | _owned(second) == set(range(PARTITIONS))))
            # Polling keeps both members in step; the owners read everything not yet stored.
            got = await _drain([first, second], db, 400 - 14)
            sources = {m.source for m in got}
            assert sources == {f"{topic}:{p}" for p in range(PARTITIONS)}
            # The first member leaves: the second takes everything over from the database.
            await first.stop()
            more = events[:40]
            await _publish(kafka_broker.bootstrap_servers, topic, more)
            await _until("the second member owns every partition",
                         lambda: _owned(second) == set(range(PARTITIONS)))
            later = await _drain([second], db, len(more))
            return got, later
        finally:
            await first.stop()
            await second.stop()

    got, later = asyncio.run(scenario())
    firsts = {m.source: m.offset for m in reversed(got)}
    assert firsts[f"{topic}:0"] == 5 and firsts[f"{topic}:1"] == 9
    assert firsts[f"{topic}:2"] == 0 and firsts[f"{topic}:3"] == 0
    keys = [(m.source, m.offset) for m in got + later]
    assert len(keys) == len(set(keys))                      # nothing read twice
    assert sorted((m.event.stream_id, m.event.version) for m in later) == sorted(
        (e.stream_id, e.version) for e in events[:40])


def test_an_assigned_partition_whose_stored_offset_the_topic_lacks_stops_the_feed(
        kafka_broker: KafkaBroker) -> None:
    topic = f"group-{random.randrange(10**9)}"
    kafka_broker.create_topic(topic, PARTITIONS)
    asyncio.run(_publish(kafka_broker.bootstrap_servers, topic, _events(20, streams=5)))
    db = Database()
    db.positions = {f"{topic}:{p}": 10_000 for p in range(PARTITIONS)}  # past the end

    async def scenario() -> None:
        feed = _member(kafka_broker, topic, db, f"g-{topic}")
        await feed.start({})
        try:
            deadline = time.monotonic() + 40
            with pytest.raises(KafkaFeedChanged, match="past the end"):
                while time.monotonic() < deadline:
                    assert await feed.poll(10, 0.2) == []
        finally:
            await feed.stop()

    asyncio.run(scenario())


def test_a_group_member_refuses_positions_stored_for_another_topic(
        kafka_broker: KafkaBroker) -> None:
    topic = f"group-{random.randrange(10**9)}"
    kafka_broker.create_topic(topic, PARTITIONS)
    identities = InMemoryFeedIdentityStore()
    identities.save("payments", FeedIdentity(topic, "00000000-0000-0000-0000-000000000001"))
    db = Database()
    db.positions = {f"{topic}:0": 1}
    feed = KafkaFeed(kafka_broker.bootstrap_servers, topic, group_id=f"g-{topic}",
                     stored_positions=db.load, identity_store=identities, consumer="payments")
    with pytest.raises(KafkaFeedChanged, match="recreated"):
        asyncio.run(feed.start(db.load()))


def test_a_group_member_needs_the_stored_positions() -> None:
    with pytest.raises(ValueError, match="stored_positions"):
        KafkaFeed("127.0.0.1:1", "t", group_id="g")
