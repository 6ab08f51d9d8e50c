"""Deferred statements on the driver's cursor (`cardpay.postgres.raw`): sent in order, with the
next statement or before the commit, never into another transaction, and their errors end the
unit of work like any other."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from cardpay.postgres import raw
from cardpay.postgres.uow import PostgresUnitOfWork

pytestmark = pytest.mark.integration

TABLE = "CREATE TABLE IF NOT EXISTS raw_probe (k text PRIMARY KEY)"


@pytest.fixture
def probe(pg_engine: Engine) -> Engine:
    with pg_engine.begin() as conn:
        conn.execute(text(TABLE))
    return pg_engine


def keys(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT k FROM raw_probe ORDER BY k")).scalars())


def held_elsewhere(engine: Engine, key: str) -> bool:
    with engine.connect() as other:
        got = other.execute(text("SELECT pg_try_advisory_xact_lock(hashtext(:k))"),
                            {"k": key}).scalar()
        other.rollback()
    return not got


def test_a_deferred_lock_is_held_once_the_next_statement_ran(probe: Engine) -> None:
    with PostgresUnitOfWork(probe) as uow:
        uow.lock("probe-key")
        assert not held_elsewhere(probe, "probe-key")  # not sent yet
        raw.execute(uow.conn, "SELECT 1").fetchone()
        assert held_elsewhere(probe, "probe-key")
    assert not held_elsewhere(probe, "probe-key")  # released with the transaction


def test_the_ledgers_statements_go_after_what_was_deferred(probe: Engine) -> None:
    """The authorization locks the Safe, then reads its ledger accounts: the read must come
    after the lock, although the ledger sends its statements its own way."""
    with PostgresUnitOfWork(probe) as uow:
        uow.lock("safe:EURe:0xabc")
        assert uow.ledger.lookup_accounts(["EURe:network_payable"]) == []
        assert held_elsewhere(probe, "safe:EURe:0xabc")


def test_deferred_statements_go_before_a_sqlalchemy_statement_and_before_the_commit(
        probe: Engine) -> None:
    with PostgresUnitOfWork(probe) as uow:
        raw.defer(uow.conn, "INSERT INTO raw_probe VALUES (%s)", ("a",))
        seen = uow.conn.execute(text("SELECT count(*) FROM raw_probe")).scalar()
        raw.defer(uow.conn, "INSERT INTO raw_probe VALUES (%s)", ("b",))
        uow.commit()
    assert seen == 1 and keys(probe) == ["a", "b"]


def test_what_was_deferred_never_reaches_the_next_transaction(probe: Engine) -> None:
    with PostgresUnitOfWork(probe) as uow:
        raw.defer(uow.conn, "INSERT INTO raw_probe VALUES (%s)", ("lost",))
    # the pool hands out the same connection again
    with PostgresUnitOfWork(probe) as uow:
        raw.execute(uow.conn, "SELECT 1").fetchone()
        uow.commit()
    assert keys(probe) == []


@pytest.mark.parametrize("then", ["commit", "sqlalchemy", "raw"])
def test_a_failing_deferred_statement_fails_the_unit_of_work_and_the_pool_goes_on(
        probe: Engine, then: str) -> None:
    with probe.begin() as conn:
        conn.execute(text("INSERT INTO raw_probe VALUES ('dup')"))
    with pytest.raises(IntegrityError), PostgresUnitOfWork(probe) as uow:
        raw.defer(uow.conn, "INSERT INTO raw_probe VALUES (%s)", ("dup",))
        if then == "commit":
            uow.commit()
        elif then == "sqlalchemy":
            uow.conn.execute(text("SELECT 1"))
        else:
            raw.execute(uow.conn, "SELECT 1")
    with PostgresUnitOfWork(probe) as uow:
        raw.defer(uow.conn, "INSERT INTO raw_probe VALUES (%s)", ("next",))
        uow.commit()
    assert keys(probe) == ["dup", "next"]


@pytest.mark.parametrize("sent", [False, True])
def test_a_savepoint_undoes_its_block_whether_or_not_it_was_sent(probe: Engine,
                                                                  sent: bool) -> None:
    with PostgresUnitOfWork(probe) as uow:
        raw.defer(uow.conn, "INSERT INTO raw_probe VALUES (%s)", ("before",))
        with pytest.raises(ValueError), uow.savepoint():
            raw.defer(uow.conn, "INSERT INTO raw_probe VALUES (%s)", ("inside",))
            if sent:
                raw.execute(uow.conn, "SELECT 1")
            raw.defer(uow.conn, "INSERT INTO raw_probe VALUES (%s)", ("queued",))
            raise ValueError("refused")
        with uow.savepoint():
            raw.defer(uow.conn, "INSERT INTO raw_probe VALUES (%s)", ("kept",))
        uow.commit()
    assert keys(probe) == ["before", "kept"]
