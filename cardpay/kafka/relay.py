"""The outbox relay: publish unpublished outbox rows in id order, then mark them published.

At-least-once: a crash after publishing and before marking publishes those rows again; consumers
drop the redelivered events by (stream, version). A Postgres advisory lock keeps one relay active.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import Engine, func, select, text, update

from cardpay.errors import CardpayError
from cardpay.kafka.wire import OutboxMessage
from cardpay.metrics.relay import RelayMetrics
from cardpay.postgres.schema import outbox
from cardpay.runtime.supervise import DEFAULT_BACKOFF, Backoff, Outcome, supervise

log = logging.getLogger(__name__)
RELAY_LOCK = 0x63617264  # "card"


class Publisher(Protocol):
    async def publish(self, messages: Sequence[OutboxMessage]) -> None: ...

    async def reset(self) -> None:
        """Recover after a failed publish (e.g. reconnect), or start a publisher not started yet;
        may raise, then it is retried."""
        ...


class RelayAlreadyRunning(CardpayError, RuntimeError):
    pass


class OutboxRelay:
    def __init__(self, engine: Engine, publisher: Publisher, *, batch_size: int = 500) -> None:
        self._engine = engine
        self._publisher = publisher
        self._batch_size = batch_size
        self.published = 0
        self._observed_at = float("-inf")

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

    async def run(
        self,
        stop: asyncio.Event | None = None,
        *,
        until_idle: bool = False,
        idle_sleep: float = 0.1,
        backoff: Backoff = DEFAULT_BACKOFF,
        give_up_after: float | None = None,
        start_publisher: bool = False,
        metrics: RelayMetrics | None = None,
    ) -> Outcome:
        """Publish until `stop` (or until the outbox is empty with `until_idle`), under the
        supervision loop: a failed publish leaves its rows unmarked; they are sent again after a
        backoff and a publisher reset. `start_publisher`: reset (= start) the publisher before
        the first batch, so an unreachable broker at start-up is retried like any failure.
        `give_up_after`: raise `GaveUp` after that many seconds of failures in a row."""
        # A session lock on an autocommit connection: not an idle-in-transaction session that a
        # server timeout could end (which would silently let a second relay start).
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as guard:
            if not guard.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": RELAY_LOCK}).scalar():
                raise RelayAlreadyRunning("another outbox relay holds the relay lock")
            try:
                return await self._supervised(stop or asyncio.Event(), until_idle, idle_sleep,
                                              backoff, give_up_after, start_publisher, metrics)
            finally:
                # A dead connection (database restarted) has released the lock already.
                with contextlib.suppress(Exception):
                    guard.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": RELAY_LOCK})

    async def _supervised(self, stop: asyncio.Event, until_idle: bool, idle_sleep: float,
                          backoff: Backoff, give_up_after: float | None, start_publisher: bool,
                          metrics: RelayMetrics | None) -> Outcome:
        needs_reset = start_publisher  # reset() starts a publisher that is not started yet

        async def step() -> int:
            nonlocal needs_reset
            if metrics is not None:  # first, so the gauges move while the broker is away too
                await asyncio.to_thread(self.observe_backlog, metrics)
            if needs_reset:
                await self._publisher.reset()
                needs_reset = False
            published = await self.run_once()
            if metrics is not None:
                metrics.published.inc(published)
                await asyncio.to_thread(self.observe_backlog, metrics, published == 0)
            return published

        async def recover(exc: Exception) -> None:
            # The reset runs at the start of the next step: if it fails, that step failed, and
            # it is tried again after the next backoff (never a publish on a broken producer).
            nonlocal needs_reset
            needs_reset = True

        return await supervise(step, component="relay", stop=stop, backoff=backoff,
                               recover=recover, until_idle=until_idle, idle_sleep=idle_sleep,
                               give_up_after=give_up_after,
                               errors=metrics.errors if metrics is not None else None)

    def observe_backlog(self, metrics: RelayMetrics, force: bool = False) -> None:
        """Refresh the backlog gauges (at most once a second unless `force`: a count per batch
        would cost more than the batch on a large backlog)."""
        now = time.monotonic()
        if not force and now - self._observed_at < 1.0:
            return
        self._observed_at = now
        with self._engine.connect() as conn:
            count, age = conn.execute(
                select(func.count(),
                       func.extract("epoch", func.now() - func.min(outbox.c.created_at)))
                .select_from(outbox).where(outbox.c.published_at.is_(None))
            ).one()
        metrics.backlog.set(int(count))
        metrics.oldest_unpublished_age.set(max(0.0, float(age)) if age is not None else 0.0)

    def backlog(self) -> int:
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
                ).scalar_one()
            )
