"""Kafka adapters: the outbox relay's publisher and the projector's event feed.

`KafkaPublisher` sends outbox rows with an idempotent producer (`acks=all`) and returns only when the
broker has acknowledged every one of them, so the relay marks rows published only after that.

`KafkaFeed` reads one topic, by default with manual partition assignment (every partition, no
consumer group); with `group_id` it joins that consumer group and reads the partitions the group
gives it (docs/adr/0016). Either way there are no Kafka-side commits: its position lives in the
consumer's database, written in the same transaction as the effects, and is handed back to
`start()` (and, in a group, read again from the database whenever partitions are assigned).

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
from collections.abc import Callable, Collection, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, NoOffsetForPartitionError, OffsetOutOfRangeError

from cardpay.errors import CardpayError
from cardpay.kafka.identity import FeedIdentity, FeedIdentityStore
from cardpay.kafka.metadata import TopicDescription, TopicMetadata
from cardpay.kafka.wire import OutboxMessage, UndecodableMessage, decode_event
from projector.errors import FeedChanged
from projector.feed import FeedMessage, Positions, RejectedMessage

log = logging.getLogger(__name__)

_STOP_GRACE = 1.0



class KafkaAdapterError(CardpayError, RuntimeError):
    """Kafka could not be reached or did not do what was asked."""


class KafkaPublishError(KafkaAdapterError):
    """Some messages were not acknowledged: they may or may not be on the topic; send them again."""


class KafkaUnreachable(KafkaAdapterError):
    """No broker at the bootstrap address answered (transient: retried by the caller's loop)."""


class KafkaFeedError(KafkaAdapterError):
    """The feed cannot start or go on for now (topic missing, not started, a failed fetch)."""


class KafkaFeedChanged(KafkaFeedError, FeedChanged):
    """The topic is not the one the stored offsets belong to, or does not hold them any more."""


def source_name(topic: str, partition: int) -> str:
    """The feed's position key for a partition: "topic:partition"."""
    return f"{topic}:{partition}"


# --- publisher ----------------------------------------------------------------------------------


class KafkaPublisher:
    """Publishes outbox messages (key = payment id, so a payment's events stay on one partition).

    `publish()` raises `KafkaPublishError` if any message is not acknowledged within
    `delivery_timeout` seconds, `KafkaUnreachable` if no broker answers; the caller keeps the rows
    unpublished and tries again later.
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
            with contextlib.suppress(Exception):
                await producer.stop()
            raise KafkaUnreachable(
                f"cannot reach Kafka at {self._bootstrap_servers} ({describe_error(exc)})"
            ) from exc
        self._producer = producer

    @property
    def started(self) -> bool:
        """False before `start` and after `stop` or a `reset` whose start failed."""
        return self._producer is not None

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
    """The `projector.feed.Feed` over one Kafka topic: every partition assigned to this process,
    or, with `group_id`, the partitions the consumer group gives this member (the others go to
    the other members; a rebalance moves them). In a group, `stored_positions` reads the
    consumer's positions from the database at each assignment.

    Order is kept per partition (per payment, since the key is the payment id); a batch lists the
    records of one partition in offset order, partitions one after the other.

    The topic's identity is checked so that stored offsets are never applied to another topic:
    - at `start`: the topic id against the one stored for `consumer` (if an `identity_store` is
      given; recorded there while the consumer has no positions yet), every stored partition must
      exist, and every stored offset must lie within [earliest, latest] of its partition;
    - after every poll that returned records: the topic id again (one metadata request per
      batch), so records fetched from a topic recreated while the feed ran are never returned.
    A failed check raises `KafkaFeedChanged` (a `FeedChanged`): not retried, the read model must
    be rebuilt. An unreachable broker raises `KafkaUnreachable`, a missing topic `KafkaFeedError`:
    both transient, for the caller's supervision loop to retry.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        *,
        client_id: str = "cardpay-feed",
        start_timeout: float = 60.0,
        identity_store: FeedIdentityStore | None = None,
        consumer: str = "",
        group_id: str | None = None,
        stored_positions: Callable[[], Positions] | None = None,
    ) -> None:
        if group_id is not None and stored_positions is None:
            raise ValueError("a KafkaFeed in a consumer group needs `stored_positions`: "
                             "assigned partitions are sought to what the database holds")
        self._group_id = group_id
        self._stored_positions = stored_positions
        self._owned: set[TopicPartition] = set()
        self._failure: BaseException | None = None
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._rejected: list[RejectedMessage] = []
        self._client_id = client_id
        self._start_timeout = start_timeout
        self._identity_store = identity_store
        self._consumer_name = consumer
        self._consumer: Any = None
        self._metadata: TopicMetadata | None = None
        self._topic_id: str | None = None
        self._positions: dict[str, int] = {}

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def group_id(self) -> str | None:
        """The consumer group this feed joins (None: every partition, manual assignment)."""
        return self._group_id

    @property
    def topic_id(self) -> str | None:
        """The id of the topic the feed was started on (None before `start`)."""
        return self._topic_id

    async def start(self, positions: Positions) -> None:
        """Check the topic against the stored identity and positions, assign every partition and
        seek to the stored positions (else the start); in a group, join it (partitions are
        sought when they are assigned, see `_assigned`).

        Waits up to `start_timeout` for the topic to exist; creating it is not the feed's job.
        """
        if self._consumer is not None:
            raise KafkaFeedError("the feed is already started")
        metadata = TopicMetadata(self._bootstrap_servers, client_id=self._client_id)
        consumer: Any = None
        try:
            description = await self._describe_when_present(metadata)
            ours = self._stored_offsets(positions)
            record_identity = self._check_identity(description, bool(ours))
            missing = sorted(set(ours) - set(description.partitions))
            if missing:
                raise KafkaFeedChanged(
                    f"topic {self._topic!r} has no partition {missing[0]} but positions are "
                    f"stored for it (the topic was recreated with fewer partitions)")
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap_servers,
                client_id=self._client_id,
                group_id=self._group_id,
                enable_auto_commit=False,
                # A stored position the broker no longer has (retention, a recreated topic) is
                # an error to look at, not a silent jump to either end.
                auto_offset_reset="none",
            )
            await consumer.start()
            if self._group_id is None:
                assigned = [TopicPartition(self._topic, p) for p in description.partitions]
                consumer.assign(assigned)
                await self._seek_to_stored(consumer, assigned, ours)
            else:
                # Partitions come with the group's assignments, sought in the listener.
                consumer.subscribe([self._topic], listener=_Rebalance(self, consumer))
            if record_identity:
                assert self._identity_store is not None
                # Before the first batch commits: a restart finds it, whatever happens next.
                self._identity_store.save(self._consumer_name,
                                          FeedIdentity(self._topic, description.topic_id))
        except KafkaError as exc:
            await _close_quietly(consumer, metadata)
            raise KafkaUnreachable(self._unreachable(exc)) from exc
        except BaseException:
            await _close_quietly(consumer, metadata)
            raise
        self._consumer = consumer
        self._metadata = metadata
        self._topic_id = description.topic_id
        # In a group, a partition's position is known once it is assigned to this member.
        self._positions = dict(positions) if self._group_id is None else {}

    async def poll(self, max_messages: int, timeout: float) -> list[FeedMessage]:
        """Up to `max_messages` decoded records; undecodable ones wait in `take_rejected()`.

        In a group, only records of partitions this member owns now (assigned and sought to
        the stored positions), and the failure of an assignment is raised here."""
        consumer = self._require_started()
        self._raise_assignment_failure()
        try:
            batches = await consumer.getmany(
                timeout_ms=max(0, int(timeout * 1000)), max_records=max_messages
            )
            self._raise_assignment_failure()
            if self._group_id is not None:
                # Revoked during the fetch: the new owner reads them from the stored positions.
                batches = {tp: records for tp, records in batches.items() if tp in self._owned}
        except NoOffsetForPartitionError as exc:
            if self._group_id is None or self._sought(exc):
                raise KafkaFeedError(f"reading {self._topic} failed: {exc!r}") from exc
            # Just assigned, not sought yet: aiokafka looked for a committed offset meanwhile
            # (there is none: cardpay commits none) and, with no reset policy, reports it. The
            # rebalance listener is about to seek the partition to its stored position.
            return []
        except OffsetOutOfRangeError as exc:
            raise KafkaFeedChanged(
                f"a stored offset is outside what the broker holds for topic {self._topic!r} "
                f"({exc}): the topic was truncated or recreated"
            ) from exc
        except KafkaError as exc:
            raise KafkaFeedError(f"reading {self._topic} failed: {exc!r}") from exc
        if any(batches.values()):
            await self._recheck_topic_id()
        return self._decode(batches)

    def positions(self) -> dict[str, int]:
        """Next offset per source after everything polled so far, undecodable records included.

        Starts as the positions given to `start()`; store this with the batch's effects.
        """
        return dict(self._positions)

    def lag(self) -> int | None:
        """Records on the topic beyond `positions()`, from the last fetch's high watermarks (None
        before the first fetch of every partition)."""
        consumer = self._consumer
        if consumer is None:
            return None
        total = 0
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None:
                return None
            position = self._positions.get(source_name(tp.topic, tp.partition), 0)
            total += max(0, highwater - position)
        return total

    def take_rejected(self) -> list[RejectedMessage]:
        rejected, self._rejected = self._rejected, []
        return rejected

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        metadata, self._metadata = self._metadata, None
        self._owned, self._failure = set(), None
        await _close_quietly(consumer, metadata)

    # --- consumer group ---------------------------------------------------------------------

    async def _assigned(self, consumer: Any, assigned: Collection[TopicPartition]) -> None:
        """The group gave this member `assigned` (all of its partitions: aiokafka's protocol is
        eager, every rebalance revokes everything first). Each is sought to the position stored
        in the database now, which is where the previous owner's last committed batch ended;
        Kafka's committed offsets are never read. A failure (database away, an offset the topic
        does not hold) is kept for `poll` to raise: aiokafka only logs a listener's errors."""
        ours = [tp for tp in assigned if tp.topic == self._topic]
        try:
            assert self._stored_positions is not None
            stored = self._stored_offsets(await asyncio.to_thread(self._stored_positions))
            await self._seek_to_stored(consumer, ours, stored)
        except KafkaError as exc:
            self._failure = KafkaUnreachable(self._unreachable(exc))
            return
        except Exception as exc:
            self._failure = exc
            return
        self._owned = set(ours)
        log.info("group %s: assigned %s; stored offsets %s", self._group_id,
                 _partitions(ours), {tp.partition: self._positions.get(
                     source_name(tp.topic, tp.partition), "start") for tp in sorted(ours)})

    def _revoked(self, revoked: Collection[TopicPartition]) -> None:
        """Stop handing out records of `revoked` and forget their positions: their next owner
        starts from the database. A batch of them polled before this is fenced at commit by the
        projector (records below the stored positions are not applied again)."""
        self._owned -= set(revoked)
        for tp in revoked:
            self._positions.pop(source_name(tp.topic, tp.partition), None)
        log.info("group %s: revoked %s", self._group_id, _partitions(revoked))

    def _sought(self, exc: NoOffsetForPartitionError) -> bool:
        """Whether the partition `exc` names was sought by this member already (an unknown
        partition counts as sought: the error is then not the assignment's race)."""
        partition = exc.args[0] if exc.args else None
        return not isinstance(partition, TopicPartition) or partition in self._owned

    def _raise_assignment_failure(self) -> None:
        failure = self._failure
        if failure is not None:
            raise failure

    async def _seek_to_stored(self, consumer: Any, partitions: Sequence[TopicPartition],
                              stored: dict[int, int]) -> None:
        """Check the stored offsets of `partitions` against the topic, then seek each to its
        stored offset (else to the earliest the topic holds) and take that as its position."""
        earliest = await self._check_offsets(consumer, list(partitions), stored)
        for tp in partitions:
            source = source_name(tp.topic, tp.partition)
            offset = stored.get(tp.partition)
            consumer.seek(tp, earliest[tp] if offset is None else offset)
            if offset is None:
                self._positions.pop(source, None)
            else:
                self._positions[source] = offset

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

    def _unreachable(self, exc: BaseException) -> str:
        return f"cannot reach Kafka at {self._bootstrap_servers} ({describe_error(exc)})"

    def _stored_offsets(self, positions: Positions) -> dict[int, int]:
        """Stored offsets of this topic's partitions (other sources, e.g. "events", ignored)."""
        prefix = f"{self._topic}:"
        return {int(source[len(prefix):]): offset for source, offset in positions.items()
                if source.startswith(prefix) and source[len(prefix):].isdigit()}

    def _check_identity(self, description: TopicDescription, consumed: bool) -> bool:
        """Raise if the stored positions belong to another topic; True if the topic's identity
        should be recorded (nothing stored yet, or nothing consumed under it)."""
        if self._identity_store is None:
            return False
        stored = self._identity_store.load(self._consumer_name)
        if stored is None or not consumed:
            return stored != FeedIdentity(self._topic, description.topic_id)
        if stored.topic != self._topic:
            raise KafkaFeedChanged(
                f"the stored positions of {self._consumer_name!r} belong to topic "
                f"{stored.topic!r}, not {self._topic!r} (CARDPAY_KAFKA_TOPIC changed)")
        if stored.topic_id != description.topic_id:
            raise KafkaFeedChanged(
                f"topic {self._topic!r} was recreated (topic id {description.topic_id}, the "
                f"stored offsets belong to {stored.topic_id})")
        return False

    async def _check_offsets(self, consumer: Any, assigned: list[TopicPartition],
                             ours: dict[int, int]) -> dict[TopicPartition, int]:
        """Stored offsets must lie within [earliest, latest]. Partitions read from the start
        whose earliest offset is above 0 lost records to retention or deletion before this
        consumer read them: that is only known, not refused (after `projections reset
        --republish` the history is there again, past the deleted records), so it is logged."""
        earliest = await consumer.beginning_offsets(assigned)
        latest = await consumer.end_offsets(assigned)
        for tp in assigned:
            low, high = earliest[tp], latest[tp]
            stored = ours.get(tp.partition)
            if stored is None:
                if low > 0:
                    log.warning(
                        "%s starts at offset %d: earlier records were deleted before this "
                        "consumer read them; if they were never projected, rebuild with "
                        "`cardpay projections reset NAME --republish`",
                        source_name(tp.topic, tp.partition), low)
                continue
            if not low <= stored <= high:
                where = "behind the start" if stored < low else "past the end"
                raise KafkaFeedChanged(
                    f"stored offset {stored} of {source_name(tp.topic, tp.partition)} is {where} "
                    f"of the topic (it holds offsets {low} to {high}): the topic was truncated or "
                    f"recreated")
        return dict(earliest)

    async def _recheck_topic_id(self) -> None:
        metadata = self._metadata
        assert metadata is not None
        try:
            description = await metadata.describe(self._topic)
        except KafkaError as exc:
            raise KafkaUnreachable(self._unreachable(exc)) from exc
        if description is None:
            raise KafkaFeedError(f"topic {self._topic!r} disappeared while it was read")
        if description.topic_id != self._topic_id:
            raise KafkaFeedChanged(
                f"topic {self._topic!r} was recreated while it was read (topic id "
                f"{description.topic_id}, started on {self._topic_id})")

    async def _describe_when_present(self, metadata: TopicMetadata) -> TopicDescription:
        deadline = time.monotonic() + self._start_timeout
        while True:
            description = await metadata.describe(self._topic)
            if description is not None:
                return description
            if time.monotonic() > deadline:
                raise KafkaFeedError(
                    f"topic {self._topic!r} does not exist at {self._bootstrap_servers} after "
                    f"{self._start_timeout:.0f}s; the feed does not create topics"
                )
            await asyncio.sleep(0.5)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka's rebalance callbacks, handed to the feed (which knows the stored positions)."""

    def __init__(self, feed: KafkaFeed, consumer: Any) -> None:
        self._feed = feed
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self._feed._revoked(revoked)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        await self._feed._assigned(self._consumer, assigned)


def _partitions(tps: Collection[TopicPartition]) -> str:
    return "partitions " + (",".join(str(tp.partition) for tp in sorted(tps)) or "none")


async def _close_quietly(consumer: Any, metadata: TopicMetadata | None) -> None:
    if consumer is not None:
        with contextlib.suppress(Exception):
            await consumer.stop()
    if metadata is not None:
        with contextlib.suppress(Exception):
            await metadata.close()


def describe_error(exc: BaseException) -> str:
    """One short line for a Kafka error: its class and the first line of its message (aiokafka
    repeats the class name in the message and lists resolved addresses, which say nothing new)."""
    name = type(exc).__name__
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    while text.startswith(f"{name}: "):
        text = text[len(name) + 2:]
    if text.startswith("Unable to bootstrap"):
        text = "no broker answered"
    return f"{name}: {text}" if text and text != name else name
