"""A Kafka topic recreated, truncated, or behind the stored offsets: the projector refuses to go on
(exit status 1, one line naming `cardpay projections reset`) instead of skipping events, and after
`projections reset payments --republish`, relay and project the read model is complete.

Runs the real commands as subprocesses against the session's broker and a fresh database.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from sqlalchemy import Engine, select, update

from cardpay.devstack.kafka_broker import KafkaBroker
from cardpay.kafka.adapters import KafkaFeed, KafkaFeedChanged, KafkaFeedError
from cardpay.kafka.identity import InMemoryFeedIdentityStore
from cardpay.kafka.metadata import describe_topic
from cardpay.kafka.wire import OutboxMessage, encode_event
from cardpay.postgres.schema import consumer_positions, feed_identity, outbox
from domain.events import RecordedEvent
from projector.feed import FeedMessage
from tests.support.workload import (
    expected_rows,
    payment_events,
    read_model_rows,
    stored_rows,
    write,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
RESET = "cardpay projections reset payments --republish"


def _cardpay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cardpay.cli.main", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=180)


def _ok(env: dict[str, str], *args: str) -> str:
    proc = _cardpay(env, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _refused(env: dict[str, str]) -> str:
    """`project --until-idle` must stop with status 1 and exactly one line on stderr."""
    proc = _cardpay(env, "project", "--until-idle", "--idle-timeout", "20")
    assert proc.returncode == 1, (proc.stdout, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cardpay project: ")
    assert RESET in lines[0]
    return lines[0]


def _positions(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(select(consumer_positions.c.source, consumer_positions.c.position)
                            .where(consumer_positions.c.consumer == "payments"))
        return {source: int(position) for source, position in rows}


def _stored_topic_id(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(feed_identity.c.topic_id)
                            .where(feed_identity.c.consumer == "payments")).scalar()


def _unpublished(engine: Engine) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(outbox.c.id).where(outbox.c.published_at.is_(None)))
                   .all())


async def _end_offsets(servers: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: int(offset) for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def _delete_topic(servers: str, topic: str) -> None:
    """Delete the topic and wait until it is gone. (A client that asks for its metadata may
    have it auto-created again at once, as the harness broker allows: then it is a new topic.)"""
    before = await describe_topic(servers, topic)
    assert before is not None
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()
    deadline = time.monotonic() + 60
    while True:
        now = await describe_topic(servers, topic)
        if now is None or now.topic_id != before.topic_id:
            return
        assert time.monotonic() < deadline, "the topic was not deleted"
        await asyncio.sleep(0.2)


async def _truncate(servers: str, topic: str, partition: int, before: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, partition): RecordsToDelete(before)})
    finally:
        await admin.close()


def _recreate(broker: KafkaBroker, topic: str) -> str:
    asyncio.run(_delete_topic(broker.bootstrap_servers, topic))
    broker.create_topic(topic, 3)
    description = asyncio.run(describe_topic(broker.bootstrap_servers, topic))
    assert description is not None
    return description.topic_id


def _setup(pg_url: str, broker: KafkaBroker, prefix: str) -> tuple[str, dict[str, str]]:
    topic = f"{prefix}-{random.randrange(10**9)}"
    broker.create_topic(topic, 3)
    env = {"CARDPAY_DATABASE_URL": pg_url, "CARDPAY_KAFKA_BOOTSTRAP": broker.bootstrap_servers,
           "CARDPAY_KAFKA_TOPIC": topic}
    return topic, env


def test_a_recreated_topic_is_refused_until_reset_and_republish(
    pg_url: str, pg_engine: Engine, kafka_broker: KafkaBroker
) -> None:
    topic, env = _setup(pg_url, kafka_broker, "recreated")
    payments = payment_events(80, seed=11)
    write(pg_engine, payments[:20], outbox_topic=topic)
    _ok(env, "relay", "--until-idle")
    _ok(env, "project", "--until-idle")
    first = expected_rows(payments[:20])
    assert stored_rows(pg_engine) == first
    stored = _positions(pg_engine)
    old_id = _stored_topic_id(pg_engine)
    assert old_id is not None

    new_id = _recreate(kafka_broker, topic)
    assert new_id != old_id
    write(pg_engine, payments[20:], outbox_topic=topic)
    _ok(env, "relay", "--until-idle")
    # The new topic holds at least as many records per partition as the stored offsets, so the
    # offsets alone look valid: only the topic id tells the two topics apart.
    ends = asyncio.run(_end_offsets(kafka_broker.bootstrap_servers, topic, 3))
    assert all(ends[p] >= stored[f"{topic}:{p}"] for p in range(3)), (ends, stored)

    line = _refused(env)
    assert "recreated" in line and new_id in line and old_id in line
    assert stored_rows(pg_engine) == first  # nothing of the new topic applied, nothing skipped
    assert _positions(pg_engine) == stored

    rows = read_model_rows(pg_engine)  # a row per payment, and the days' rows
    out = _ok(env, "projections", "reset", "payments", "--republish")
    assert f"deleted {rows} read-model rows" in out
    assert _positions(pg_engine) == {} and _stored_topic_id(pg_engine) is None
    total = sum(len(events) for events in payments)
    assert _unpublished(pg_engine) == total
    _ok(env, "relay", "--until-idle")
    _ok(env, "project", "--until-idle")
    assert stored_rows(pg_engine) == expected_rows(payments)
    assert _stored_topic_id(pg_engine) == new_id


def test_stored_offsets_past_the_end_of_the_topic_are_refused(
    pg_url: str, pg_engine: Engine, kafka_broker: KafkaBroker
) -> None:
    topic, env = _setup(pg_url, kafka_broker, "ahead")
    payments = payment_events(15, seed=12)
    write(pg_engine, payments, outbox_topic=topic)
    _ok(env, "relay", "--until-idle")
    _ok(env, "project", "--until-idle")
    source = f"{topic}:1"
    ahead = _positions(pg_engine)[source] + 5
    with pg_engine.begin() as conn:
        conn.execute(update(consumer_positions).where(consumer_positions.c.source == source)
                     .values(position=ahead))

    line = _refused(env)
    assert f"stored offset {ahead} of {source} is past the end" in line

    _ok(env, "projections", "reset", "payments", "--republish")
    _ok(env, "relay", "--until-idle")
    _ok(env, "project", "--until-idle")
    assert stored_rows(pg_engine) == expected_rows(payments)


def test_a_topic_truncated_past_the_stored_offsets_is_refused(
    pg_url: str, pg_engine: Engine, kafka_broker: KafkaBroker
) -> None:
    """Records deleted before the projector read them (retention, delete-records): refused."""
    topic, env = _setup(pg_url, kafka_broker, "behind")
    payments = payment_events(60, seed=13)
    write(pg_engine, payments[:20], outbox_topic=topic)
    _ok(env, "relay", "--until-idle")
    _ok(env, "project", "--until-idle")
    stored = _positions(pg_engine)
    write(pg_engine, payments[20:], outbox_topic=topic)
    _ok(env, "relay", "--until-idle")
    ends = asyncio.run(_end_offsets(kafka_broker.bootstrap_servers, topic, 3))
    partition = max(range(3), key=lambda p: ends[p] - stored[f"{topic}:{p}"])
    assert ends[partition] > stored[f"{topic}:{partition}"]
    asyncio.run(_truncate(kafka_broker.bootstrap_servers, topic, partition, ends[partition]))

    line = _refused(env)
    assert f"of {topic}:{partition} is behind the start" in line
    assert stored_rows(pg_engine) == expected_rows(payments[:20])

    _ok(env, "projections", "reset", "payments", "--republish")
    _ok(env, "relay", "--until-idle")
    rebuild = _cardpay(env, "project", "--until-idle")
    assert rebuild.returncode == 0, rebuild.stderr
    # Read from the start again: the deleted records are known, and said so (one line).
    assert f"{topic}:{partition} starts at offset {ends[partition]}: earlier records were " \
        "deleted" in rebuild.stderr
    assert "Traceback" not in rebuild.stderr
    assert stored_rows(pg_engine) == expected_rows(payments)


def _events(count: int, first_position: int = 1) -> list[RecordedEvent]:
    from datetime import UTC, datetime

    return [RecordedEvent(stream_id=f"pay-{n:03d}", version=1, position=n, type="X",
                          data={"n": n}, recorded_at=datetime(2026, 1, 1, tzinfo=UTC))
            for n in range(first_position, first_position + count)]


async def _publish(servers: str, topic: str, events: list[RecordedEvent]) -> None:
    from cardpay.kafka.adapters import KafkaPublisher

    publisher = KafkaPublisher(servers)
    await publisher.start()
    try:
        await publisher.publish([OutboxMessage(e.position, topic, e.stream_id, encode_event(e))
                                 for e in events])
    finally:
        await publisher.stop()


def test_a_topic_recreated_under_a_running_feed_is_never_read_as_the_old_one(
    kafka_broker: KafkaBroker,
) -> None:
    """The feed checks the topic id after every fetch: records of the new topic at offsets the
    old one also had are never returned as if they continued the old topic."""
    servers = kafka_broker.bootstrap_servers
    topic = f"running-{random.randrange(10**9)}"
    kafka_broker.create_topic(topic, 1)
    asyncio.run(_publish(servers, topic, _events(5)))

    async def go() -> tuple[list[FeedMessage], BaseException]:
        store = InMemoryFeedIdentityStore()
        feed = KafkaFeed(servers, topic, identity_store=store, consumer="c")
        await feed.start({})
        got: list[FeedMessage] = []
        try:
            deadline = time.monotonic() + 30
            while len(got) < 5 and time.monotonic() < deadline:
                got.extend(await feed.poll(100, 0.5))
            assert len(got) == 5
            assert store.load("c") is not None
            await _delete_topic(servers, topic)
            await asyncio.to_thread(kafka_broker.create_topic, topic, 1)
            await _publish(servers, topic, _events(20, first_position=100))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    got.extend(await feed.poll(100, 0.5))
                except KafkaFeedError as exc:  # KafkaFeedChanged is one
                    if isinstance(exc, KafkaFeedChanged):
                        return got, exc
                    # transient (the topic briefly missing): what the supervisor would retry
                    await feed.stop()
                    try:
                        await feed.start(feed.positions())
                    except KafkaFeedChanged as changed:
                        return got, changed
            raise AssertionError("the recreated topic went unnoticed")
        finally:
            await feed.stop()

    got, error = asyncio.run(go())
    assert [m.event.position for m in got] == [1, 2, 3, 4, 5]  # nothing from the new topic
    assert "recreated" in str(error) or "outside" in str(error) or "past the end" in str(error)


def test_records_fetched_before_a_recreation_are_held_back_by_the_topic_id_check(
    kafka_broker: KafkaBroker,
) -> None:
    """The feed prefetches; records it fetched from the old topic are only handed out if the
    topic id is still the one it started on when the batch is returned. A recreated topic stops
    the feed at the next batch, whatever its offsets say."""
    servers = kafka_broker.bootstrap_servers
    topic = f"prefetched-{random.randrange(10**9)}"
    kafka_broker.create_topic(topic, 1)
    asyncio.run(_publish(servers, topic, _events(5)))

    async def go() -> None:
        feed = KafkaFeed(servers, topic)
        await feed.start({})
        try:
            await asyncio.sleep(2)  # the consumer prefetches the five records
            await _delete_topic(servers, topic)
            await asyncio.to_thread(kafka_broker.create_topic, topic, 1)
            with pytest.raises(KafkaFeedChanged, match="recreated while it was read"):
                await feed.poll(100, 5)
        finally:
            await feed.stop()

    asyncio.run(go())
