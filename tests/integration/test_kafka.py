"""The Kafka adapters against a real broker: publish, read, resume, bad records, broker loss."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from cardpay.devstack.kafka_broker import KafkaBroker
from cardpay.kafka.adapters import KafkaFeed, KafkaPublisher, KafkaPublishError
from cardpay.kafka.wire import OutboxMessage, encode_event
from domain.events import RecordedEvent
from projector.feed import FeedMessage, Positions, RejectedMessage, advance

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]



def _topic(prefix: str) -> str:
    return f"{prefix}-{random.randrange(10**9)}"


def _events(count: int, streams: int) -> list[RecordedEvent]:
    versions: dict[str, int] = {}
    events = []
    for position in range(1, count + 1):
        stream = f"pay-{position % streams:03d}"
        versions[stream] = versions.get(stream, 0) + 1
        events.append(
            RecordedEvent(
                stream_id=stream,
                version=versions[stream],
                position=position,
                type="PaymentAuthorized",
                data={"n": position},
                recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
            )
        )
    return events


def _outbox(topic: str, values: Sequence[tuple[str, bytes]]) -> list[OutboxMessage]:
    return [OutboxMessage(i, topic, key, value) for i, (key, value) in enumerate(values, 1)]


async def _publish(servers: str, messages: Sequence[OutboxMessage]) -> None:
    publisher = KafkaPublisher(servers)
    await publisher.start()
    try:
        await publisher.publish(messages)
    finally:
        await publisher.stop()


async def _read(
    feed: KafkaFeed, positions: Positions, want: int, *, then_nothing: bool = True
) -> list[FeedMessage]:
    """Start, read exactly `want` messages (small polls, so none beyond), stop.

    With `then_nothing`, one more poll must come back empty: nothing beyond `want` is on the topic.
    """
    await feed.start(positions)
    try:
        got: list[FeedMessage] = []
        deadline = time.monotonic() + 30
        while len(got) < want and time.monotonic() < deadline:
            got.extend(await feed.poll(min(7, want - len(got)), 0.5))
        if then_nothing:
            assert await feed.poll(10, 0.3) == []
        return got
    finally:
        await feed.stop()


async def _read_with_rejects(
    feed: KafkaFeed, positions: Positions, want: int
) -> tuple[list[FeedMessage], list[RejectedMessage]]:
    """`_read`, plus the undecodable records the feed kept for the consumer to quarantine."""
    got = await _read(feed, positions, want)
    return got, feed.take_rejected()


@pytest.fixture(scope="module")
def published(kafka_broker: KafkaBroker) -> tuple[str, list[RecordedEvent]]:
    """200 events of 20 payments on a 3-partition topic, published once for the module."""
    topic = _topic("kafka-test")
    kafka_broker.create_topic(topic, 3)
    events = _events(200, streams=20)
    messages = _outbox(topic, [(e.stream_id, encode_event(e)) for e in events])
    asyncio.run(_publish(kafka_broker.bootstrap_servers, messages))
    return topic, events


def _keys(messages: Sequence[FeedMessage]) -> list[tuple[str, int]]:
    return [(m.event.stream_id, m.event.version) for m in messages]


def test_broker_runs_on_loopback(kafka_broker: KafkaBroker) -> None:
    assert kafka_broker.running
    assert kafka_broker.bootstrap_servers == f"127.0.0.1:{kafka_broker.port}"
    listeners = (kafka_broker.workdir / "server.properties").read_text()
    assert "0.0.0.0" not in listeners


def test_a_new_feed_reads_every_message_once_in_per_key_order(
    kafka_broker: KafkaBroker, published: tuple[str, list[RecordedEvent]]
) -> None:
    topic, events = published
    feed = KafkaFeed(kafka_broker.bootstrap_servers, topic)
    got = asyncio.run(_read(feed, {}, len(events)))

    assert sorted(_keys(got)) == sorted((e.stream_id, e.version) for e in events)
    assert sorted((m.event for m in got), key=lambda e: e.position) == events
    versions: dict[str, list[int]] = {}
    for stream, version in _keys(got):
        versions.setdefault(stream, []).append(version)
    assert all(v == list(range(1, len(v) + 1)) for v in versions.values())
    per_partition: dict[str, int] = {}
    for message in got:
        per_partition[message.source] = per_partition.get(message.source, 0) + 1
    assert sorted(per_partition) == [f"{topic}:{p}" for p in range(3)]
    assert feed.positions() == advance({}, got) == per_partition


def test_a_feed_restarted_from_stored_positions_returns_exactly_the_rest(
    kafka_broker: KafkaBroker, published: tuple[str, list[RecordedEvent]]
) -> None:
    topic, events = published
    first_feed = KafkaFeed(kafka_broker.bootstrap_servers, topic)
    first = asyncio.run(_read(first_feed, {}, 100, then_nothing=False))
    stored = first_feed.positions()
    assert stored == advance({}, first)

    rest = asyncio.run(_read(KafkaFeed(kafka_broker.bootstrap_servers, topic), stored, 100))

    assert len(first) == len(rest) == 100
    assert sorted(_keys(first) + _keys(rest)) == sorted((e.stream_id, e.version) for e in events)


def test_undecodable_records_are_reported_skipped_and_counted_in_positions(
    kafka_broker: KafkaBroker,
) -> None:
    topic = _topic("kafka-bad")
    kafka_broker.create_topic(topic, 1)
    good = _events(2, streams=1)
    asyncio.run(
        _publish(
            kafka_broker.bootstrap_servers,
            _outbox(
                topic,
                [
                    ("pay-000", encode_event(good[0])),
                    ("pay-000", b"not json"),
                    ("pay-000", encode_event(good[1])),
                    ("pay-000", b'{"stream_id": "pay-000"}'),
                ],
            ),
        )
    )
    feed = KafkaFeed(kafka_broker.bootstrap_servers, topic)
    got, rejected = asyncio.run(_read_with_rejects(feed, {}, 2))

    source = f"{topic}:0"
    assert [(m.offset, m.event) for m in got] == [(0, good[0]), (2, good[1])]
    assert [(r.source, r.offset, r.raw) for r in rejected] == [
        (source, 1, b"not json"),
        (source, 3, b'{"stream_id": "pay-000"}'),
    ]
    assert all("not a recorded event" in r.reason for r in rejected)
    # Past the trailing bad record, which advance() over the returned batch cannot see.
    assert feed.positions() == {source: 4}
    assert advance({}, got) == {source: 3}

    again, rejected = asyncio.run(
        _read_with_rejects(KafkaFeed(kafka_broker.bootstrap_servers, topic), {source: 4}, 0))
    assert again == [] and rejected == []


def test_publisher_fails_within_its_timeout_when_the_broker_dies_and_recovers_after_restart() -> (
    None
):
    topic = _topic("kafka-down")
    event = _events(1, streams=1)[0]
    message = _outbox(topic, [("pay-000", encode_event(event))])

    with KafkaBroker() as broker:
        broker.create_topic(topic, 1)
        workdir = broker.workdir

        async def publish_then_lose_the_broker() -> float:
            publisher = KafkaPublisher(broker.bootstrap_servers, delivery_timeout=3.0)
            await publisher.start()
            try:
                await publisher.publish(message)
                broker.kill()
                assert not broker.running
                started = time.monotonic()
                with pytest.raises(KafkaPublishError):
                    await publisher.publish(message)
                return time.monotonic() - started
            finally:
                await publisher.stop()

        assert asyncio.run(publish_then_lose_the_broker()) < 15

        broker.start()  # same data and address after a crash
        asyncio.run(_publish(broker.bootstrap_servers, message))
        got = asyncio.run(_read(KafkaFeed(broker.bootstrap_servers, topic), {}, 2))
        assert [m.event for m in got] == [event, event]  # at least once: the relay resends
    assert not broker.running
    assert not workdir.exists()
