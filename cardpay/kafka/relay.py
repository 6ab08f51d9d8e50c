"""The outbox relay: publish unpublished outbox rows in id order, then mark them published.

At-least-once: a crash after publishing and before marking publishes those rows again; consumers
drop the redelivered events by (stream, version). A Postgres advisory lock keeps one relay active.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import Engine, func, select, text, update

from cardpay.kafka.wire import OutboxMessage
from cardpay.postgres.schema import outbox

log = logging.getLogger(__name__)
RELAY_LOCK = 0x63617264  # "card"


class Publisher(Protocol):
    async def publish(self, messages: Sequence[OutboxMessage]) -> None: ...

    async def reset(self) -> None:
        """Recover after a failed publish (e.g. reconnect); may raise, then it is retried."""
        ...


class RelayAlreadyRunning(RuntimeError):
    pass


class OutboxRelay:
    def __init__(self, engine: Engine, publisher: Publisher, *, batch_size: int = 500) -> None:
        self._engine = engine
        self._publisher = publisher
        self._batch_size = batch_size
        self.published = 0

    def _pending(self) -> list[OutboxMessage]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.value)
                .where(outbox.c.published_at.is_(None))
                .order_by(outbox.c.id)
                .limit(self._batch_size)
            )
            return [OutboxMessage(int(r[0]), r[1], r[2], bytes(r[3])) for r in rows]

    def _mark(self, ids: list[int]) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(outbox).where(outbox.c.id.in_(ids)).values(published_at=func.now()))

    async def run_once(self) -> int:
        batch = await asyncio.to_thread(self._pending)
        if not batch:
            return 0
        await self._publisher.publish(batch)
        await asyncio.to_thread(self._mark, [m.id for m in batch])
        self.published += len(batch)
        return len(batch)

    async def run(self, stop: asyncio.Event | None = None, *, until_idle: bool = False,
                  idle_sleep: float = 0.1, max_backoff: float = 30.0) -> None:
        """Publish until `stop` (or until the outbox is empty with `until_idle`). A failed publish
        leaves its rows unmarked; they are sent again after a backoff and a publisher reset."""
        # A session lock on an autocommit connection: not an idle-in-transaction session that a
        # server timeout could end (which would silently let a second relay start).
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as guard:
            if not guard.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": RELAY_LOCK}).scalar():
                raise RelayAlreadyRunning("another outbox relay holds the relay lock")
            try:
                failures = 0
                while stop is None or not stop.is_set():
                    try:
                        published = await self.run_once()
                        failures = 0
                    except Exception as exc:  # broker or database away: nothing was marked
                        failures += 1
                        delay = min(max_backoff, 0.2 * 2 ** min(failures, 8))
                        log.error("relay: publish failed (%s: %s); retrying in %.1fs",
                                  type(exc).__name__, exc, delay)
                        await asyncio.sleep(delay)
                        with contextlib.suppress(Exception):
                            await self._publisher.reset()
                        continue
                    if published == 0:
                        if until_idle:
                            return
                        await asyncio.sleep(idle_sleep)
            finally:
                guard.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": RELAY_LOCK})

    def backlog(self) -> int:
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
                ).scalar_one()
            )
