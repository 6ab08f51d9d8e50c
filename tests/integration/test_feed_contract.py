"""One contract suite for the `Feed` Protocol, run against the Postgres log and against Kafka."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from cardpay.kafka.relay import OutboxRelay
from cardpay.postgres.log_feed import PostgresLogFeed
from projector.feed import Feed, FeedMessage, Positions, advance
from tests.support.workload import payment_events, write

pytestmark = pytest.mark.integration

FeedFactory = Callable[[], Feed]
Backend = tuple[FeedFactory, Callable[[int, int], Any]]


@pytest.fixture(params=["postgres", "kafka"])
def make_feed(request: pytest.FixtureRequest, pg_engine: Engine) -> Iterator[Backend]:
    """(new feed, write(n payments, seed)) for one backend; writes go through the real path."""
    if request.param == "postgres":
        def write_pg(n: int, seed: int) -> Any:
            payments = payment_events(n, seed)
            write(pg_engine, payments, outbox_topic=None)
            return payments

        yield (lambda: PostgresLogFeed(pg_engine)), write_pg
        return

    from cardpay.kafka.adapters import KafkaFeed, KafkaPublisher

    broker = request.getfixturevalue("kafka_broker")
    topic = f"feed-contract-{random.randrange(10**9)}"
    broker.create_topic(topic, 3)

    def write_kafka(n: int, seed: int) -> Any:
        payments = payment_events(n, seed)
        write(pg_engine, payments, outbox_topic=topic)

        async def relay() -> None:
            publisher = KafkaPublisher(broker.bootstrap_servers)
            await publisher.start()
            try:
                await OutboxRelay(pg_engine, publisher).run(until_idle=True)
            finally:
                await publisher.stop()

        asyncio.run(relay())
        return payments

    yield (lambda: KafkaFeed(broker.bootstrap_servers, topic)), write_kafka


async def _drain(
    feed: Feed, positions: Positions, limit: int | None = None
) -> tuple[list[FeedMessage], dict[str, int]]:
    """Everything the feed delivers (up to `limit`), and the positions to resume after it."""
    await feed.start(positions)
    got: list[FeedMessage] = []
    try:
        idle = 0
        while idle < 3 and (limit is None or len(got) < limit):
            batch = await feed.poll(50 if limit is None else min(50, limit - len(got)), 0.5)
            idle = 0 if batch else idle + 1
            got.extend(batch)
        assert feed.take_rejected() == []
        return got, feed.positions()
    finally:
        await feed.stop()


def _keys(messages: list[FeedMessage]) -> list[tuple[str, int]]:
    return [(m.event.stream_id, m.event.version) for m in messages]


def test_a_new_reader_gets_every_event_once_in_stream_order(make_feed: Any) -> None:
    new_feed, write_events = make_feed
    payments = write_events(120, 1)
    got, _ = asyncio.run(_drain(new_feed(), {}))
    expected = {(e.stream_id, e.version) for events in payments for e in events}
    assert sorted(_keys(got)) == sorted(expected)
    per_stream: dict[str, list[int]] = {}
    for stream, version in _keys(got):
        per_stream.setdefault(stream, []).append(version)
    assert all(v == list(range(1, len(v) + 1)) for v in per_stream.values())


def test_resuming_from_stored_positions_delivers_exactly_the_rest(make_feed: Any) -> None:
    new_feed, write_events = make_feed
    payments = write_events(80, 2)
    total = sum(len(events) for events in payments)
    first, positions = asyncio.run(_drain(new_feed(), {}, limit=total // 2))
    assert positions == advance({}, first)
    rest, _ = asyncio.run(_drain(new_feed(), positions))
    assert len(first) + len(rest) == total
    assert not set(_keys(first)) & set(_keys(rest))


def test_poll_with_nothing_new_returns_empty_within_the_timeout(make_feed: Any) -> None:
    new_feed, write_events = make_feed
    write_events(3, 3)

    async def go() -> list[FeedMessage]:
        _, positions = await _drain(new_feed(), {})
        feed = new_feed()
        await feed.start(positions)
        try:
            return await feed.poll(10, 0.3)
        finally:
            await feed.stop()

    assert asyncio.run(go()) == []


def test_kafka_records_that_are_not_events_are_quarantined_with_their_position(
    pg_engine: Engine, kafka_broker: Any
) -> None:
    from cardpay.kafka.adapters import KafkaFeed, KafkaPublisher
    from cardpay.kafka.wire import OutboxMessage
    from cardpay.postgres.uow import (
        PostgresProjectionUnitOfWork,
        PostgresUnitOfWork,
        projection_uow_factory,
    )
    from projector.runner import Projector
    from tests.support.workload import expected_rows, stored_rows

    topic = f"feed-garbage-{random.randrange(10**9)}"
    kafka_broker.create_topic(topic, 1)
    payments = payment_events(5, 9)
    write(pg_engine, payments, outbox_topic=topic)

    async def go() -> None:
        publisher = KafkaPublisher(kafka_broker.bootstrap_servers)
        await publisher.start()
        try:
            await OutboxRelay(pg_engine, publisher).run(until_idle=True)
            await publisher.publish([OutboxMessage(0, topic, "junk", b"{not json")])
        finally:
            await publisher.stop()
        projector = Projector("payments", KafkaFeed(kafka_broker.bootstrap_servers, topic),
                              projection_uow_factory(pg_engine))
        await projector.start()
        await projector.run_until_idle()
        await projector.stop()

    asyncio.run(go())
    assert stored_rows(pg_engine) == expected_rows(payments)
    with PostgresUnitOfWork(pg_engine) as uow:
        quarantined = uow.quarantine.list("projector:")
    with PostgresProjectionUnitOfWork(pg_engine) as projection:
        positions = projection.load_positions("payments")
    assert len(quarantined) == 1
    assert quarantined[0].reason.startswith("not a recorded event")
    assert quarantined[0].payload == {"raw": "{not json"}
    total = sum(len(events) for events in payments)
    assert positions == {f"{topic}:0": total + 1}  # past the junk record, which came last
