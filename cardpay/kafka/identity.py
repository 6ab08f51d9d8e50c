"""Which topic a consumer's stored offsets belong to (table `feed_identity`, migration 0006).

`KafkaFeed.start` compares the stored identity with the topic it finds; a different topic id (the
topic was deleted and created again) or a different topic name means the stored offsets cannot be
used. The identity is recorded when the consumer has no stored positions yet, i.e. before its
first batch commits, and removed with the positions by `cardpay projections reset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cardpay.postgres.schema import feed_identity


@dataclass(frozen=True, slots=True)
class FeedIdentity:
    topic: str
    topic_id: str


class FeedIdentityStore(Protocol):
    def load(self, consumer: str) -> FeedIdentity | None: ...

    def save(self, consumer: str, identity: FeedIdentity) -> None: ...


class InMemoryFeedIdentityStore:
    def __init__(self) -> None:
        self.identities: dict[str, FeedIdentity] = {}

    def load(self, consumer: str) -> FeedIdentity | None:
        return self.identities.get(consumer)

    def save(self, consumer: str, identity: FeedIdentity) -> None:
        self.identities[consumer] = identity


class PostgresFeedIdentityStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def load(self, consumer: str) -> FeedIdentity | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(feed_identity.c.topic, feed_identity.c.topic_id)
                .where(feed_identity.c.consumer == consumer)
            ).first()
        return FeedIdentity(row[0], row[1]) if row else None

    def save(self, consumer: str, identity: FeedIdentity) -> None:
        stmt = pg_insert(feed_identity).values(consumer=consumer, topic=identity.topic,
                                               topic_id=identity.topic_id)
        with self._engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(
                index_elements=["consumer"],
                set_={"topic": stmt.excluded.topic, "topic_id": stmt.excluded.topic_id,
                      "recorded_at": stmt.excluded.recorded_at}))


def forget_identity(conn: Connection, consumer: str) -> int:
    """Delete the consumer's identity inside the caller's transaction (a reset)."""
    return conn.execute(delete(feed_identity).where(feed_identity.c.consumer == consumer)).rowcount
