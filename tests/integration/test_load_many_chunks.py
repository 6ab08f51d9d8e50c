"""`PostgresEventStore.load_many` with more stream ids than PostgreSQL's 65,535 bind parameters."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from cardpay.postgres.eventstore import PostgresEventStore
from tests.support.workload import payment_events, write

pytestmark = pytest.mark.integration


def test_load_many_takes_more_ids_than_one_statement_can_bind(pg_engine: Engine) -> None:
    payments = payment_events(30, seed=3)
    write(pg_engine, payments, outbox_topic=None)
    stored = {events[0].stream_id: events for events in payments}
    missing = [f"absent-{i:06d}" for i in range(70_000)]
    ids = [*missing[:35_000], *stored, *missing[35_000:]]
    with pg_engine.connect() as conn:
        loaded = PostgresEventStore(conn).load_many(ids)
    assert len(loaded) == len(ids)
    assert all(loaded[sid] == [] for sid in missing)
    for sid, events in stored.items():
        assert [(e.version, type(e).__name__) for e in loaded[sid]] == \
            [(e.version, type(e).__name__) for e in events]
