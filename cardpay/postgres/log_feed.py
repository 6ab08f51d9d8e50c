"""`PostgresLogFeed`: the embedded-mode feed that tails the event store's global order.

Source name "events"; offset = global position. Safe to tail because positions become visible in
commit order (see cardpay/postgres/eventstore.py).
"""

from __future__ import annotations

import asyncio
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

    async def start(self, positions: Positions) -> None:
        self._last = positions.get(SOURCE, 0) - 1

    def _read(self, limit: int) -> list[FeedMessage]:
        with self._engine.connect() as conn:
            events = PostgresEventStore(conn).read_after(self._last, limit)
        return [FeedMessage(SOURCE, e.position, e) for e in events]

    async def poll(self, max_messages: int, timeout: float) -> list[FeedMessage]:
        deadline = time.monotonic() + timeout
        while True:
            batch = await asyncio.to_thread(self._read, max_messages)
            if batch:
                self._last = batch[-1].offset
                return batch
            if time.monotonic() >= deadline:
                return []
            await asyncio.sleep(self._idle_sleep)

    def positions(self) -> dict[str, int]:
        return {SOURCE: self._last + 1}

    def take_rejected(self) -> list[RejectedMessage]:
        return []  # rows are typed by the table; a bad payload is caught when it is applied

    async def stop(self) -> None:
        return None
