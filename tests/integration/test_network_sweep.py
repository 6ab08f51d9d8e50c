"""The network sweep, on the fakes and on PostgreSQL: clearings parked too long become one
exception, lapsed holds are released in the ledger AND expired on the Payment.

The clock is moved, not waited for: the effects and the sweep share it. Every test checks what
an ops person or finance would: the exceptions list, the payment's events, the cardholder's funds
in the ledger, and that every ledger journal still balances.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine

from cardpay.handlers.card_network import CardNetworkEffects, LedgerOutOfStep
from cardpay.handlers.network_timers import (
    EXPIRY_REFUSED,
    PARKED_REASON,
    NetworkSweep,
    SweepUnitOfWork,
    parked_key,
)
from cardpay.handlers.ports import Card, ChainReading, QuarantinedRow
from cardpay.postgres.uow import sweep_uow_factory
from domain.ledger.chart import AccountKind
from domain.ledger.model import PendingStatus, Transfer, TransferFlags
from domain.money import EURE
from domain.network import AuthorizationRequest, Clearing, Merchant
from tests.fakes.timers import FakeSweepDatabase

# the effects suite's card, Safe, clock and ledger checks: the sweep's tests read the same books
from tests.integration.test_card_network_effects import (
    CENT,
    CHART,
    HOTEL,
    SAFE,
    SHOP,
    T0,
    TOKEN,
    Clock,
    assert_balanced,
    eur,
    events,
    funds,
    with_card,
)

TIMEOUT = timedelta(hours=72)
R = TypeVar("R")


class PostgresDatabase:
    def __init__(self, engine: Engine) -> None:
        self.uow = sweep_uow_factory(engine, None)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def effects(clock: Clock) -> CardNetworkEffects:
    return CardNetworkEffects(deadline=timedelta(seconds=2), clock=clock)


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit),
                        pytest.param("postgres", marks=pytest.mark.integration)])
def db(request: pytest.FixtureRequest) -> Any:
    return with_card(FakeSweepDatabase() if request.param == "memory" else
                     PostgresDatabase(request.getfixturevalue("pg_engine")))


@pytest.fixture
def sweep(db: Any, effects: CardNetworkEffects, clock: Clock) -> NetworkSweep:
    return NetworkSweep(db.uow, effects, parked_timeout=TIMEOUT, clock=clock, batch_size=2)


def run(db: Any, step: Callable[[SweepUnitOfWork], R]) -> R:
    with db.uow() as uow:
        out = step(uow)
        uow.commit()
    return out


def authorize(db: Any, effects: CardNetworkEffects, auth: str, cents: int,
              merchant: Merchant = SHOP, *, now: datetime = T0) -> None:
    request = AuthorizationRequest(authorization_id=auth, card_id="card-1", amount=eur(cents),
                                   merchant=merchant, network_time=now)
    decision = run(db, lambda uow: effects.decide(uow, request, now))
    assert decision.approved


def clear(db: Any, effects: CardNetworkEffects, auth: str, clearing: str,
          cents: int) -> dict[str, Any]:
    return run(db, lambda uow: effects.apply(uow, Clearing(
        network_time=T0, clearing_id=clearing, authorization_id=auth, card_id="card-1",
        amount=eur(cents), final=True)))


def exceptions(db: Any, reason: str = PARKED_REASON) -> list[QuarantinedRow]:
    with db.uow() as uow:
        return [r for r in uow.quarantine.list("network") if r.reason == reason]


def hold_status(db: Any, payment_id: str) -> list[PendingStatus | None]:
    with db.uow() as uow:
        ids = [f"{payment_id}:1:hold"]
        return [r.status for r in uow.ledger.lookup_transfers(ids)]


# -- clearings parked before their authorization -----------------------------------------------
def test_a_clearing_parked_past_the_timeout_becomes_one_exception(
        db: Any, effects: CardNetworkEffects, sweep: NetworkSweep, clock: Clock) -> None:
    assert clear(db, effects, "p1", "c1", 700)["status"] == "none"  # parked
    clock.now = T0 + TIMEOUT - timedelta(seconds=1)
    assert sweep.run().exceptions_raised == [] and exceptions(db) == []
    clock.now = T0 + TIMEOUT
    assert sweep.run().exceptions_raised == ["p1"]
    clock.now = T0 + 2 * TIMEOUT
    again = sweep.run()
    assert again.exceptions_raised == [] and again.holds_expired == 0
    row, = exceptions(db)
    assert row.key == parked_key("p1") and row.resolved_at is None
    assert row.payload["payment_id"] == "p1" and row.payload["currency"] == "EURe"
    assert row.payload["total"] == 700 * CENT
    assert row.payload["parked_since"] == T0.isoformat()
    assert [c["clearing_id"] for c in row.payload["clearings"]] == ["c1"]
    assert events(db, "p1") == ["ClearingParked"]  # nothing moved: no money is invented


def test_a_second_parked_clearing_of_the_payment_is_in_its_one_exception(
        db: Any, effects: CardNetworkEffects, sweep: NetworkSweep, clock: Clock) -> None:
    clear(db, effects, "p1", "c1", 300)
    clock.now = T0 + timedelta(hours=1)
    clear(db, effects, "p1", "c2", 200)
    clock.now = T0 + TIMEOUT  # the oldest clearing decides
    assert sweep.run().exceptions_raised == ["p1"]
    row, = exceptions(db)
    assert row.payload["total"] == 500 * CENT
    assert [c["clearing_id"] for c in row.payload["clearings"]] == ["c1", "c2"]


def test_the_authorization_after_the_exception_applies_the_clearing_and_resolves_it(
        db: Any, effects: CardNetworkEffects, sweep: NetworkSweep, clock: Clock) -> None:
    clear(db, effects, "p1", "c1", 700)
    clock.now = T0 + TIMEOUT + timedelta(hours=1)
    sweep.run()
    authorize(db, effects, "p1", 1_000, now=clock.now)
    assert events(db, "p1")[1:] == ["PaymentAuthorized", "ClearingRecorded"]
    assert funds(db) == (9_300, 0, 700)  # applied as always: the exception changed nothing
    assert exceptions(db)[0].resolved_at is None  # until the sweep sees it
    result = sweep.run()
    assert result.exceptions_resolved == ["p1"] and result.exceptions_raised == []
    row, = exceptions(db)
    assert row.resolved_at is not None and "authorization arrived" in (row.resolution or "")
    assert sweep.run().exceptions_resolved == []
    assert_balanced(db)


def test_a_parked_clearing_applied_in_time_raises_nothing(
        db: Any, effects: CardNetworkEffects, sweep: NetworkSweep, clock: Clock) -> None:
    clear(db, effects, "p1", "c1", 700)
    assert sweep.run().parked_watched == 1
    clock.now = T0 + timedelta(hours=5)
    authorize(db, effects, "p1", 1_000, now=clock.now)
    sweep.run()
    clock.now = T0 + 10 * TIMEOUT
    result = sweep.run()
    assert result.exceptions_raised == [] and exceptions(db) == []


def test_many_parked_payments_are_swept_in_batches(
        db: Any, effects: CardNetworkEffects, sweep: NetworkSweep, clock: Clock) -> None:
    for n in range(5):  # the sweep's batch is 2
        clear(db, effects, f"p{n}", f"c{n}", 100 + n)
    clock.now = T0 + TIMEOUT
    result = sweep.run()
    assert sorted(result.exceptions_raised) == [f"p{n}" for n in range(5)]
    assert result.batches >= 3
    assert len(exceptions(db)) == 5
    assert sweep.run().exceptions_raised == []


# -- holds past their validity -----------------------------------------------------------------
def test_a_lapsed_hold_is_released_in_the_ledger_and_expired_on_the_payment(
        db: Any, effects: CardNetworkEffects, sweep: NetworkSweep, clock: Clock) -> None:
    authorize(db, effects, "a1", 1_000)
    assert funds(db) == (9_000, 1_000, 0)
    clock.now = T0 + timedelta(days=7)
    result = sweep.run()
    assert result.holds_expired == 1 and result.payments_expired == ["a1"]
    assert events(db, "a1") == ["PaymentAuthorized", "AuthorizationExpired"]
    assert hold_status(db, "a1") == [PendingStatus.EXPIRED]
    assert funds(db) == (10_000, 0, 0)  # available again
    again = sweep.run()
    assert again.holds_expired == 0 and again.payments_expired == []
    assert events(db, "a1") == ["PaymentAuthorized", "AuthorizationExpired"]
    assert_balanced(db)


def test_a_clearing_after_the_sweeps_expiry_is_accepted(
        db: Any, effects: CardNetworkEffects, sweep: NetworkSweep, clock: Clock) -> None:
    authorize(db, effects, "a1", 1_000)
    clock.now = T0 + timedelta(days=8)
    sweep.run()
    answer = clear(db, effects, "a1", "c1", 800)
    assert answer["status"] == "cleared"
    assert events(db, "a1")[-1] == "ClearingRecorded"
    assert funds(db) == (9_200, 0, 800)  # taken without a hold: the network cannot be refused
    assert_balanced(db)


def test_a_hold_not_yet_due_is_untouched(
        db: Any, effects: CardNetworkEffects, sweep: NetworkSweep, clock: Clock) -> None:
    authorize(db, effects, "a1", 1_000)
    authorize(db, effects, "h1", 2_000, merchant=HOTEL)  # a hotel's hold lasts 30 days
    clock.now = T0 + timedelta(days=7) - timedelta(seconds=1)
    assert sweep.run().holds_expired == 0
    assert funds(db) == (7_000, 3_000, 0)
    clock.now = T0 + timedelta(days=8)
    assert sweep.run().payments_expired == ["a1"]
    assert events(db, "h1") == ["PaymentAuthorized"]
    assert hold_status(db, "h1") == [PendingStatus.PENDING]
    assert funds(db) == (8_000, 2_000, 0)
    clock.now = T0 + timedelta(days=30)
    assert sweep.run().payments_expired == ["h1"]
    assert funds(db) == (10_000, 0, 0)
    assert_balanced(db)


def test_more_lapsed_holds_than_a_batch_are_all_released(
        db: Any, effects: CardNetworkEffects, sweep: NetworkSweep, clock: Clock) -> None:
    for n in range(5):
        authorize(db, effects, f"a{n}", 100)
    clock.now = T0 + timedelta(days=7)
    result = sweep.run()
    assert sorted(result.payments_expired) == [f"a{n}" for n in range(5)]
    assert result.holds_expired == 5 and funds(db) == (10_000, 0, 0)


def test_a_pending_transfer_of_no_payment_lapses_in_the_ledger_alone(
        db: Any, effects: CardNetworkEffects, sweep: NetworkSweep, clock: Clock) -> None:
    authorize(db, effects, "a1", 1_000)  # creates the accounts
    funds_id = CHART.cardholder(SAFE).id
    payable = CHART.account_id(AccountKind.NETWORK_PAYABLE)
    run(db, lambda uow: uow.ledger.create_transfers([Transfer(
        "manual-hold", funds_id, payable, 500 * CENT, CHART.ledger, "authorization_hold",
        TransferFlags.PENDING, timeout=3600)], T0))
    clock.now = T0 + timedelta(hours=2)
    result = sweep.run()
    assert result.holds_expired == 1 and result.payments_expired == []
    assert funds(db) == (9_000, 1_000, 0)  # a1's hold (7 days) still there
    assert exceptions(db, EXPIRY_REFUSED) == []


def test_a_payment_that_refuses_the_expiry_still_lapses_and_is_shown(
        db: Any, effects: CardNetworkEffects, sweep: NetworkSweep, clock: Clock) -> None:
    """A ledger hold whose timeout is earlier than the payment's `expires_at` (a hand-made
    inconsistency): the ledger's timeout wins, and a person is told."""
    authorize(db, effects, "a1", 1_000)
    funds_id = CHART.cardholder(SAFE).id
    payable = CHART.account_id(AccountKind.NETWORK_PAYABLE)
    run(db, lambda uow: uow.ledger.create_transfers([Transfer(
        "odd-hold", funds_id, payable, 500 * CENT, CHART.ledger, "authorization_hold",
        TransferFlags.PENDING, timeout=3600, user_data="a1")], T0))
    clock.now = T0 + timedelta(hours=2)
    result = sweep.run()
    assert result.holds_expired == 1 and result.payments_expired == []
    assert events(db, "a1") == ["PaymentAuthorized"]
    row, = exceptions(db, EXPIRY_REFUSED)
    assert row.payload["transfer_id"] == "odd-hold" and row.payload["payment_id"] == "a1"
    assert funds(db) == (9_000, 1_000, 0)
    assert sweep.run().holds_expired == 0 and len(exceptions(db, EXPIRY_REFUSED)) == 1


@pytest.mark.integration
def test_a_sweep_racing_the_clearings_of_its_payments_leaves_consistent_books(
        pg_engine: Engine) -> None:
    """On PostgreSQL, clearings for lapsed holds arrive while a sweep expires those holds: each
    payment is cleared exactly once, whichever came first, nothing stays held, and the ledger
    balances (the sweep locks the payments a message would lock)."""
    clock = Clock()
    effects = CardNetworkEffects(deadline=timedelta(seconds=2), clock=clock)
    db = PostgresDatabase(pg_engine)
    with db.uow() as uow:
        uow.cards.add(Card("card-1", SAFE, TOKEN, EURE),
                      ChainReading(10, "0x" + "10" * 32, 100 * 100 * CENT))
        uow.commit()
    payments = [f"a{n}" for n in range(12)]
    for payment in payments:
        authorize(db, effects, payment, 100)
    clock.now = T0 + timedelta(days=7, seconds=1)
    sweep = NetworkSweep(db.uow, effects, parked_timeout=TIMEOUT, clock=clock, batch_size=3)
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def sweeping() -> None:
        start.wait()
        try:
            sweep.run()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=sweeping)
    thread.start()
    start.wait()
    answers = [clear(db, effects, p, f"c-{p}", 60)["status"] for p in reversed(payments)]
    thread.join(60)
    assert errors == [] and answers == ["cleared"] * len(payments)
    sweep.run()
    for payment in payments:
        assert events(db, payment)[-1] == "ClearingRecorded"
    assert funds(db) == (10_000 - 60 * len(payments), 0, 60 * len(payments))
    assert_balanced(db)


class FlakyEffects(CardNetworkEffects):
    """The ledger is out of step for some payments: their expiry fails every time."""

    def __init__(self, clock: Clock, failing: set[str]) -> None:
        super().__init__(deadline=timedelta(seconds=2), clock=clock)
        self.failing = failing

    def _run(self, uow: Any, command: Any, *args: Any, **kw: Any) -> dict[str, Any]:
        if command.payment_id in self.failing and type(command).__name__ == "ExpireAuthorization":
            raise LedgerOutOfStep(f"payment {command.payment_id}: out of step (test)")
        return super()._run(uow, command, *args, **kw)


def test_holds_that_cannot_be_expired_do_not_block_the_others(db: Any, clock: Clock) -> None:
    effects = FlakyEffects(clock, failing={"a0", "a1", "a2"})
    for payment in ("a0", "a1", "a2", "b0", "b1"):  # the failing ones come first
        authorize(db, effects, payment, 100)
    clock.now = T0 + timedelta(days=7)
    sweep = NetworkSweep(db.uow, effects, parked_timeout=TIMEOUT, clock=clock, batch_size=2)
    result = sweep.run()
    assert sorted(result.payments_expired) == ["b0", "b1"] and result.holds_expired == 2
    assert [f.split(":")[0] for f in result.failures] == ["a0", "a1", "a2"]
    assert funds(db) == (9_700, 300, 0)  # the failing holds stay, for the next sweep
    effects.failing.clear()
    assert sorted(sweep.run().payments_expired) == ["a0", "a1", "a2"]
    assert funds(db) == (10_000, 0, 0)
