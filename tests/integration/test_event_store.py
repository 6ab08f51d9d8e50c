"""Event store contract suite (in-memory and real PostgreSQL) and the late-commit ordering test."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, text

from cardpay.errors import ConcurrencyConflict
from cardpay.postgres.eventstore import PostgresEventStore
from cardpay.postgres.uow import PostgresUnitOfWork
from domain.serialization import to_data
from tests.eventsourcing_helpers import refund_requested, spent
from tests.fakes.storage import InMemoryEventStore

Session = Callable[[], AbstractContextManager[Any]]


@pytest.fixture(params=["memory", "postgres"])
def session(request: pytest.FixtureRequest) -> Session:
    """A function opening one transaction on a store; commits on success, rolls back on error."""
    if request.param == "memory":
        store = InMemoryEventStore()

        @contextmanager
        def memory() -> Iterator[InMemoryEventStore]:
            yield store

        return memory
    engine: Engine = request.getfixturevalue("pg_engine")

    @contextmanager
    def postgres() -> Iterator[PostgresEventStore]:
        with PostgresUnitOfWork(engine) as uow:
            yield uow.events
            uow.commit()

    return postgres


@pytest.mark.integration
class TestEventStoreContract:
    def test_append_then_load_round_trips(self, session: Session) -> None:
        with session() as store:
            recorded = store.append([spent("p1"), refund_requested("p1", 2)])
        assert [r.version for r in recorded] == [1, 2]
        assert recorded[0].position < recorded[1].position
        with session() as store:
            loaded = store.load("p1")
        assert loaded == [spent("p1"), refund_requested("p1", 2)]

    def test_unknown_stream_loads_empty(self, session: Session) -> None:
        with session() as store:
            assert store.load("nope") == []

    def test_conflicting_version_is_refused_and_nothing_is_written(
        self, session: Session
    ) -> None:
        with session() as store:
            store.append([spent("p1")])
        with pytest.raises(ConcurrencyConflict), session() as store:
            store.append([spent("p2"), spent("p1", version=1)])
        with session() as store:
            assert store.load("p2") == []
            assert len(store.load("p1")) == 1

    def test_gap_in_versions_is_refused(self, session: Session) -> None:
        with pytest.raises(ConcurrencyConflict), session() as store:
            store.append([spent("p1", version=2)])

    def test_read_after_resumes_in_global_order(self, session: Session) -> None:
        with session() as store:
            store.append([spent("a"), spent("b")])
        with session() as store:
            store.append([refund_requested("a", 2)])
        with session() as store:
            first = store.read_after(0, 2)
            rest = store.read_after(first[-1].position, 10)
        assert [(r.stream_id, r.version) for r in first + rest] == [("a", 1), ("b", 1), ("a", 2)]
        assert rest[-1].data == to_data(refund_requested("a", 2))


def _tail(engine: Engine, stop: threading.Event, seen: list[int]) -> None:
    """A reader that remembers only the last position it saw, like every feed consumer."""
    last = 0
    while True:
        done = stop.is_set()
        with engine.connect() as conn:
            batch = PostgresEventStore(conn).read_after(last, 1000)
        for event in batch:
            seen.append(event.position)
            last = event.position
        if done and not batch:
            return
        time.sleep(0.001)


def _naive_insert(engine: Engine, stream: str, hold: float) -> None:
    """What a store without the table lock does: positions assigned at insert, not commit."""
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO events (stream_id, version, type, data) "
                 "VALUES (:s, 1, 'PaymentSpent', '{}'::jsonb)"),
            {"s": stream},
        )
        time.sleep(hold)


def _locked_insert(engine: Engine, stream: str, hold: float) -> None:
    with PostgresUnitOfWork(engine) as uow:
        uow.events.append([spent(stream)])
        time.sleep(hold)
        uow.commit()


def _race(engine: Engine, insert: Callable[[Engine, str, float], None]) -> list[int]:
    """A slow writer takes a position first; a fast one commits while the slow one still holds."""
    seen: list[int] = []
    stop = threading.Event()
    reader = threading.Thread(target=_tail, args=(engine, stop, seen))
    reader.start()
    slow = threading.Thread(target=insert, args=(engine, "slow", 1.0))
    slow.start()
    time.sleep(0.3)
    fast = threading.Thread(target=insert, args=(engine, "fast", 0.0))
    fast.start()
    slow.join()
    fast.join()
    stop.set()
    reader.join()
    return seen


@pytest.mark.integration
def test_without_the_lock_a_tailing_reader_skips_the_late_commit(pg_engine: Engine) -> None:
    """The hazard is real: this is the failure the locked store must prevent."""
    seen = _race(pg_engine, _naive_insert)
    with pg_engine.connect() as conn:
        stored = sorted(conn.execute(text("SELECT position FROM events")).scalars())
    assert len(stored) == 2
    assert seen != stored and len(seen) == 1, f"reader saw {seen}, table has {stored}"


@pytest.mark.integration
def test_tailing_reader_never_skips_a_late_committing_event(pg_engine: Engine) -> None:
    seen = _race(pg_engine, _locked_insert)
    assert len(seen) == 2 and seen == sorted(seen)


@pytest.mark.integration
def test_many_concurrent_writers_and_a_tailing_reader_see_every_event_once(
    pg_engine: Engine,
) -> None:
    writers, per_writer = 6, 25
    rng = random.Random(7)
    holds = [[rng.uniform(0, 0.01) for _ in range(per_writer)] for _ in range(writers)]
    seen: list[int] = []
    stop = threading.Event()
    reader = threading.Thread(target=_tail, args=(pg_engine, stop, seen))
    reader.start()

    def write(w: int) -> None:
        for i in range(per_writer):
            _locked_insert(pg_engine, f"w{w}-{i}", holds[w][i])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    reader.join()
    with pg_engine.connect() as conn:
        stored = sorted(conn.execute(text("SELECT position FROM events")).scalars())
    assert len(stored) == writers * per_writer
    assert seen == stored


@pytest.mark.integration
def test_an_event_stored_before_schema_versions_loads_through_the_upcaster(
        pg_engine: Engine) -> None:
    """A row as earlier releases wrote it (no meta.schema) loads, is fed, and decodes as today."""
    import json

    from domain.serialization import SCHEMA_VERSION, from_recorded, schema_of

    event = spent("old")
    data = to_data(event)
    del data["meta"]["schema"]
    with pg_engine.begin() as conn:
        conn.execute(text("INSERT INTO events (stream_id, version, type, data) "
                          "VALUES ('old', 1, 'PaymentSpent', CAST(:d AS jsonb))"),
                     {"d": json.dumps(data)})
    with PostgresUnitOfWork(pg_engine) as uow:
        assert uow.events.load("old") == [event]
        (recorded,) = uow.events.read_after(0, 10)
    assert schema_of(recorded.data) == 0  # the row itself is not rewritten
    assert from_recorded(recorded) == event and SCHEMA_VERSION >= 1
