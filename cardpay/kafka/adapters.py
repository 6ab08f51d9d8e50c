"""Kafka adapters: the outbox relay's publisher and the projector's event feed.

`KafkaPublisher` sends outbox rows with an idempotent producer (`acks=all`) and returns only when the
broker has acknowledged every one of them, so the relay marks rows published only after that.

`KafkaFeed` reads one topic with manual partition assignment: no consumer group and no Kafka-side
commits. Its position lives in the consumer's database, written in the same transaction as the
effects, and is handed back to `start()`.

Undecodable records. `poll()` returns typed `FeedMessage`s only. A record whose value is not a
recorded event is kept as a `RejectedMessage`; `take_rejected()` hands them over. `positions()` is
the position after everything polled, good and bad records alike, so the consumer commits its
effects, the rejected records' quarantine rows and `positions()` in one transaction (see
`projector.runner.Projector.run_once`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from cardpay.kafka.wire import OutboxMessage, UndecodableMessage, decode_event
from projector.feed import FeedMessage, Positions, RejectedMessage

log = logging.getLogger(__name__)

_STOP_GRACE = 1.0



class KafkaAdapterError(RuntimeError):
    """Kafka could not be reached or did not do what was asked."""


class KafkaPublishError(KafkaAdapterError):
    """Some messages were not acknowledged: they may or may not be on the topic; send them again."""


class KafkaFeedError(KafkaAdapterError):
    """The feed cannot start or go on (topic missing, stored position out of range, not started)."""


def source_name(topic: str, partition: int) -> str:
    """The feed's position key for a partition: "topic:partition"."""
    return f"{topic}:{partition}"


# --- publisher ----------------------------------------------------------------------------------


class KafkaPublisher:
    """Publishes outbox messages (key = payment id, so a payment's events stay on one partition).

    `publish()` raises `KafkaPublishError` if any message is not acknowledged within
    `delivery_timeout` seconds; the caller keeps the rows unpublished and tries again later.
    Messages may then be on the topic twice; consumers deduplicate by stream id and version.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        client_id: str = "cardpay-relay",
        *,
        delivery_timeout: float = 30.0,
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._client_id = client_id
        self._delivery_timeout = delivery_timeout
        self._producer: Any = None

    async def start(self) -> None:
        if self._producer is not None:
            raise KafkaPublishError("the publisher is already started")
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap_servers,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            # Batches not delivered by then fail in the background instead of retrying for ever.
            request_timeout_ms=int(self._delivery_timeout * 1000),
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise KafkaPublishError(
                f"cannot connect to Kafka at {self._bootstrap_servers}: {exc!r}"
            ) from exc
        self._producer = producer

    async def stop(self) -> None:
        """Close the producer. Does not wait for deliveries a failed `publish()` gave up on."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        # publish() returns only when everything is acknowledged, so a flush here has work only
        # after a failed publish, whose messages the relay sends again anyway: a short grace.
        try:
            async with asyncio.timeout(_STOP_GRACE):
                await producer.stop()
        except TimeoutError:
            await _force_close(producer)

    async def reset(self) -> None:
        """After a failed publish: drop the producer and make a fresh one (aiokafka's cannot be
        reused after a delivery failure)."""
        await self.stop()
        await self.start()

    async def publish(self, messages: Sequence[OutboxMessage]) -> None:
        """Send every message and wait until the broker has acknowledged all of them."""
        producer = self._producer
        if producer is None:
            raise KafkaPublishError("the publisher is not started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._delivery_timeout
        deliveries: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout_at(deadline):
                for message in messages:
                    deliveries.append(
                        await producer.send(message.topic, message.value, key=message.key.encode())
                    )
        except TimeoutError as exc:
            _ignore_late_results(deliveries)
            raise KafkaPublishError(
                f"Kafka did not accept {len(messages) - len(deliveries)} of {len(messages)} "
                f"messages within {self._delivery_timeout:.0f}s"
            ) from exc
        except KafkaError as exc:
            _ignore_late_results(deliveries)
            raise KafkaPublishError(f"sending to Kafka failed: {exc!r}") from exc
        await _await_deliveries(deliveries, max(0.0, deadline - loop.time()), len(messages))


async def _force_close(producer: Any) -> None:
    """Finish what an interrupted `AIOKafkaProducer.stop()` left: its sender task and connections.

    aiokafka has no public "close without flushing"; without this the sender task would go on
    retrying against a dead broker for the life of the process. The flush task stop() started
    stays pending on the abandoned batches until the event loop ends (small, and only after a
    failure).
    """
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        with contextlib.suppress(Exception):
            await sender.close()
    with contextlib.suppress(Exception):
        await producer.client.close()
    log.warning("Kafka producer closed with undelivered messages (they will be sent again)")


async def _await_deliveries(
    deliveries: list[asyncio.Future[Any]], timeout: float, total: int
) -> None:
    if not deliveries:
        return
    # asyncio.wait, not gather + timeout: the producer's futures must not be cancelled under it.
    done, pending = await asyncio.wait(deliveries, timeout=timeout)
    if pending:
        _ignore_late_results(pending)
        raise KafkaPublishError(f"{len(pending)} of {total} messages not acknowledged in time")
    failures = [exc for exc in (future.exception() for future in done) if exc is not None]
    if failures:
        raise KafkaPublishError(
            f"{len(failures)} of {total} messages failed: {failures[0]!r}"
        ) from failures[0]


def _ignore_late_results(futures: Sequence[asyncio.Future[Any]] | set[asyncio.Future[Any]]) -> None:
    """Retrieve exceptions of deliveries we gave up on, so asyncio does not log them at exit."""

    def retrieve(future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()

    for future in futures:
        future.add_done_callback(retrieve)


# --- feed ---------------------------------------------------------------------------------------


class KafkaFeed:
    """The `projector.feed.Feed` over one Kafka topic, every partition assigned to this process.

    Order is kept per partition (per payment, since the key is the payment id); a batch lists the
    records of one partition in offset order, partitions one after the other.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        client_id: str = "cardpay-feed",
        start_timeout: float = 60.0,
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._rejected: list[RejectedMessage] = []
        self._client_id = client_id
        self._start_timeout = start_timeout
        self._consumer: Any = None
        self._positions: dict[str, int] = {}

    @property
    def topic(self) -> str:
        return self._topic

    async def start(self, positions: Positions) -> None:
        """Assign every partition of the topic and seek to the stored positions (else the start).

        Waits up to `start_timeout` for the topic to exist; creating it is not the feed's job.
        """
        if self._consumer is not None:
            raise KafkaFeedError("the feed is already started")
        partitions = await self._discover_partitions()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap_servers,
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            # A stored position the broker no longer has (retention, a recreated topic) is an
            # error to look at, not a silent jump to either end.
            auto_offset_reset="none",
        )
        try:
            await consumer.start()
            assigned = [TopicPartition(self._topic, p) for p in partitions]
            consumer.assign(assigned)
            for tp in assigned:
                stored = positions.get(source_name(tp.topic, tp.partition))
                if stored is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, stored)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._positions = dict(positions)

    async def poll(self, max_messages: int, timeout: float) -> list[FeedMessage]:
        """Up to `max_messages` decoded records; undecodable ones wait in `take_rejected()`."""
        consumer = self._require_started()
        try:
            batches = await consumer.getmany(
                timeout_ms=max(0, int(timeout * 1000)), max_records=max_messages
            )
        except OffsetOutOfRangeError as exc:
            raise KafkaFeedError(
                f"a stored position is outside what the broker holds for {self._topic}: {exc}"
            ) from exc
        except KafkaError as exc:
            raise KafkaFeedError(f"reading {self._topic} failed: {exc!r}") from exc
        return self._decode(batches)

    def positions(self) -> dict[str, int]:
        """Next offset per source after everything polled so far, undecodable records included.

        Starts as the positions given to `start()`; store this with the batch's effects.
        """
        return dict(self._positions)

    def take_rejected(self) -> list[RejectedMessage]:
        rejected, self._rejected = self._rejected, []
        return rejected

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def _decode(self, batches: dict[Any, list[Any]]) -> list[FeedMessage]:
        messages: list[FeedMessage] = []
        for tp, records in batches.items():
            source = source_name(tp.topic, tp.partition)
            for record in records:
                self._positions[source] = record.offset + 1
                raw: bytes | None = record.value
                if raw is None:
                    self._reject(source, record.offset, b"", "record has no value")
                    continue
                try:
                    event = decode_event(raw)
                except UndecodableMessage as exc:
                    self._reject(source, record.offset, raw, str(exc))
                    continue
                messages.append(FeedMessage(source=source, offset=record.offset, event=event))
        return messages

    def _reject(self, source: str, offset: int, raw: bytes, reason: str) -> None:
        log.warning("undecodable record at %s offset %d (%d bytes): %s", source, offset,
                    len(raw), reason)
        self._rejected.append(RejectedMessage(source, offset, raw, reason))

    def _require_started(self) -> Any:
        if self._consumer is None:
            raise KafkaFeedError("the feed is not started")
        return self._consumer

    async def _discover_partitions(self) -> list[int]:
        deadline = time.monotonic() + self._start_timeout
        problem = "it does not exist"
        while True:
            try:
                partitions = await self._partitions_of_topic()
                if partitions:
                    return partitions
            except KafkaError as exc:
                problem = f"Kafka is unreachable: {exc!r}"
            if time.monotonic() > deadline:
                raise KafkaFeedError(
                    f"topic {self._topic!r} at {self._bootstrap_servers} not available after "
                    f"{self._start_timeout:.0f}s ({problem}); the feed does not create topics"
                )
            await asyncio.sleep(0.5)

    async def _partitions_of_topic(self) -> list[int]:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap_servers,
            client_id=self._client_id,
            request_timeout_ms=10_000,
        )
        try:
            await admin.start()
            # Every topic (None): naming ours would auto-create it on a permissive broker.
            for topic in await admin.describe_topics(None):
                if topic["topic"] == self._topic and topic["error_code"] == 0:
                    return sorted(int(p["partition"]) for p in topic["partitions"])
            return []
        finally:
            await admin.close()
