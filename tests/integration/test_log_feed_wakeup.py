"""The PostgreSQL log feed, idle, wakes at the commit that appends events (migration 0018's
NOTIFY), not at its next timed poll; and it keeps working without the notification."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from sqlalchemy import Engine, text

from cardpay.postgres.log_feed import PostgresLogFeed
from tests.support.workload import payment_events, write

pytestmark = pytest.mark.integration


async def _first_batch_after(feed: PostgresLogFeed, engine: Engine, delay: float
                             ) -> tuple[int, float]:
    """Start the feed at the end, append one payment's events `delay` s later from a thread;
    (messages of the first batch, seconds from that commit to the poll's return)."""
    with engine.connect() as conn:
        end = conn.execute(text("SELECT coalesce(max(position), 0) FROM events")).scalar_one()
    await feed.start({"events": end + 1})
    committed: list[float] = []

    def append() -> None:
        time.sleep(delay)
        write(engine, payment_events(1, seed=3), outbox_topic=None)
        committed.append(time.monotonic())

    writer = threading.Thread(target=append)
    writer.start()
    try:
        batch = await feed.poll(100, timeout=20)
        returned = time.monotonic()
    finally:
        writer.join()
        await feed.stop()
    return len(batch), returned - committed[0]


def test_an_idle_feed_reads_at_the_commit_not_at_its_next_poll(pg_engine: Engine) -> None:
    feed = PostgresLogFeed(pg_engine, idle_sleep=10.0)  # a timed poll would come 10 s late
    count, after_commit = asyncio.run(_first_batch_after(feed, pg_engine, delay=0.5))
    assert count > 0
    assert after_commit < 2.0, after_commit  # woken by the notification (10 s otherwise)


def test_without_the_notification_the_feed_still_polls(pg_engine: Engine) -> None:
    """The trigger gone (as if a notification were lost): the bounded wait still reads."""
    with pg_engine.begin() as conn:
        conn.execute(text("DROP TRIGGER events_notify ON events"))
    feed = PostgresLogFeed(pg_engine, idle_sleep=1.0)
    count, after_commit = asyncio.run(_first_batch_after(feed, pg_engine, delay=0.3))
    assert count > 0
    assert 0 <= after_commit < 3.0, after_commit
