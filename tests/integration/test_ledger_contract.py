"""One contract for the ledger repository, run against the in-memory fake and PostgreSQL.

TigerBeetle's semantics as the service layer relies on them: client-chosen ids (a repeat is
EXISTS and changes nothing, other fields are refused), two-phase holds (post at most the pending
amount, the rest released; void; each resolved once), linked chains all-or-nothing, expiry, and
the writes committing with the unit of work.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from cardpay.handlers.ports import UnitOfWork
from domain.ledger import (
    Account,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    PendingStatus,
    Transfer,
)
from tests.fakes.storage import FakeDatabase
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
    void,
)

Factory = Callable[[], UnitOfWork]
R = CreateTransferResult
A = CreateAccountResult
EURE = 10**18


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit),
                        pytest.param("postgres", marks=pytest.mark.integration)])
def uow(request: pytest.FixtureRequest) -> Factory:
    if request.param == "memory":
        factory: Factory = FakeDatabase().uow
    else:
        from cardpay.postgres.uow import unit_of_work_factory

        engine: Engine = request.getfixturevalue("pg_engine")
        factory = unit_of_work_factory(engine, None)
    with factory() as w:
        assert set(w.ledger.create_accounts(ACCOUNTS)) == {A.OK}
        w.commit()
    return factory


def run(uow: Factory, *batch: Transfer, at: timedelta = timedelta()) -> list[R]:
    with uow() as w:
        results = w.ledger.create_transfers(list(batch), NOW + at)
        w.commit()
    return results


def balances(uow: Factory, account_id: str) -> tuple[int, int, int, int]:
    with uow() as w:
        (a,) = w.ledger.lookup_accounts([account_id])
    return a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted


# -- accounts -------------------------------------------------------------------------------
def test_accounts_are_created_once_and_compared_on_repeat(uow: Factory) -> None:
    with uow() as w:
        again = w.ledger.create_accounts([
            ACCOUNTS[0],
            Account(ALICE, "EURe", "cardholder_funds", AccountFlags.NONE),
            Account(ALICE, "GBPe", "cardholder_funds", AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
            Account("x", "EURe", "fees", AccountFlags(3)),
            Account("y", "EURe", "fees", credits_posted=5),
            Account("z", "", "fees"),
            Account("", "EURe", "fees"),
            Account("new", "EURe", "fees"),
            Account("new", "EURe", "suspense"),
        ])
        assert again == [A.EXISTS, A.EXISTS_WITH_DIFFERENT_FLAGS, A.EXISTS_WITH_DIFFERENT_LEDGER,
                         A.FLAGS_ARE_MUTUALLY_EXCLUSIVE, A.BALANCES_MUST_BE_ZERO,
                         A.LEDGER_MUST_NOT_BE_ZERO, A.ID_MUST_NOT_BE_ZERO, A.OK,
                         A.EXISTS_WITH_DIFFERENT_CODE]
        w.commit()
    with uow() as w:
        found = w.ledger.lookup_accounts(["new", "nope", ALICE])
    assert [a.id for a in found] == ["new", ALICE]
    assert found[1].flags is AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS


# -- plain transfers and idempotency --------------------------------------------------------
def test_a_transfer_moves_exact_amounts_and_a_repeat_changes_nothing(uow: Factory) -> None:
    big = 123_456_789 * EURE + 1  # beyond 64 bits: exact
    assert run(uow, deposit("d1", ALICE, big)) == [R.OK]
    assert run(uow, deposit("d1", ALICE, big)) == [R.EXISTS]
    assert balances(uow, ALICE) == (0, 0, 0, big)
    assert balances(uow, SAFES) == (0, big, 0, 0)
    assert run(uow, deposit("d1", ALICE, big + 1)) == [R.EXISTS_WITH_DIFFERENT_AMOUNT]
    assert run(uow, deposit("d1", BOB, big)) == [R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID]
    assert run(uow, Transfer("d1", SAFES, ALICE, big, "EURe", "other")) == [
        R.EXISTS_WITH_DIFFERENT_CODE]
    assert run(uow, deposit("d1", ALICE, big, F.PENDING)) == [R.EXISTS_WITH_DIFFERENT_FLAGS]
    assert balances(uow, ALICE) == (0, 0, 0, big)


def test_refusals(uow: Factory) -> None:
    with uow() as w:
        w.ledger.create_accounts([Account("gbp", "GBPe", "fees")])
        w.commit()
    assert run(uow, deposit("d1", ALICE, 10)) == [R.OK]
    assert run(
        uow,
        Transfer("t1", ALICE, PAYABLE, 11, "EURe", "spend"),           # more than Alice has
        Transfer("t2", ALICE, ALICE, 1, "EURe", "spend"),
        Transfer("t3", ALICE, "gbp", 1, "EURe", "spend"),
        Transfer("t4", ALICE, PAYABLE, 1, "GBPe", "spend"),
        Transfer("t5", ALICE, "nobody", 1, "EURe", "spend"),
        Transfer("t6", ALICE, PAYABLE, -1, "EURe", "spend"),
        Transfer("t7", ALICE, PAYABLE, 1, "EURe", "spend", timeout=5),
        Transfer("", ALICE, PAYABLE, 1, "EURe", "spend"),
        Transfer("t9", ALICE, PAYABLE, 1, "EURe", "spend", F.PENDING | F.POST_PENDING),
        Transfer("t10", ALICE, PAYABLE, 1, "EURe", ""),
    ) == [R.EXCEEDS_CREDITS, R.ACCOUNTS_MUST_BE_DIFFERENT, R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER,
          R.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS, R.CREDIT_ACCOUNT_NOT_FOUND,
          R.AMOUNT_MUST_NOT_BE_NEGATIVE, R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER,
          R.ID_MUST_NOT_BE_ZERO, R.FLAGS_ARE_MUTUALLY_EXCLUSIVE, R.CODE_MUST_NOT_BE_ZERO]
    assert balances(uow, ALICE) == (0, 0, 0, 10)
    # a refused transfer is not stored: the same id may be sent again once it can succeed
    assert run(uow, deposit("d2", ALICE, 1), Transfer("t1", ALICE, PAYABLE, 11, "EURe",
                                                      "spend")) == [R.OK, R.OK]


# -- two-phase transfers --------------------------------------------------------------------
def test_a_hold_reserves_and_a_partial_post_releases_the_rest(uow: Factory) -> None:
    run(uow, deposit("d1", ALICE, 100))
    assert run(uow, hold("h1", ALICE, 80), hold("h2", ALICE, 30)) == [R.OK, R.EXCEEDS_CREDITS]
    assert balances(uow, ALICE) == (80, 0, 0, 100)
    assert run(uow, post("p1", "h1", 81)) == [R.EXCEEDS_PENDING_TRANSFER_AMOUNT]
    assert run(uow, post("p1", "h1", 50)) == [R.OK]
    assert balances(uow, ALICE) == (0, 50, 0, 100)
    assert balances(uow, PAYABLE) == (0, 0, 0, 50)
    assert run(uow, post("p1", "h1", 50)) == [R.EXISTS]
    assert run(uow, post("p1", "h1", 40)) == [R.EXISTS_WITH_DIFFERENT_AMOUNT]
    assert run(uow, post("p2", "h1", 10)) == [R.PENDING_TRANSFER_ALREADY_POSTED]
    assert run(uow, void("v1", "h1")) == [R.PENDING_TRANSFER_ALREADY_POSTED]
    assert run(uow, post("p3", "p1")) == [R.PENDING_TRANSFER_NOT_PENDING]
    assert run(uow, post("p4", "nope")) == [R.PENDING_TRANSFER_NOT_FOUND]
    assert balances(uow, ALICE) == (0, 50, 0, 100)
    with uow() as w:
        (h1, p1) = w.ledger.lookup_transfers(["h1", "p1"])
    assert h1.status is PendingStatus.POSTED and h1.transfer.user_data == "payment-h1"
    assert p1.status is None and (p1.transfer.debit_account_id, p1.transfer.amount) == (ALICE, 50)


def test_post_of_amount_zero_takes_all_and_a_void_releases_all(uow: Factory) -> None:
    run(uow, deposit("d1", ALICE, 100))
    assert run(uow, hold("h1", ALICE, 60), hold("h2", ALICE, 40)) == [R.OK, R.OK]
    assert run(uow, post("p1", "h1"), void("v2", "h2")) == [R.OK, R.OK]
    assert balances(uow, ALICE) == (0, 60, 0, 100)
    assert run(uow, post("p1", "h1")) == [R.EXISTS]
    assert run(uow, post("p1", "h1", 60)) == [R.EXISTS]
    assert run(uow, post("p9", "h2")) == [R.PENDING_TRANSFER_ALREADY_VOIDED]
    run(uow, hold("h3", ALICE, 40))
    assert run(uow, Transfer("v3", amount=39, flags=F.VOID_PENDING, pending_id="h3")) == [
        R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT]
    assert run(uow, Transfer("v3", BOB, flags=F.VOID_PENDING, pending_id="h3")) == [
        R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID]
    assert run(uow, Transfer("v3", flags=F.VOID_PENDING, pending_id="v3")) == [
        R.PENDING_ID_MUST_BE_DIFFERENT]
    assert run(uow, Transfer("v3", ALICE, PAYABLE, 40, "EURe", "authorization",
                             F.VOID_PENDING, "h3")) == [R.OK]
    assert balances(uow, ALICE) == (0, 60, 0, 100)


def test_a_pending_and_its_post_in_one_batch(uow: Factory) -> None:
    run(uow, deposit("d1", ALICE, 100))
    assert run(uow, hold("h1", ALICE, 70), post("p1", "h1", 20), post("p2", "h1")) == [
        R.OK, R.OK, R.PENDING_TRANSFER_ALREADY_POSTED]
    assert balances(uow, ALICE) == (0, 20, 0, 100)


# -- linked chains --------------------------------------------------------------------------
def test_a_linked_chain_commits_all_or_nothing(uow: Factory) -> None:
    run(uow, deposit("d1", ALICE, 100))
    assert run(
        uow,
        hold("h1", ALICE, 60, flags=F.LINKED),
        Transfer("s1", ALICE, SUSPENSE, 50, "EURe", "spend"),  # fails: 60 held of 100
        deposit("d2", BOB, 5),                                  # not linked: its own
    ) == [R.LINKED_EVENT_FAILED, R.EXCEEDS_CREDITS, R.OK]
    assert balances(uow, ALICE) == (0, 0, 0, 100)
    assert run(uow, hold("h1", ALICE, 60, flags=F.LINKED),
               Transfer("s1", ALICE, SUSPENSE, 40, "EURe", "spend")) == [R.OK, R.OK]
    assert balances(uow, ALICE) == (60, 40, 0, 100)
    assert run(uow, deposit("d3", BOB, 1), deposit("d4", BOB, 1, F.LINKED)) == [
        R.OK, R.LINKED_EVENT_CHAIN_OPEN]
    assert balances(uow, BOB) == (0, 0, 0, 6)


# -- expiry ---------------------------------------------------------------------------------
def test_a_hold_expires_after_its_timeout(uow: Factory) -> None:
    run(uow, deposit("d1", ALICE, 100))
    run(uow, hold("h1", ALICE, 70, timeout=3600), hold("h2", ALICE, 30))
    with uow() as w:
        assert w.ledger.expire_pending(NOW + timedelta(seconds=3599)) == []
    assert run(uow, post("p1", "h1"), at=timedelta(hours=1)) == [R.PENDING_TRANSFER_EXPIRED]
    with uow() as w:
        assert w.ledger.expire_pending(NOW + timedelta(hours=2)) == ["h1"]
        w.commit()
    assert balances(uow, ALICE) == (30, 0, 0, 100)
    assert run(uow, post("p1", "h1")) == [R.PENDING_TRANSFER_EXPIRED]
    assert run(uow, void("v1", "h1")) == [R.PENDING_TRANSFER_EXPIRED]
    with uow() as w:
        assert w.ledger.expire_pending(NOW + timedelta(days=99)) == []
        (h1,) = w.ledger.lookup_transfers(["h1"])
    assert h1.status is PendingStatus.EXPIRED
    assert h1.expires_at == NOW + timedelta(hours=1)


# -- the unit of work -----------------------------------------------------------------------
def test_ledger_writes_commit_with_the_unit_of_work_only(uow: Factory) -> None:
    with uow() as w:
        assert w.ledger.create_transfers([deposit("d1", ALICE, 5)], NOW) == [R.OK]
    assert balances(uow, ALICE) == (0, 0, 0, 0)
    with uow() as w:
        w.ledger.create_transfers([deposit("d1", ALICE, 5)], NOW)
        with pytest.raises(RuntimeError), w.savepoint():
            w.ledger.create_transfers([deposit("d2", ALICE, 7)], NOW)
            raise RuntimeError("undo the inner one")
        w.commit()
    assert balances(uow, ALICE) == (0, 0, 0, 5)
    with uow() as w:
        assert [r.transfer.id for r in w.ledger.lookup_transfers(["d2", "d1"])] == ["d1"]
