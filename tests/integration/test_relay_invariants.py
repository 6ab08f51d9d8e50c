"""The outbox relay marks a row published only after the publisher accepted it.

Against `run_once`/`backlog` on real PostgreSQL: with a publisher that records exactly what it
accepted, and with the real Kafka publisher and broker. A relay that marked before sending would
lose every row of a failed send: the backlog would shrink and the broker would never get them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence

import pytest
from sqlalchemy import Engine, select

from cardpay.devstack.kafka_broker import KafkaBroker
from cardpay.kafka.adapters import KafkaFeed, KafkaPublisher, KafkaPublishError
from cardpay.kafka.relay import OutboxRelay
from cardpay.kafka.wire import OutboxMessage, decode_event
from cardpay.postgres.schema import outbox
from domain.events import RecordedEvent
from tests.support.workload import payment_events, write

pytestmark = pytest.mark.integration


class RecordingPublisher:
    """Accepts whole batches and records their ids; refuses (accepting nothing) while `down`."""

    def __init__(self) -> None:
        self.down = False
        self.accepted: list[int] = []
        self.refused = 0

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        if self.down:
            self.refused += 1
            raise ConnectionError("broker unreachable")
        self.accepted.extend(m.id for m in messages)

    async def reset(self) -> None:
        return None


def _unpublished(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(outbox.c.id).where(outbox.c.published_at.is_(None))
                                 .order_by(outbox.c.id)).scalars())


def _all_rows(engine: Engine) -> list[tuple[int, bytes]]:
    with engine.connect() as conn:
        rows = conn.execute(select(outbox.c.id, outbox.c.value).order_by(outbox.c.id)).all()
    return [(int(r.id), bytes(r.value)) for r in rows]


async def _drain(relay: OutboxRelay) -> int:
    runs = 0
    while await relay.run_once():
        runs += 1
    return runs


def test_a_failed_send_leaves_the_backlog_and_a_run_sends_every_row_once_in_order(
    pg_engine: Engine,
) -> None:
    write(pg_engine, payment_events(25, seed=11), outbox_topic="t")
    every_id = [row_id for row_id, _ in _all_rows(pg_engine)]
    assert len(every_id) > 25  # refunds add events: more rows than payments
    publisher = RecordingPublisher()
    relay = OutboxRelay(pg_engine, publisher, batch_size=7)

    publisher.down = True
    for _ in range(3):
        with pytest.raises(ConnectionError):
            asyncio.run(relay.run_once())
    assert publisher.refused == 3 and publisher.accepted == []
    assert relay.backlog() == len(every_id)
    assert _unpublished(pg_engine) == every_id

    publisher.down = False
    assert asyncio.run(relay.run_once()) == 7
    assert _unpublished(pg_engine) == every_id[7:]
    publisher.down = True  # fails mid-way: the first batch stays published, the rest waits
    with pytest.raises(ConnectionError):
        asyncio.run(relay.run_once())
    assert _unpublished(pg_engine) == every_id[7:]

    publisher.down = False
    asyncio.run(_drain(relay))
    assert publisher.accepted == every_id
    assert relay.backlog() == 0 and _unpublished(pg_engine) == []
    assert relay.published == len(every_id)


async def _read_topic(servers: str, topic: str, want: int) -> list[RecordedEvent]:
    feed = KafkaFeed(servers, topic)
    await feed.start({})
    try:
        got: list[RecordedEvent] = []
        deadline = time.monotonic() + 30
        while len(got) < want and time.monotonic() < deadline:
            got.extend(m.event for m in await feed.poll(want - len(got), 0.5))
        got.extend(m.event for m in await feed.poll(10, 0.5))  # anything beyond is an error
        return got
    finally:
        await feed.stop()


@pytest.mark.timeout(180)
def test_the_broker_gets_every_outbox_row_in_order_after_a_failed_send(
    pg_engine: Engine, kafka_broker: KafkaBroker,
) -> None:
    topic = f"relay-invariants-{random.randrange(10**9)}"
    kafka_broker.create_topic(topic, 1)  # one partition: the topic's order is the relay's order
    write(pg_engine, payment_events(20, seed=5), outbox_topic=topic)
    rows = _all_rows(pg_engine)

    async def go() -> None:
        publisher = KafkaPublisher(kafka_broker.bootstrap_servers, delivery_timeout=10.0)
        relay = OutboxRelay(pg_engine, publisher, batch_size=9)
        with pytest.raises(KafkaPublishError):
            await relay.run_once()  # not connected yet: a send that fails
        assert relay.backlog() == len(rows)
        assert _unpublished(pg_engine) == [row_id for row_id, _ in rows]
        await publisher.start()
        try:
            await _drain(relay)
        finally:
            await publisher.stop()
        assert relay.backlog() == 0

    asyncio.run(go())
    received = asyncio.run(_read_topic(kafka_broker.bootstrap_servers, topic, len(rows)))
    assert received == [decode_event(value) for _, value in rows]
