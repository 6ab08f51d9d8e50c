"""The card network's effects, on the fakes and on PostgreSQL: decisions, Payment events and
ledger transfers.

Every test checks what an ops person or finance would check: the answer, the payment's events,
the cardholder's funds in the ledger, and that every ledger journal still balances.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine

from cardpay.handlers.card_network import (
    LATE,
    UNMATCHED_RETURN,
    CardNetworkEffects,
    ConflictingReturn,
    NotYetKnown,
    PastDeadline,
)
from cardpay.handlers.ports import BalanceMove, Card, ChainReading, UnitOfWork
from cardpay.postgres.uow import unit_of_work_factory
from domain.authorization import CardStatus, DeclineReason
from domain.ledger.chart import AccountKind, ChartOfAccounts
from domain.money import EUR, EURE, Money
from domain.network import (
    AmountType,
    AuthorizationAdvice,
    AuthorizationExpiry,
    AuthorizationRequest,
    AuthorizationReversal,
    BusinessMode,
    Clearing,
    FinancialAuthorization,
    ForcePost,
    IncrementalAuthorization,
    Merchant,
    Return,
    ReturnReversal,
    SettlementLine,
    SettlementReport,
)
from tests.fakes.storage import FakeDatabase

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SAFE = "0x" + "5a" * 20
TOKEN = "0x" + "e0" * 20
CHART = ChartOfAccounts("EURe")
SHOP = Merchant(name="Bakery", merchant_id="m1", country="DE", mcc="5411")
HOTEL = Merchant(name="Hotel", merchant_id="m2", country="DE", mcc="7011")
CENT = 10**16  # EURe base units in one euro cent
R = TypeVar("R")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def effects(clock: Clock) -> CardNetworkEffects:
    return CardNetworkEffects(deadline=timedelta(seconds=2), clock=clock)


class PostgresDatabase:
    """The PostgreSQL units of work behind the same `uow()` as the fake's."""

    def __init__(self, engine: Engine) -> None:
        self.uow = unit_of_work_factory(engine, None)


@pytest.fixture(params=[pytest.param("memory", marks=pytest.mark.unit),
                        pytest.param("postgres", marks=pytest.mark.integration)])
def db(request: pytest.FixtureRequest) -> FakeDatabase:
    return with_card(FakeDatabase() if request.param == "memory" else
                     PostgresDatabase(request.getfixturevalue("pg_engine")))


def with_card(db: Any) -> Any:
    """`card-1` on the Safe holding 100.00 EURe (also the sweep's tests)."""
    with db.uow() as uow:
        uow.cards.add(Card("card-1", SAFE, TOKEN, EURE),
                      ChainReading(10, "0x" + "10" * 32, 100 * 100 * CENT))
        uow.commit()
    return db


def run(db: FakeDatabase, step: Callable[[UnitOfWork], R]) -> R:
    with db.uow() as uow:
        out = step(uow)
        uow.commit()
    return out


def eur(cents: int) -> Money:
    return Money(cents, EUR)


def request(auth: str, cents: int, *, card: str = "card-1", merchant: Merchant = SHOP,
            partial: bool = False) -> AuthorizationRequest:
    return AuthorizationRequest(authorization_id=auth, card_id=card, amount=eur(cents),
                                merchant=merchant, network_time=T0,
                                partial_approval_supported=partial)


def authorize(db: FakeDatabase, effects: CardNetworkEffects, auth: str, cents: int,
              **kw: Any) -> Any:
    return run(db, lambda uow: effects.decide(uow, request(auth, cents, **kw), T0))


def apply(db: FakeDatabase, effects: CardNetworkEffects, message: Any) -> dict[str, Any]:
    return run(db, lambda uow: effects.apply(uow, message))


def funds(db: FakeDatabase) -> tuple[int, int, int]:
    """(available, pending, posted debits) of the cardholder's funds, in cents."""
    with db.uow() as uow:
        account, = uow.ledger.lookup_accounts([CHART.cardholder(SAFE).id])
    available = account.credits_posted - account.debits_posted - account.debits_pending
    return available // CENT, account.debits_pending // CENT, account.debits_posted // CENT


def account(db: FakeDatabase, kind: AccountKind) -> Any:
    with db.uow() as uow:
        found, = uow.ledger.lookup_accounts([CHART.account_id(kind)])
    return found


def exposure(db: FakeDatabase) -> Any:
    with db.uow() as uow:
        found, = uow.ledger.lookup_accounts([CHART.exposure(SAFE).id])
    return found


def events(db: FakeDatabase, payment_id: str) -> list[str]:
    with db.uow() as uow:
        return [type(e).__name__ for e in uow.events.load(payment_id)]


def assert_balanced(db: FakeDatabase) -> None:
    """Across the ledger, debits equal credits, pending and posted separately."""
    ids = [a.id for a in CHART.house_accounts()] + [
        CHART.cardholder(SAFE).id, CHART.safe_mirror(SAFE).id, CHART.exposure(SAFE).id]
    with db.uow() as uow:
        accounts = uow.ledger.lookup_accounts(ids)
    assert sum(a.debits_posted for a in accounts) == sum(a.credits_posted for a in accounts)
    assert sum(a.debits_pending for a in accounts) == sum(a.credits_pending for a in accounts)


# -- the decision ------------------------------------------------------------------------------
def test_an_approval_holds_the_amount_in_the_ledger_and_records_the_authorization(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    decision = authorize(db, effects, "a1", 850)
    assert decision.approved and decision.approved_amount == eur(850)
    assert events(db, "a1") == ["PaymentAuthorized"]
    assert funds(db) == (10_000 - 850, 850, 0)
    assert_balanced(db)


def test_the_second_authorization_sees_the_first_hold(db: FakeDatabase,
                                                      effects: CardNetworkEffects) -> None:
    assert authorize(db, effects, "a1", 9_000).approved
    second = authorize(db, effects, "a2", 1_500)
    assert not second.approved and second.reason is DeclineReason.INSUFFICIENT_FUNDS
    assert events(db, "a2") == ["AuthorizationDeclined"]
    assert funds(db) == (1_000, 9_000, 0)


def test_a_partial_approval_holds_what_is_left_when_the_network_allows_it(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    authorize(db, effects, "a1", 9_000)
    second = authorize(db, effects, "a2", 1_500, partial=True)
    assert second.approved and second.partial and second.approved_amount == eur(1_000)
    assert funds(db) == (0, 10_000, 0)


def test_unknown_and_frozen_cards_are_declined_and_hold_nothing(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    unknown = authorize(db, effects, "a1", 100, card="nope")
    assert unknown.reason is DeclineReason.UNKNOWN_CARD
    run(db, lambda uow: uow.cards.set_status("card-1", CardStatus.FROZEN))
    frozen = authorize(db, effects, "a2", 100)
    assert frozen.reason is DeclineReason.CARD_FROZEN
    assert events(db, "a1") == events(db, "a2") == ["AuthorizationDeclined"]
    assert funds(db)[1] == 0


def test_an_approval_past_the_deadline_is_recorded_late_and_holds_nothing(
        db: FakeDatabase) -> None:
    # the request arrived at T0 and its turn came at T0 + 1 s, within the 2 s deadline; the
    # decision took until T0 + 3 s
    times = iter([T0 + timedelta(seconds=1)])
    slow = CardNetworkEffects(deadline=timedelta(seconds=2),
                              clock=lambda: next(times, T0 + timedelta(seconds=3)))
    decision = run(db, lambda uow: slow.decide(uow, request("a1", 850), T0))
    assert decision.approved  # what was decided, for the record; the network stood in
    with db.uow() as uow:
        declined, = uow.events.load("a1")
    assert getattr(declined, "reason", None) == LATE
    assert funds(db)[1] == 0
    # the network's stand-in approval arrives as an advice and opens the hold
    apply(db, slow, AuthorizationAdvice(network_time=T0, authorization_id="a1",
                                        card_id="card-1", amount=eur(850),
                                        approved_amount=eur(850), merchant=SHOP,
                                        reason="stand_in"))
    assert funds(db)[1] == 850


def test_a_request_that_waited_past_the_deadline_is_not_decided(
        db: FakeDatabase, effects: CardNetworkEffects, clock: Clock) -> None:
    """Under overload a request may wait in the API's queue past the network's deadline: the
    network has stood in, so it is answered 503 without being decided, and nothing is
    recorded (the advice that follows opens the hold)."""
    clock.now = T0 + timedelta(seconds=2, milliseconds=1)  # arrived at T0
    with pytest.raises(PastDeadline, match=r"past the network's 2\.0 s deadline"):
        authorize(db, effects, "a1", 850)
    with db.uow() as uow:
        assert uow.events.load("a1") == []
    clock.now = T0 + timedelta(seconds=2)  # exactly at the deadline: still decided
    assert authorize(db, effects, "a2", 850).approved
    assert funds(db)[1] == 850  # a2's hold only: a1 held nothing


def test_money_into_the_safe_reaches_the_funds_at_the_next_decision(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    authorize(db, effects, "a1", 9_000)
    top_up(db, 50 * 100 * CENT, 11)
    assert authorize(db, effects, "a2", 5_000).approved  # 10.00 left + 50.00 topped up
    assert funds(db) == (1_000, 14_000, 0)
    assert_balanced(db)


def top_up(db: FakeDatabase, delta: int, block: int) -> None:
    """An indexed transfer into (or, negative, out of) the Safe."""
    with db.uow() as uow:
        uow.cards.apply_transfers([BalanceMove(SAFE, TOKEN, delta, block,
                                               "0x" + f"{block:064x}", 0)])
        uow.commit()


# -- asynchronous messages -----------------------------------------------------------------------
def test_a_final_clearing_for_less_posts_it_and_releases_the_rest(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    authorize(db, effects, "a1", 1_000)
    answer = apply(db, effects, Clearing(network_time=T0, clearing_id="c1",
                                         authorization_id="a1", card_id="card-1",
                                         amount=eur(800), final=True))
    assert answer["status"] == "cleared"
    assert funds(db) == (10_000 - 800, 0, 800)
    assert account(db, AccountKind.NETWORK_PAYABLE).credits_posted == 800 * CENT
    assert_balanced(db)


def test_multiple_clearings_keep_holding_what_is_not_cleared_yet(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    authorize(db, effects, "a1", 1_000)
    apply(db, effects, Clearing(network_time=T0, clearing_id="c1", authorization_id="a1",
                                card_id="card-1", amount=eur(300), final=False))
    assert funds(db) == (9_000, 700, 300)
    apply(db, effects, Clearing(network_time=T0, clearing_id="c2", authorization_id="a1",
                                card_id="card-1", amount=eur(500), final=True))
    assert funds(db) == (9_200, 0, 800)
    assert_balanced(db)


def test_an_over_clearing_takes_the_excess_from_the_funds_and_the_rest_from_exposure(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    authorize(db, effects, "a1", 1_000)
    apply(db, effects, Clearing(network_time=T0, clearing_id="c1", authorization_id="a1",
                                card_id="card-1", amount=eur(1_200), final=True))
    assert funds(db) == (8_800, 0, 1_200)
    # a force post bigger than what is left: the funds give what they have, the Safe's
    # exposure (suspense) the rest, and a person is told
    apply(db, effects, ForcePost(network_time=T0, clearing_id="f1", card_id="card-1",
                                 amount=eur(9_000), merchant=SHOP))
    assert funds(db) == (0, 0, 10_000)
    assert exposure(db).debits_posted == 200 * CENT
    with db.uow() as uow:
        reasons = [row.reason for row in uow.quarantine.list()]
    assert "funds_short" in reasons
    # the cardholder owes 2.00: a top-up of 5.00 leaves 3.00 to spend
    top_up(db, 5 * 100 * CENT, 11)
    assert not authorize(db, effects, "a2", 301).approved
    assert authorize(db, effects, "a3", 300).approved
    assert_balanced(db)


def test_a_return_pays_back_the_exposure_before_the_funds(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    apply(db, effects, ForcePost(network_time=T0, clearing_id="f1", card_id="card-1",
                                 amount=eur(12_000), merchant=SHOP))  # 20.00 beyond the funds
    assert exposure(db).debits_posted == 2_000 * CENT
    apply(db, effects, Return(network_time=T0, return_id="ret1", card_id="card-1",
                              amount=eur(12_000), merchant=SHOP, clearing_id="f1"))
    assert exposure(db).credits_posted == 2_000 * CENT  # settled first
    assert funds(db) == (10_000, 0, 10_000)  # back to what the Safe holds, not a cent more
    assert authorize(db, effects, "a2", 10_001).reason is DeclineReason.INSUFFICIENT_FUNDS
    assert_balanced(db)


def test_a_stand_in_increment_beyond_the_funds_is_held_against_exposure(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    authorize(db, effects, "a1", 6_000, merchant=HOTEL)
    apply(db, effects, IncrementalAuthorization(network_time=T0, increment_id="i1",
                                                authorization_id="a1", card_id="card-1",
                                                amount=eur(5_000)))
    assert exposure(db).debits_pending == 11_000 * CENT and funds(db)[1] == 0
    # the funds look untouched, but the Safe's 100.00 is more than committed: no approval
    assert authorize(db, effects, "a2", 100).reason is DeclineReason.INSUFFICIENT_FUNDS
    apply(db, effects, Clearing(network_time=T0, clearing_id="c1", authorization_id="a1",
                                card_id="card-1", amount=eur(11_000), final=True))
    assert exposure(db).debits_pending == 0 and exposure(db).debits_posted == 11_000 * CENT
    assert_balanced(db)


def test_the_same_authorization_delivered_again_gets_the_first_answer(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    first = authorize(db, effects, "a1", 9_000)
    again = authorize(db, effects, "a1", 9_000)  # another webhook id, same authorization
    assert again == first and funds(db) == (1_000, 9_000, 0)
    declined = authorize(db, effects, "a2", 5_000)
    top_up(db, 100 * 100 * CENT, 11)
    assert authorize(db, effects, "a2", 5_000) == declined  # decided once, with the old funds
    assert events(db, "a2") == ["AuthorizationDeclined"]


def test_the_networks_expiry_is_honoured_even_before_our_own_deadline(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    authorize(db, effects, "a1", 1_000)
    apply(db, effects, AuthorizationExpiry(network_time=T0 + timedelta(days=6),
                                           authorization_id="a1"))
    assert funds(db) == (10_000, 0, 0)
    assert events(db, "a1") == ["PaymentAuthorized", "AuthorizationExpired"]


def test_a_message_before_its_authorization_is_not_recorded_so_the_retry_works(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    reversal = AuthorizationReversal(network_time=T0, reversal_id="r1", authorization_id="a1",
                                     amount=eur(400), full=False)
    with pytest.raises(NotYetKnown) as later:
        apply(db, effects, reversal)
    assert later.value.code == "not_yet_known"  # the answer's `error`: not an outage
    authorize(db, effects, "a1", 1_000)
    apply(db, effects, reversal)
    assert funds(db) == (9_400, 600, 0)


def test_a_safe_that_drops_below_what_its_cards_committed_approves_nothing(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    authorize(db, effects, "a1", 8_000)
    top_up(db, -50 * 100 * CENT, 11)  # 50.00 left the Safe: it holds 50.00, 80.00 committed
    assert not authorize(db, effects, "a2", 1).approved
    with db.uow() as uow:
        reasons = [row.reason for row in uow.quarantine.list()]
    assert "safe_overcommitted" in reasons
    assert funds(db)[0] == 0  # the funds gave what was not committed, and no more
    assert_balanced(db)


def test_reversals_shrink_then_end_the_hold_and_expiry_releases_it(
        db: FakeDatabase, effects: CardNetworkEffects, clock: Clock) -> None:
    authorize(db, effects, "a1", 1_000)
    apply(db, effects, AuthorizationReversal(network_time=T0, reversal_id="r1",
                                             authorization_id="a1", amount=eur(400),
                                             full=False))
    assert funds(db) == (9_400, 600, 0)
    apply(db, effects, AuthorizationReversal(network_time=T0, reversal_id="r2",
                                             authorization_id="a1", amount=eur(600),
                                             full=True))
    assert funds(db) == (10_000, 0, 0)
    authorize(db, effects, "a2", 2_000, merchant=HOTEL)
    apply(db, effects, IncrementalAuthorization(network_time=T0, increment_id="i1",
                                                authorization_id="a2", card_id="card-1",
                                                amount=eur(500)))
    assert funds(db) == (7_500, 2_500, 0)
    clock.now = T0 + timedelta(days=31)  # a hotel's hold lasts 30 days
    apply(db, effects, AuthorizationExpiry(network_time=clock.now,
                                           authorization_id="a2"))
    assert funds(db) == (10_000, 0, 0)
    assert_balanced(db)


def test_a_clearing_before_its_authorization_is_parked_then_applied(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    parked = apply(db, effects, Clearing(network_time=T0, clearing_id="c1",
                                         authorization_id="a1", card_id="card-1",
                                         amount=eur(700), final=True))
    assert events(db, "a1") == ["ClearingParked"] and parked["status"] == "none"
    assert funds(db)[1:] == (0, 0)
    authorize(db, effects, "a1", 1_000)
    assert events(db, "a1")[1:] == ["PaymentAuthorized", "ClearingRecorded"]
    assert funds(db) == (9_300, 0, 700)
    assert_balanced(db)


def test_single_message_purchases_force_posts_and_returns_move_money_directly(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    apply(db, effects, FinancialAuthorization(network_time=T0, authorization_id="fa1",
                                              card_id="card-1", amount=eur(2_000),
                                              merchant=SHOP))
    apply(db, effects, ForcePost(network_time=T0, clearing_id="f1", card_id="card-1",
                                 amount=eur(1_000), merchant=SHOP))
    assert funds(db) == (7_000, 0, 3_000)
    apply(db, effects, Return(network_time=T0, return_id="ret1", card_id="card-1",
                              amount=eur(400), merchant=SHOP, clearing_id="f1"))
    assert funds(db) == (7_400, 0, 3_000)
    apply(db, effects, ReturnReversal(network_time=T0, return_reversal_id="rr1",
                                      return_id="ret1", card_id="card-1", amount=eur(400)))
    assert funds(db) == (7_000, 0, 3_400)
    assert events(db, "f1") == ["PaymentForcePosted", "ReturnRecorded", "ReturnReversed"]
    assert_balanced(db)


def test_a_return_no_payment_explains_goes_to_suspense_and_the_exceptions(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    answer = apply(db, effects, Return(network_time=T0, return_id="ret9", card_id="card-1",
                                       amount=eur(400), merchant=SHOP,
                                       authorization_id="never-seen"))
    assert answer["status"] == "suspense"
    assert account(db, AccountKind.SUSPENSE).credits_posted == 400 * CENT
    with db.uow() as uow:
        row, = uow.quarantine.list()
    assert row.reason == UNMATCHED_RETURN and row.payload["amount"] == 400 * CENT
    assert_balanced(db)


def test_an_unmatched_return_id_again_with_another_amount_is_refused_not_retried(
        db: FakeDatabase, effects: CardNetworkEffects) -> None:
    """schemathesis found it answered 503 (retry) for ever: the ledger holds the first one's
    transfer under the same id. The network contradicts itself: a DomainError (422, kept for
    a person), and the suspense holds the first amount only."""
    first = Return(network_time=T0, return_id="ret9", card_id="card-1", amount=eur(400),
                   merchant=SHOP)
    apply(db, effects, first)
    with pytest.raises(ConflictingReturn, match="ret9"):
        apply(db, effects, replace(first, amount=eur(500)))
    assert account(db, AccountKind.SUSPENSE).credits_posted == 400 * CENT
    assert apply(db, effects, first)["status"] == "suspense"  # the same one again: as before
    assert account(db, AccountKind.SUSPENSE).credits_posted == 400 * CENT


def test_a_repeated_message_changes_nothing(db: FakeDatabase,
                                            effects: CardNetworkEffects) -> None:
    authorize(db, effects, "a1", 1_000)
    clearing = Clearing(network_time=T0, clearing_id="c1", authorization_id="a1",
                        card_id="card-1", amount=eur(300), final=False)
    apply(db, effects, clearing)
    before = funds(db)
    again = apply(db, effects, clearing)
    assert again["status"] == "duplicate" and funds(db) == before
    assert events(db, "a1") == ["PaymentAuthorized", "ClearingRecorded"]


def test_a_settlement_report_is_kept_once(db: FakeDatabase,
                                          effects: CardNetworkEffects) -> None:
    line = SettlementLine(business_mode=BusinessMode.ISSUER, amount_type=AmountType.TOTAL,
                          count=2, credit_amount=eur(0), debit_amount=eur(1_500),
                          net_amount=eur(-1_500))
    report = SettlementReport(network_time=T0, report_id="vss1",
                              settlement_date=date(2026, 12, 1), currency=EUR,
                              funds_transfer_date=date(2026, 12, 2), lines=(line,))
    assert apply(db, effects, report)["status"] == "recorded"
    assert apply(db, effects, report)["status"] == "already_recorded"
    with db.uow() as uow:
        kept = uow.settlement_reports.get("vss1")
    assert kept is not None and kept["lines"][0]["net_amount"] == -1_500
