"""The database itself keeps the books straight: rows written with raw SQL, past the repository,
that would unbalance a journal, overdraw an account, set a balance, or resolve a pending transfer
twice (or for more than it held) are refused. And concurrent writers on one account never
overdraw it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from cardpay.postgres.uow import PostgresUnitOfWork
from domain.ledger import CreateTransferResult, Transfer
from tests.support.ledger import (
    ACCOUNTS,
    ALICE,
    BOB,
    NOW,
    PAYABLE,
    SAFES,
    SUSPENSE,
    F,
    deposit,
    hold,
    post,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def books(pg_engine: Engine) -> Engine:
    """Alice has 100 and a pending hold h1 of 60 towards the network."""
    with PostgresUnitOfWork(pg_engine) as w:
        w.ledger.create_accounts(ACCOUNTS)
        assert w.ledger.create_transfers([deposit("d1", ALICE, 100), hold("h1", ALICE, 60)],
                                         NOW) == [CreateTransferResult.OK] * 2
        w.commit()
    return pg_engine


@pytest.fixture
def conn(books: Engine) -> Iterator[Connection]:
    with books.connect() as c:
        yield c


def refused(conn: Connection, sql: str, reason: str) -> None:
    with pytest.raises(DBAPIError, match=reason), conn.begin():
        conn.execute(text(sql))


def alice(conn: Connection) -> tuple[int, ...]:
    row = conn.execute(text("SELECT debits_pending, debits_posted, credits_pending, "
                            "credits_posted FROM ledger_accounts WHERE id = :id"),
                       {"id": ALICE}).one()
    conn.rollback()
    return tuple(int(v) for v in row)


def test_an_unbalanced_journal_is_refused(conn: Connection) -> None:
    refused(conn, f"INSERT INTO ledger_entries (journal_id, account_id, ledger, credits_posted) "
                  f"VALUES ('free-money', '{ALICE}', 'EURe', 1000)", "does not balance")
    refused(conn, f"INSERT INTO ledger_entries (journal_id, account_id, ledger, debits_posted, "
                  f"credits_posted) VALUES ('j', '{SAFES}', 'EURe', 10, 0), "
                  f"('j', '{ALICE}', 'EURe', 0, 9)", "does not balance")
    # balanced in total but pending on one side, posted on the other: still refused
    refused(conn, f"INSERT INTO ledger_entries (journal_id, account_id, ledger, debits_pending, "
                  f"credits_posted) VALUES ('j', '{SAFES}', 'EURe', 10, 0), "
                  f"('j', '{ALICE}', 'EURe', 0, 10)", "does not balance")
    refused(conn, f"INSERT INTO ledger_entries (journal_id, account_id, ledger, debits_posted, "
                  f"credits_posted) VALUES ('j', '{SAFES}', 'EURe', 10, 0), "
                  f"('j', 'nobody', 'EURe', 0, 10)", "unknown account")
    assert alice(conn) == (60, 0, 0, 100)


def test_an_overdrawing_entry_is_refused(conn: Connection) -> None:
    # balanced, but Alice (debits must not exceed credits) would spend 41 more than she has free
    refused(conn, f"INSERT INTO ledger_entries (journal_id, account_id, ledger, debits_posted, "
                  f"credits_posted) VALUES ('spend', '{ALICE}', 'EURe', 41, 0), "
                  f"('spend', '{PAYABLE}', 'EURe', 0, 41)", "debits_must_not_exceed_credits")
    with conn.begin():  # what she has free is fine: the check is on the balances, not the rows
        conn.execute(text(f"INSERT INTO ledger_entries (journal_id, account_id, ledger, "
                          f"debits_posted, credits_posted) VALUES "
                          f"('spend', '{ALICE}', 'EURe', 40, 0), "
                          f"('spend', '{PAYABLE}', 'EURe', 0, 40)"))
    assert alice(conn) == (60, 40, 0, 100)


def test_a_direct_balance_update_is_refused(conn: Connection) -> None:
    refused(conn, f"UPDATE ledger_accounts SET credits_posted = credits_posted + 1000000 "
                  f"WHERE id = '{ALICE}'", "change only through journal entries")
    refused(conn, f"UPDATE ledger_accounts SET flags = 0 WHERE id = '{ALICE}'", "cannot be changed")
    refused(conn, f"DELETE FROM ledger_accounts WHERE id = '{ALICE}'", "never deleted")
    refused(conn, "UPDATE ledger_entries SET credits_posted = 0", "never changed")
    refused(conn, "DELETE FROM ledger_entries", "never changed")
    assert alice(conn) == (60, 0, 0, 100)


def _post_sql(tid: str, amount: int, flags: int = 4) -> str:
    return (f"INSERT INTO ledger_transfers (id, debit_account_id, credit_account_id, amount, "
            f"ledger, code, flags, pending_id, created_at) VALUES ('{tid}', '{ALICE}', "
            f"'{PAYABLE}', {amount}, 'EURe', 'authorization', {flags}, 'h1', now())")


def test_a_pending_transfer_resolves_once_and_for_at_most_its_amount(conn: Connection) -> None:
    refused(conn, _post_sql("p-over", 61), "more than was pending")
    refused(conn, _post_sql("v-part", 59, flags=8), "more than was pending")
    with conn.begin():
        conn.execute(text(_post_sql("p1", 60)))
    refused(conn, _post_sql("p2", 1), "ledger_transfers_resolve_once")
    refused(conn, "UPDATE ledger_transfers SET pending_status = 'pending' WHERE id = 'h1'",
            "resolved already")
    refused(conn, "UPDATE ledger_transfers SET amount = 1 WHERE id = 'h1'", "cannot be changed")
    refused(conn, "UPDATE ledger_transfers SET pending_status = 'expired' WHERE id = 'h1'",
            "resolved already")


def test_the_repository_refuses_a_second_resolution_too(books: Engine) -> None:
    with PostgresUnitOfWork(books) as w:
        assert w.ledger.create_transfers([post("p1", "h1", 10)], NOW) == [CreateTransferResult.OK]
        w.commit()
    with PostgresUnitOfWork(books) as w:
        assert w.ledger.create_transfers([post("p2", "h1")], NOW) == [
            CreateTransferResult.PENDING_TRANSFER_ALREADY_POSTED]


def test_concurrent_spenders_never_overdraw_one_account(books: Engine) -> None:
    """Eight threads each try 15 spends of 1 (and 15 holds of 1) from Alice's 40 free units:
    exactly 40 succeed, whatever the interleaving, and nobody deadlocks."""
    results: list[CreateTransferResult] = []
    errors: list[Exception] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def spender(n: int) -> None:
        start.wait()
        for i in range(15):
            batch = [hold(f"h-{n}-{i}", ALICE, 1),
                     Transfer(f"s-{n}-{i}", ALICE, PAYABLE, 1, "EURe", "spend")]
            try:
                with PostgresUnitOfWork(books) as w:
                    got = w.ledger.create_transfers(batch, NOW)
                    w.commit()
            except Exception as exc:  # e.g. a CHECK violation if the rows were not locked
                errors.append(exc)
                return
            with lock:
                results.extend(got)

    threads = [threading.Thread(target=spender, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results.count(CreateTransferResult.OK) == 40
    assert set(results) == {CreateTransferResult.OK, CreateTransferResult.EXCEEDS_CREDITS}
    with books.connect() as c:
        assert alice(c) == (60 + sum(1 for r in results[0::2] if r.applied),
                            sum(1 for r in results[1::2] if r.applied), 0, 100)


# -- accounts without limit flags: balances in shard rows (migration 0011, ADR 0011) -----------
def payable(conn: Connection) -> tuple[int, ...]:
    row = conn.execute(text("SELECT debits_pending, debits_posted, credits_pending, "
                            "credits_posted FROM ledger_accounts WHERE id = :id"),
                       {"id": PAYABLE}).one()
    conn.rollback()
    return tuple(int(v) for v in row)


def test_shard_rows_change_only_through_journal_entries(conn: Connection) -> None:
    assert payable(conn) == (0, 0, 60, 0)  # Alice's hold, summed from the shards
    refused(conn, f"INSERT INTO ledger_account_shards (account_id, shard, credits_posted) "
                  f"VALUES ('{PAYABLE}', 31, 1000)", "change only through journal entries")
    refused(conn, "UPDATE ledger_account_shards SET credits_pending = 0",
            "change only through journal entries")
    refused(conn, "DELETE FROM ledger_account_shards", "change only through journal entries")
    refused(conn, f"UPDATE ledger_accounts SET credits_pending = 0 WHERE id = '{PAYABLE}'",
            "change only through journal entries")
    assert payable(conn) == (0, 0, 60, 0)


def test_an_unflagged_balance_cannot_go_below_zero(conn: Connection) -> None:
    """No CHECK can see a sum over shard rows: the posting trigger checks it instead."""
    refused(conn, f"INSERT INTO ledger_entries (journal_id, account_id, ledger, debits_pending, "
                  f"credits_pending) VALUES ('j', '{SUSPENSE}', 'EURe', 61, 0), "
                  f"('j', '{PAYABLE}', 'EURe', 0, 0)", "does not balance")
    refused(conn, f"INSERT INTO ledger_entries (journal_id, account_id, ledger, debits_pending, "
                  f"credits_pending) VALUES ('j', '{SUSPENSE}', 'EURe', -61, 0), "
                  f"('j', '{PAYABLE}', 'EURe', 0, -61)", "would leave 0..u128")
    assert payable(conn) == (0, 0, 60, 0)


def test_holds_towards_one_payable_account_do_not_wait_for_each_other(books: Engine) -> None:
    """Two transactions each hold money towards network_payable; the first is still open when
    the second commits (with a lock timeout, so waiting would fail the test, not hang it)."""
    with PostgresUnitOfWork(books) as w:
        assert w.ledger.create_transfers([deposit("d2", BOB, 50)], NOW) == [
            CreateTransferResult.OK]
        w.commit()
    with PostgresUnitOfWork(books) as first:
        assert first.ledger.create_transfers([hold("ha", ALICE, 10)], NOW) == [
            CreateTransferResult.OK]
        with PostgresUnitOfWork(books) as second:
            second.conn.execute(text("SET LOCAL lock_timeout = '2s'"))
            assert second.ledger.create_transfers([hold("hb", BOB, 20)], NOW) == [
                CreateTransferResult.OK]
            second.commit()
        first.commit()
    with books.connect() as c:
        assert payable(c) == (0, 0, 90, 0)


def test_a_pending_between_unflagged_accounts_is_resolved_once_under_concurrency(
        books: Engine) -> None:
    """No flagged account guards a suspense -> payable hold, so its own row is locked: a
    second post waits for the first and then finds it posted (not a unique-index error)."""
    stand_in = Transfer("hs", SUSPENSE, PAYABLE, 30, "EURe", "authorization", F.PENDING)
    with PostgresUnitOfWork(books) as w:
        assert w.ledger.create_transfers([stand_in], NOW) == [CreateTransferResult.OK]
        w.commit()
    second: list[CreateTransferResult] = []

    def post_again() -> None:
        with PostgresUnitOfWork(books) as w:
            second.extend(w.ledger.create_transfers([post("ps2", "hs")], NOW))
            w.commit()

    with PostgresUnitOfWork(books) as first:
        assert first.ledger.create_transfers([post("ps1", "hs", 25)], NOW) == [
            CreateTransferResult.OK]
        other = threading.Thread(target=post_again)
        other.start()
        other.join(timeout=1.0)
        assert other.is_alive(), "the second post must wait for the first one's commit"
        first.commit()
    other.join(timeout=10)
    assert second == [CreateTransferResult.PENDING_TRANSFER_ALREADY_POSTED]
    with books.connect() as c:
        assert payable(c) == (0, 0, 60, 25)
