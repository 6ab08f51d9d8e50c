"""The projector's per-source locks on PostgreSQL: two batches of different partitions commit in
parallel, two of the same partition one after the other, and a reset waits for both."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from cardpay.bootstrap.project import _lock_for_reset
from cardpay.postgres.uow import PostgresProjectionUnitOfWork, source_lock_key

pytestmark = pytest.mark.integration

KEY = "projector:payments"


def _locked(engine: Engine, sources: list[str]) -> PostgresProjectionUnitOfWork:
    """A unit of work that holds the locks of `sources` (taken, not just deferred)."""
    uow = PostgresProjectionUnitOfWork(engine).__enter__()
    uow.lock_sources(KEY, sources)
    uow.load_positions("payments")  # sends the deferred locks
    return uow


def _tries(engine: Engine, sources: list[str]) -> bool:
    """Whether a batch of `sources` gets its locks within 200 ms."""
    with PostgresProjectionUnitOfWork(engine) as uow:
        uow.conn.execute(text("SET LOCAL lock_timeout = '200ms'"))
        uow.lock_sources(KEY, sources)
        try:
            uow.load_positions("payments")
        except OperationalError:
            return False
        return True


def test_batches_of_other_partitions_do_not_wait_those_of_the_same_partition_do(
        pg_engine: Engine) -> None:
    holder = _locked(pg_engine, ["t:0", "t:2"])
    try:
        assert _tries(pg_engine, ["t:1"])             # another member's partition
        assert _tries(pg_engine, ["u:0"])             # another topic's partition 0
        assert not _tries(pg_engine, ["t:1", "t:2"])  # overlaps the holder
        assert not _tries(pg_engine, ["t:0"])
    finally:
        holder.__exit__(None, None, None)
    assert _tries(pg_engine, ["t:0", "t:1", "t:2"])


def test_a_reset_cannot_run_while_a_batch_holds_its_locks(pg_engine: Engine) -> None:
    holder = _locked(pg_engine, ["t:0"])
    try:
        with pg_engine.connect() as conn, conn.begin():
            conn.execute(text("SET LOCAL lock_timeout = '200ms'"))
            with pytest.raises(OperationalError):
                _lock_for_reset(conn, "payments")
    finally:
        holder.__exit__(None, None, None)
    with pg_engine.connect() as conn, conn.begin():
        _lock_for_reset(conn, "payments")  # the batch is over: the reset gets its locks


def test_source_lock_keys_separate_partitions_and_topics() -> None:
    assert source_lock_key(KEY, "cardpay.payments:3") == (f"{KEY}:cardpay.payments", 3)
    assert source_lock_key(KEY, "events") == (f"{KEY}:events", 0)
    assert source_lock_key(KEY, "odd:name") == (f"{KEY}:odd:name", 0)
