"""`PostgresLogFeed`: the embedded-mode feed that tails the event store's global order.

Source name "events"; offset = global position. Safe to tail because positions become visible in
commit order (see cardpay/postgres/eventstore.py).

After a full batch it reads the next one ahead, in a thread, while the caller applies this one
(PostgreSQL's side of a read then overlaps the caller's Python: a rebuild replaying the feed is
faster by that much). A read ahead is only used when it starts where the feed stands and is for
as many messages as asked; `start` and `stop` drop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from sqlalchemy import Engine

from cardpay.postgres.eventstore import PostgresEventStore
from projector.feed import FeedMessage, Positions, RejectedMessage

SOURCE = "events"


class PostgresLogFeed:
    def __init__(self, engine: Engine, *, idle_sleep: float = 0.05) -> None:
        self._engine = engine
        self._last = 0
        self._idle_sleep = idle_sleep
        self._ahead: tuple[int, int, asyncio.Task[list[FeedMessage]]] | None = None
        """(after, limit, the read) started after a full batch."""

    async def start(self, positions: Positions) -> None:
        await self._drop_ahead()
        self._last = positions.get(SOURCE, 0) - 1

    def _read(self, after: int, limit: int) -> list[FeedMessage]:
        with self._engine.connect() as conn:
            events = PostgresEventStore(conn).read_after(after, limit)
        return [FeedMessage(SOURCE, e.position, e) for e in events]

    async def _drop_ahead(self) -> None:
        if self._ahead is not None:
            task = self._ahead[2]
            self._ahead = None
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _next(self, limit: int) -> list[FeedMessage]:
        if self._ahead is not None and self._ahead[:2] == (self._last, limit):
            task = self._ahead[2]
            self._ahead = None
            return await task
        await self._drop_ahead()
        return await asyncio.to_thread(self._read, self._last, limit)

    async def poll(self, max_messages: int, timeout: float) -> list[FeedMessage]:
        deadline = time.monotonic() + timeout
        while True:
            batch = await self._next(max_messages)
            if batch:
                self._last = batch[-1].offset
                if len(batch) == max_messages:  # more is likely waiting: read it meanwhile
                    self._ahead = (self._last, max_messages, asyncio.create_task(
                        asyncio.to_thread(self._read, self._last, max_messages)))
                return batch
            if time.monotonic() >= deadline:
                return []
            await asyncio.sleep(self._idle_sleep)

    def positions(self) -> dict[str, int]:
        return {SOURCE: self._last + 1}

    def take_rejected(self) -> list[RejectedMessage]:
        return []  # rows are typed by the table; a bad payload is caught when it is applied

    async def stop(self) -> None:
        await self._drop_ahead()
