"""`PostgresLogFeed`: the embedded-mode feed that tails the event store's global order.

Source name "events"; offset = global position. Safe to tail because positions become visible in
commit order (see cardpay/postgres/eventstore.py).

After a full batch it reads the next one ahead, in a thread, while the caller applies this one
(PostgreSQL's side of a read then overlaps the caller's Python: a rebuild replaying the feed is
faster by that much). A read ahead is only used when it starts where the feed stands and is for
as many messages as asked; `start` and `stop` drop it.

Idle, it waits for a commit that appended events instead of sleeping: a connection of its own
LISTENs on `cardpay_events` (migration 0018's trigger notifies it), taken before the first read,
so a commit between a read that found nothing and the wait is still queued on it and ends the
wait at once. The wait is bounded by `idle_sleep` (a missed or lost notification costs at most
that), and without the connection (the database restarting) it is a plain sleep until the next
poll reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import psycopg
from sqlalchemy import Engine

from cardpay.postgres.eventstore import PostgresEventStore
from projector.feed import FeedMessage, Positions, RejectedMessage

SOURCE = "events"
CHANNEL = "cardpay_events"
"""What migration 0018's trigger notifies when a statement inserted events."""

log = logging.getLogger(__name__)


class CommitWaiter:
    """A connection LISTENing on `CHANNEL`, to wait for the next commit that appended events.
    Blocking (run it in a thread); any database error closes it, and the next `wait` connects
    again (after sleeping its timeout, so a database that is down is not hammered)."""

    def __init__(self, engine: Engine) -> None:
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False)
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None

    def listen(self) -> bool:
        """Connected and listening (connecting now if need be)."""
        if self._conn is None:
            try:
                self._conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
                self._conn.execute(f"LISTEN {CHANNEL}")
            except psycopg.Error as exc:
                log.info("log feed: not listening for commits (%s); polling",
                         str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                self.close()
                return False
        return True

    def wait(self, timeout: float) -> None:
        """Until a commit notified since the last wait (or the LISTEN), or `timeout` seconds."""
        if not self.listen():
            time.sleep(timeout)
            return
        assert self._conn is not None
        try:
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error:
            self.close()
            time.sleep(timeout)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


class PostgresLogFeed:
    def __init__(self, engine: Engine, *, idle_sleep: float = 0.5) -> None:
        self._engine = engine
        self._last = 0
        self._idle_sleep = idle_sleep
        self._ahead: tuple[int, int, asyncio.Task[list[FeedMessage]]] | None = None
        """(after, limit, the read) started after a full batch."""
        self._commits = CommitWaiter(engine)

    async def start(self, positions: Positions) -> None:
        await self._drop_ahead()
        self._last = positions.get(SOURCE, 0) - 1
        await asyncio.to_thread(self._commits.listen)  # before the first read: no commit missed

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
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            await asyncio.to_thread(self._commits.wait, min(left, self._idle_sleep))

    def positions(self) -> dict[str, int]:
        return {SOURCE: self._last + 1}

    def take_rejected(self) -> list[RejectedMessage]:
        return []  # rows are typed by the table; a bad payload is caught when it is applied

    async def stop(self) -> None:
        await self._drop_ahead()
        await asyncio.to_thread(self._commits.close)
