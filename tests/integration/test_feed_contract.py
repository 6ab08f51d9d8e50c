"""One contract suite for the `Feed` Protocol, run against the Postgres log and against Kafka."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from cardpay.adapters.pg_feed import PostgresLogFeed
from cardpay.relay import OutboxRelay
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

    from cardpay.adapters.kafka import KafkaFeed, KafkaPublisher

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


async def _drain(feed: Feed, positions: Positions, limit: int | None = None) -> list[FeedMessage]:
    await feed.start(positions)
    got: list[FeedMessage] = []
    try:
        idle = 0
        while idle < 3 and (limit is None or len(got) < limit):
            batch = await feed.poll(50 if limit is None else min(50, limit - len(got)), 0.5)
            idle = 0 if batch else idle + 1
            got.extend(batch)
    finally:
        await feed.stop()
    return got


def _keys(messages: list[FeedMessage]) -> list[tuple[str, int]]:
    return [(m.event.stream_id, m.event.version) for m in messages]


def test_a_new_reader_gets_every_event_once_in_stream_order(make_feed: Any) -> None:
    new_feed, write_events = make_feed
    payments = write_events(120, 1)
    got = asyncio.run(_drain(new_feed(), {}))
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
    first = asyncio.run(_drain(new_feed(), {}, limit=total // 2))
    positions = advance({}, first)
    rest = asyncio.run(_drain(new_feed(), positions))
    assert len(first) + len(rest) == total
    assert not set(_keys(first)) & set(_keys(rest))


def test_poll_with_nothing_new_returns_empty_within_the_timeout(make_feed: Any) -> None:
    new_feed, write_events = make_feed
    write_events(3, 3)

    async def go() -> list[FeedMessage]:
        feed = new_feed()
        everything = await _drain(feed, {})
        feed = new_feed()
        await feed.start(advance({}, everything))
        try:
            return await feed.poll(10, 0.3)
        finally:
            await feed.stop()

    assert asyncio.run(go()) == []
