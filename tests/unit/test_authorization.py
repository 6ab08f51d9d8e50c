"""The authorization decision and hold validity: examples for each rule, hypothesis for the
invariants stated in domain/authorization.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.authorization import (
    AccountSnapshot,
    Allowance,
    AuthorizationRequest,
    CardStatus,
    DeclineClass,
    DeclineReason,
    StatusChangeRefused,
    change_status,
    decide,
    hold_validity,
)
from domain.errors import CurrencyMismatch, InvalidAmount, NaiveTimestamp
from domain.money import Currency, Money

pytestmark = pytest.mark.unit

EURE = Currency("EURe", 18)
USDCE = Currency("USDCe", 6)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = 86_400


def eure(units: int) -> Money:
    return Money(units, EURE)


def snapshot(balance: int = 1000, holds: int = 0, *, status: CardStatus = CardStatus.ACTIVE,
             allowance: Allowance | None = None, blocked: frozenset[int] = frozenset(),
             velocity_limit: int | None = None, recent: int = 0) -> AccountSnapshot:
    return AccountSnapshot("card-1", status, eure(balance), eure(holds), allowance, blocked,
                           velocity_limit, recent)


def request(amount: int, *, mcc: int = 5411, partial: bool = False,
            unit: int = 1) -> AuthorizationRequest:
    return AuthorizationRequest("card-1", eure(amount), mcc, partial, unit)


def daily(limit: int, left: int | None = None, *, start: datetime = NOW) -> Allowance:
    return Allowance(limit if left is None else left, limit, limit, DAY, int(start.timestamp()))


# -- examples, one per rule ------------------------------------------------------------------------
def test_approves_in_full_within_balance_minus_holds() -> None:
    d = decide(request(600), snapshot(1000, holds=400), NOW)
    assert d.approved and not d.partial and d.approved_amount == eure(600)
    assert d.reason is None and d.decline_class is None


def test_declines_insufficient_funds_counting_open_holds() -> None:
    d = decide(request(601), snapshot(1000, holds=400), NOW)
    assert not d.approved and d.reason is DeclineReason.INSUFFICIENT_FUNDS
    assert d.decline_class is DeclineClass.SOFT and d.approved_amount == eure(0)


def test_declines_over_daily_limit_when_only_the_allowance_falls_short() -> None:
    d = decide(request(300), snapshot(1000, allowance=daily(500, left=200)), NOW)
    assert d.reason is DeclineReason.OVER_DAILY_LIMIT and d.decline_class is DeclineClass.SOFT


def test_the_allowance_refills_after_its_period() -> None:
    spent_yesterday = daily(500, left=0, start=NOW - timedelta(days=1, seconds=1))
    assert decide(request(500), snapshot(1000, allowance=spent_yesterday), NOW).approved
    assert decide(request(1), snapshot(1000, allowance=daily(500, left=0)), NOW).reason is \
        DeclineReason.OVER_DAILY_LIMIT


def test_partial_approval_only_when_allowed_and_in_whole_units() -> None:
    snap = snapshot(1055, holds=0)
    assert decide(request(2000), snap, NOW).reason is DeclineReason.INSUFFICIENT_FUNDS
    d = decide(request(2000, partial=True, unit=100), snap, NOW)
    assert d.approved and d.partial and d.approved_amount == eure(1000)
    none_left = decide(request(2000, partial=True, unit=100), snapshot(99), NOW)
    assert none_left.reason is DeclineReason.INSUFFICIENT_FUNDS


@pytest.mark.parametrize(("snap", "reason", "klass"), [
    (None, DeclineReason.UNKNOWN_CARD, DeclineClass.HARD),
    (snapshot(status=CardStatus.CLOSED, blocked=frozenset({5411}), recent=9, velocity_limit=1),
     DeclineReason.CARD_CLOSED, DeclineClass.HARD),
    (snapshot(status=CardStatus.FROZEN, blocked=frozenset({5411})),
     DeclineReason.CARD_FROZEN, DeclineClass.HARD),
    (snapshot(0, blocked=frozenset({5411}), velocity_limit=1, recent=1),
     DeclineReason.BLOCKED_MCC, DeclineClass.HARD),
    (snapshot(0, velocity_limit=3, recent=3), DeclineReason.VELOCITY, DeclineClass.FRAUD),
])
def test_precedence_names_the_first_failing_rule(snap: AccountSnapshot | None,
                                                 reason: DeclineReason,
                                                 klass: DeclineClass) -> None:
    d = decide(request(10), snap, NOW)
    assert (d.reason, d.decline_class, d.approved_amount) == (reason, klass, eure(0))


def test_velocity_allows_up_to_the_limit() -> None:
    assert decide(request(10), snapshot(velocity_limit=3, recent=2), NOW).approved


def test_a_request_in_another_currency_is_refused_not_compared() -> None:
    with pytest.raises(CurrencyMismatch):
        decide(AuthorizationRequest("card-1", Money(10, USDCE), 5411), snapshot(), NOW)


def test_requests_must_be_positive_with_a_real_mcc() -> None:
    with pytest.raises(InvalidAmount):
        request(0)
    with pytest.raises(InvalidAmount):
        request(10, mcc=10_000)
    with pytest.raises(InvalidAmount):
        request(10, unit=0)


def test_naive_now_is_refused() -> None:
    with pytest.raises(NaiveTimestamp):
        decide(request(1), snapshot(allowance=daily(5)), datetime(2026, 1, 1))


def test_closed_is_final() -> None:
    assert change_status(CardStatus.ACTIVE, CardStatus.FROZEN) is CardStatus.FROZEN
    assert change_status(CardStatus.FROZEN, CardStatus.ACTIVE) is CardStatus.ACTIVE
    assert change_status(CardStatus.FROZEN, CardStatus.CLOSED) is CardStatus.CLOSED
    with pytest.raises(StatusChangeRefused):
        change_status(CardStatus.CLOSED, CardStatus.ACTIVE)


# -- the Roles module's allowance arithmetic ----------------------------------------------------
def test_allowance_accrues_and_is_consumed_like_the_roles_module() -> None:
    start = int(NOW.timestamp())
    a = Allowance(balance=100, max_refill=500, refill=150, period=DAY, timestamp=start)
    assert a.accrued(start + DAY - 1) == a
    later = a.accrued(start + 2 * DAY + 5)
    assert (later.balance, later.timestamp) == (400, start + 2 * DAY)
    assert a.accrued(start + 9 * DAY).balance == 500  # capped at max_refill
    spent = a.consumed(300, start + 2 * DAY + 5)
    assert (spent.balance, spent.timestamp) == (100, start + 2 * DAY)
    assert a.resets_at(NOW) == NOW + timedelta(days=1)
    assert Allowance(5, 5, 0, 0, start).resets_at(NOW) is None


# -- hold validity --------------------------------------------------------------------------------
@pytest.mark.parametrize(("mcc", "days"), [
    (5411, 7), (3500, 7), (3501, 30), (3750, 30), (3999, 30), (4000, 7), (7011, 30),
    (7512, 30), (7513, 7), (0, 7),
])
def test_hold_validity(mcc: int, days: int) -> None:
    assert hold_validity(mcc) == timedelta(days=days)


# -- properties ------------------------------------------------------------------------------------
amounts = st.integers(min_value=0, max_value=10**24)
statuses = st.sampled_from(list(CardStatus))


@st.composite
def snapshots(draw: st.DrawFn) -> AccountSnapshot:
    limit = draw(amounts)
    allowance = draw(st.none() | st.builds(
        Allowance, balance=st.integers(0, limit), max_refill=st.just(limit),
        refill=st.just(limit), period=st.sampled_from([0, DAY]),
        timestamp=st.integers(int(NOW.timestamp()) - 3 * DAY, int(NOW.timestamp()))))
    limit_v = draw(st.none() | st.integers(0, 20))
    return AccountSnapshot(
        "card-1", draw(statuses), eure(draw(amounts)), eure(draw(amounts)), allowance,
        frozenset(draw(st.lists(st.integers(0, 9999), max_size=3))), limit_v,
        draw(st.integers(0, 25)))


@st.composite
def requests(draw: st.DrawFn) -> AuthorizationRequest:
    return AuthorizationRequest(
        "card-1", eure(draw(st.integers(1, 10**24))), draw(st.integers(0, 9999)),
        draw(st.booleans()), draw(st.sampled_from([1, 10**16, 10**18])))


@given(requests(), snapshots())
def test_never_approves_more_than_available_or_requested(req: AuthorizationRequest,
                                                         snap: AccountSnapshot) -> None:
    d = decide(req, snap, NOW)
    if d.approved:
        funds = snap.balance.units - snap.open_holds.units
        allowance = None if snap.allowance is None else snap.allowance.remaining(NOW)
        available = funds if allowance is None else min(funds, allowance)
        assert 0 < d.approved_amount.units <= min(available, req.amount.units)
        assert snap.status is CardStatus.ACTIVE and req.mcc not in snap.blocked_mccs
        if d.partial:
            assert req.allow_partial and d.approved_amount.units % req.partial_unit == 0
    else:
        assert d.approved_amount.units == 0 and d.decline_class is not None


@given(requests(), snapshots())
def test_unknown_frozen_or_closed_cards_are_always_declined(req: AuthorizationRequest,
                                                            snap: AccountSnapshot) -> None:
    assert decide(req, None, NOW).reason is DeclineReason.UNKNOWN_CARD
    d = decide(req, snap, NOW)
    if snap.status is CardStatus.CLOSED:
        assert d.reason is DeclineReason.CARD_CLOSED
    elif snap.status is CardStatus.FROZEN:
        assert d.reason is DeclineReason.CARD_FROZEN


@given(requests(), snapshots())
def test_a_soft_decline_means_the_amount_was_not_available(req: AuthorizationRequest,
                                                           snap: AccountSnapshot) -> None:
    d = decide(req, snap, NOW)
    if d.decline_class is DeclineClass.SOFT:
        assert snap.available(NOW) < req.amount
        if d.reason is DeclineReason.OVER_DAILY_LIMIT:
            left = snap.allowance_left(NOW)
            assert left is not None and left < snap.funds()
