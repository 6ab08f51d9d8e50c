"""The Payment aggregate's network side, message type by message type, with the hard cases:
parked clearings, late clearings, over-clearing, partial reversal, returns, replays, reordering."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from domain import commands as c
from domain import events as e
from domain.errors import (
    AuthorizationClosed,
    AuthorizationNotExpired,
    AuthorizationNotFound,
    DomainError,
    InvalidTransition,
    NaiveTimestamp,
    ReturnExceedsClearing,
)
from domain.money import Currency, Money
from domain.payment import Network, Payment, Status, authorization_expires_at, handle

pytestmark = pytest.mark.unit

EURE = Currency("EURe", 18)
USDCE = Currency("USDCe", 6)
AUTH_ID = "auth-1"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
EXPIRES = T0 + timedelta(days=7)
_ids = itertools.count(1)


def eure(major: str) -> Money:
    return Money.parse(major, EURE)


def _base(message_id: str | None = None, at: datetime = T0) -> dict[str, object]:
    return {"command_id": message_id or f"msg-{next(_ids)}", "payment_id": AUTH_ID, "at": at}


def approve(amount: str = "25", requested: str | None = None, **kw: object) -> c.AuthorizePayment:
    return c.AuthorizePayment(
        **_base(**kw),  # type: ignore[arg-type]
        account="0xsafe", amount=eure(amount), merchant="Hotel", mcc="7011", expires_at=EXPIRES,
        requested=eure(requested) if requested else None,
    )


def decline(amount: str = "25", **kw: object) -> c.DeclineAuthorization:
    return c.DeclineAuthorization(
        **_base(**kw),  # type: ignore[arg-type]
        account="0xsafe", amount=eure(amount), merchant="Hotel", mcc="7011",
        reason="insufficient_funds",
    )


def advice(amount: str = "25", approved: bool = True, **kw: object) -> c.AdviseAuthorization:
    return c.AdviseAuthorization(
        **_base(**kw),  # type: ignore[arg-type]
        account="0xsafe", amount=eure(amount), merchant="Fuel", mcc="5542", expires_at=EXPIRES,
        approved=approved, reason="stand-in",
    )


def increase(amount: str, expires_at: datetime | None = None,
             **kw: object) -> c.IncreaseAuthorization:
    return c.IncreaseAuthorization(**_base(**kw), amount=eure(amount),  # type: ignore[arg-type]
                                   expires_at=expires_at)


def reverse(amount: str | None = None, **kw: object) -> c.ReverseAuthorization:
    return c.ReverseAuthorization(**_base(**kw),  # type: ignore[arg-type]
                                  amount=eure(amount) if amount else None)


def expire(at: datetime = EXPIRES, **kw: object) -> c.ExpireAuthorization:
    return c.ExpireAuthorization(**_base(at=at, **kw))  # type: ignore[arg-type]


def clearing(amount: str = "25", final: bool = True, **kw: object) -> c.RecordClearing:
    return c.RecordClearing(**_base(**kw), amount=eure(amount),  # type: ignore[arg-type]
                            final=final)


def force_post(amount: str = "40", **kw: object) -> c.ForcePost:
    return c.ForcePost(**_base(**kw), account="0xsafe",  # type: ignore[arg-type]
                       amount=eure(amount), merchant="Airline", mcc="3000")


def financial(amount: str = "40", **kw: object) -> c.RecordFinancialAuthorization:
    return c.RecordFinancialAuthorization(**_base(**kw),  # type: ignore[arg-type]
                                          account="0xsafe", amount=eure(amount),
                                          merchant="ATM", mcc="6011")


def return_(amount: str, **kw: object) -> c.RecordReturn:
    return c.RecordReturn(**_base(**kw), amount=eure(amount))  # type: ignore[arg-type]


def reverse_return(amount: str, **kw: object) -> c.ReverseReturn:
    return c.ReverseReturn(**_base(**kw), amount=eure(amount))  # type: ignore[arg-type]


def run(*commands: c.Command) -> Payment:
    payment = Payment(AUTH_ID)
    for cmd in commands:
        handle(payment, cmd)
    return payment


def new_events(payment: Payment, cmd: c.Command) -> list[e.DomainEvent]:
    before = len(payment.pending_events)
    handle(payment, cmd)
    return payment.pending_events[before:]


def figures(payment: Payment) -> dict[str, str | None]:
    n = payment.network
    return {
        "authorized": _s(n.authorized), "held": _s(n.held), "cleared": _s(n.cleared),
        "reversed": _s(n.reversed), "released": _s(n.released), "returned": _s(n.returned),
        "over_cleared": _s(n.over_cleared),
    }


def _s(amount: Money | None) -> str | None:
    return None if amount is None else f"{amount.to_decimal():f}".rstrip("0").rstrip(".")


def assert_conserved(payment: Payment) -> None:
    """Everything put on hold is still held, posted, reversed or released: nothing else."""
    n = payment.network
    assert n.authorized_units == (n.held_units + n.posted_units + n.reversed_units
                                  + n.released_units)
    assert n.held_units >= 0


# -- authorization, decline, advice ----------------------------------------------------------------
def test_an_approval_opens_the_hold_on_both_sides() -> None:
    payment = run(approve("25"))
    assert payment.status is Status.AUTHORIZED and payment.authorized == eure("25")
    assert payment.network.status is Network.AUTHORIZED
    assert payment.network.expires_at == EXPIRES
    assert (payment.network.merchant, payment.network.mcc) == ("Hotel", "7011")
    assert figures(payment)["held"] == "25"


def test_a_partial_approval_holds_what_was_approved() -> None:
    payment = run(approve("60", requested="100"))
    assert figures(payment)["held"] == "60"
    [event] = payment.pending_events
    assert isinstance(event, e.PaymentAuthorized) and event.amount == eure("60")


def test_an_approval_above_the_request_is_refused() -> None:
    with pytest.raises(InvalidTransition, match="exceeds requested"):
        run(approve("100", requested="60"))


def test_a_decline_is_recorded_and_holds_nothing() -> None:
    payment = run(decline("25"))
    [event] = payment.pending_events
    assert isinstance(event, e.AuthorizationDeclined)
    assert event.reason == "insufficient_funds" and event.held == eure("0")
    assert payment.network.status is Network.DECLINED
    assert payment.status is Status.NEW  # the chain side never saw it
    assert figures(payment)["held"] == "0"


def test_a_declined_payment_is_not_approved_afterwards() -> None:
    payment = run(decline())
    with pytest.raises(InvalidTransition, match="network side is declined"):
        handle(payment, approve())


def test_an_advice_after_our_decline_opens_the_hold() -> None:
    """We declined (or were too slow), the network stood in and approved."""
    payment = run(decline("25"))
    [event] = new_events(payment, advice("25"))
    assert isinstance(event, e.AuthorizationAdvised) and event.approved
    assert event.held == eure("25") and event.released == eure("0")
    assert payment.network.status is Network.AUTHORIZED
    assert figures(payment)["held"] == "25"


def test_an_advice_with_nothing_before_it_opens_the_hold() -> None:
    payment = run(advice("30"))
    assert payment.network.status is Network.AUTHORIZED
    assert figures(payment)["authorized"] == "30"


def test_a_declining_advice_is_recorded() -> None:
    payment = run(advice("30", approved=False))
    assert payment.network.status is Network.DECLINED
    assert figures(payment)["held"] == "0"


def test_a_declining_advice_on_our_approval_releases_the_hold() -> None:
    """We approved after the network's deadline; it had already declined in our place."""
    payment = run(approve("25"))
    [event] = new_events(payment, advice("25", approved=False))
    assert isinstance(event, e.AuthorizationAdvised) and event.released == eure("25")
    assert payment.network.status is Network.DECLINED
    assert figures(payment)["held"] == "0"
    assert_conserved(payment)
    with pytest.raises(AuthorizationClosed):  # the hold ended once; it does not reopen
        handle(payment, advice("25"))


def test_an_advice_resizes_the_open_hold_fuel_pump() -> None:
    """Auth 1 → advice 15 → clearing 15 (the pump's final amount)."""
    payment = run(approve("1"))
    [event] = new_events(payment, advice("15"))
    assert isinstance(event, e.AuthorizationAdvised) and event.held == eure("15")
    handle(payment, clearing("15"))
    assert figures(payment) == {
        "authorized": "15", "held": "0", "cleared": "15", "reversed": "0", "released": "0",
        "returned": "0", "over_cleared": "0"}
    assert_conserved(payment)


def test_an_advice_resizes_only_what_is_still_held() -> None:
    """Advised 120 after 30 was cleared from a 100 hold: 90 stays held. Advised 20 (less than
    was already cleared): nothing stays held, and what was cleared stands."""
    payment = run(approve("100"), clearing("30", final=False))
    [event] = new_events(payment, advice("120"))
    assert isinstance(event, e.AuthorizationAdvised) and event.held == eure("90")
    assert figures(payment)["authorized"] == "120"
    handle(payment, advice("20"))
    assert figures(payment)["held"] == "0" and figures(payment)["authorized"] == "30"
    assert_conserved(payment)


def test_an_advice_after_the_hold_ended_is_refused() -> None:
    payment = run(approve(), clearing())
    with pytest.raises(AuthorizationClosed):
        handle(payment, advice())


@pytest.mark.parametrize(("mcc", "days"), [
    ("5411", 7), ("3500", 7), ("3501", 30), ("3999", 30), ("4000", 7), ("7011", 30),
    ("7512", 30), ("7513", 7), ("", 7)])
def test_the_validity_of_an_authorization_depends_on_its_mcc(mcc: str, days: int) -> None:
    assert authorization_expires_at(T0, mcc) == T0 + timedelta(days=days)


# -- incremental authorization ---------------------------------------------------------------------
def test_an_increment_raises_the_hold_and_extends_the_expiry() -> None:
    later = EXPIRES + timedelta(days=3)
    payment = run(approve("100"))
    [event] = new_events(payment, increase("50", expires_at=later))
    assert isinstance(event, e.AuthorizationIncreased)
    assert (event.amount, event.authorized, event.held) == (eure("50"), eure("150"), eure("150"))
    assert payment.network.expires_at == later


def test_an_increment_never_shortens_the_expiry() -> None:
    payment = run(approve("100"), increase("50", expires_at=EXPIRES - timedelta(days=1)))
    assert payment.network.expires_at == EXPIRES
    payment = run(approve("100"), increase("50"))
    assert payment.network.expires_at == EXPIRES


def test_a_declined_increment_leaves_the_hold() -> None:
    payment = run(approve("100"))
    [event] = new_events(payment, decline("50"))
    assert isinstance(event, e.AuthorizationDeclined) and event.held == eure("100")
    assert payment.network.status is Network.AUTHORIZED
    assert figures(payment)["held"] == "100"


def test_an_increment_before_its_authorization_is_not_found() -> None:
    with pytest.raises(AuthorizationNotFound):
        run(increase("50"))


@pytest.mark.parametrize("ended", [clearing, reverse, expire, decline],
                         ids=["cleared", "reversed", "expired", "declined"])
def test_an_increment_after_the_hold_ended_is_refused(ended: Callable[[], c.Command]) -> None:
    payment = Payment(AUTH_ID)
    if ended is not decline:
        handle(payment, approve())
    handle(payment, ended())
    with pytest.raises(AuthorizationClosed):
        handle(payment, increase("5"))


# -- reversal ----------------------------------------------------------------------------------------
def test_a_partial_reversal_reduces_the_hold() -> None:
    payment = run(approve("100"))
    [event] = new_events(payment, reverse("30"))
    assert isinstance(event, e.AuthorizationReversed)
    assert (event.amount, event.released, event.held, event.full) == (
        eure("30"), eure("30"), eure("70"), False)
    assert payment.network.status is Network.AUTHORIZED
    assert figures(payment)["reversed"] == "30"
    assert_conserved(payment)


def test_a_full_reversal_ends_the_hold() -> None:
    payment = run(approve("100"), reverse("30"))
    [event] = new_events(payment, reverse())
    assert isinstance(event, e.AuthorizationReversed)
    assert (event.amount, event.released, event.held, event.full) == (
        eure("70"), eure("70"), eure("0"), True)
    assert payment.network.status is Network.REVERSED
    assert_conserved(payment)


def test_a_reversal_above_the_hold_is_capped_and_ends_it() -> None:
    payment = run(approve("100"))
    [event] = new_events(payment, reverse("130"))
    assert isinstance(event, e.AuthorizationReversed)
    assert (event.amount, event.released, event.full) == (eure("130"), eure("100"), True)
    assert payment.network.status is Network.REVERSED


def test_a_reversal_before_its_authorization_is_not_found() -> None:
    payment = Payment(AUTH_ID)
    with pytest.raises(AuthorizationNotFound):
        handle(payment, reverse())
    assert payment.pending_events == [] and payment.version == 0


@pytest.mark.parametrize("ended", [clearing, expire], ids=["cleared", "expired"])
def test_a_reversal_after_the_hold_ended_releases_nothing(ended: Callable[[], c.Command]) -> None:
    payment = run(approve("100"), ended())
    status = payment.network.status
    [event] = new_events(payment, reverse("40"))
    assert isinstance(event, e.AuthorizationReversed) and event.released == eure("0")
    assert payment.network.status is status
    assert_conserved(payment)


def test_a_clearing_after_a_full_reversal_is_accepted_without_a_hold() -> None:
    payment = run(approve("100"), reverse())
    [event] = new_events(payment, clearing("80"))
    assert isinstance(event, e.ClearingRecorded)
    assert (event.basis, event.from_hold, event.beyond_hold) == (
        "reversed", eure("0"), eure("80"))
    assert payment.network.status is Network.CLEARED
    assert figures(payment)["cleared"] == "80"


# -- expiry ------------------------------------------------------------------------------------------
def test_expiry_releases_what_is_still_held() -> None:
    payment = run(approve("100"), clearing("30", final=False))
    [event] = new_events(payment, expire())
    assert isinstance(event, e.AuthorizationExpired) and event.released == eure("70")
    assert payment.network.status is Network.EXPIRED
    assert figures(payment)["held"] == "0"
    assert_conserved(payment)


def test_expiry_before_expires_at_is_refused() -> None:
    payment = run(approve())
    with pytest.raises(AuthorizationNotExpired):
        handle(payment, expire(at=EXPIRES - timedelta(seconds=1)))


def test_an_increment_moves_the_expiry() -> None:
    payment = run(approve(), increase("5", expires_at=EXPIRES + timedelta(days=1)))
    with pytest.raises(AuthorizationNotExpired):
        handle(payment, expire(at=EXPIRES))
    handle(payment, expire(at=EXPIRES + timedelta(days=1)))
    assert payment.network.status is Network.EXPIRED


@pytest.mark.parametrize("ended", [clearing, reverse, expire], ids=["cleared", "reversed",
                                                                    "expired"])
def test_expiry_after_the_hold_ended_is_a_no_op(ended: Callable[[], c.Command]) -> None:
    payment = run(approve(), ended())
    version = payment.version
    assert new_events(payment, expire(at=EXPIRES + timedelta(days=30))) == []
    assert payment.version == version


def test_expiry_of_a_declined_authorization_is_a_no_op() -> None:
    payment = run(decline())
    assert new_events(payment, expire()) == []


def test_expiry_before_the_authorization_is_not_found() -> None:
    with pytest.raises(AuthorizationNotFound):
        run(expire())


def test_a_clearing_after_expiry_is_accepted_for_the_handler_to_re_hold() -> None:
    payment = run(approve("100"), expire())
    [event] = new_events(payment, clearing("100"))
    assert isinstance(event, e.ClearingRecorded)
    assert (event.basis, event.beyond_hold, event.from_hold, event.released) == (
        "expired", eure("100"), eure("0"), eure("0"))
    assert payment.network.status is Network.CLEARED
    assert figures(payment)["cleared"] == "100"
    assert_conserved(payment)


# -- clearing ----------------------------------------------------------------------------------------
def test_a_final_clearing_for_the_whole_amount_posts_the_hold() -> None:
    payment = run(approve("25"))
    [event] = new_events(payment, clearing("25"))
    assert isinstance(event, e.ClearingRecorded)
    assert (event.basis, event.from_hold, event.beyond_hold, event.released, event.held) == (
        "hold", eure("25"), eure("0"), eure("0"), eure("0"))
    assert event.clearing_id == event.causation_id
    assert payment.network.status is Network.CLEARED
    assert payment.status is Status.AUTHORIZED  # the chain side moves by its own commands


def test_a_partial_final_clearing_releases_the_rest() -> None:
    payment = run(approve("100"))
    [event] = new_events(payment, clearing("80"))
    assert isinstance(event, e.ClearingRecorded)
    assert (event.from_hold, event.released, event.held) == (eure("80"), eure("20"), eure("0"))
    assert_conserved(payment)


def test_multiple_clearings_against_one_authorization() -> None:
    """Auth 20 → clearing 17.50 → clearing 2 (final): 0.50 released at the end."""
    payment = run(approve("20"))
    [first] = new_events(payment, clearing("17.50", final=False))
    assert isinstance(first, e.ClearingRecorded)
    assert (first.from_hold, first.released, first.held) == (eure("17.5"), eure("0"),
                                                            eure("2.5"))
    assert payment.network.status is Network.AUTHORIZED
    [last] = new_events(payment, clearing("2"))
    assert isinstance(last, e.ClearingRecorded)
    assert (last.from_hold, last.released, last.held) == (eure("2"), eure("0.5"), eure("0"))
    assert figures(payment)["cleared"] == "19.5"
    assert payment.network.status is Network.CLEARED
    assert_conserved(payment)


def test_an_over_authorization_clearing_is_accepted_and_records_the_excess() -> None:
    """A restaurant tip: authorized 50, cleared 57.50."""
    payment = run(approve("50"))
    [event] = new_events(payment, clearing("57.50"))
    assert isinstance(event, e.ClearingRecorded)
    assert (event.from_hold, event.beyond_hold) == (eure("50"), eure("7.5"))
    assert figures(payment)["over_cleared"] == "7.5"
    assert payment.network.cleared_without_hold == eure("7.5")
    assert_conserved(payment)


def test_non_final_clearings_beyond_the_hold_are_over_cleared() -> None:
    payment = run(approve("10"), clearing("8", final=False), clearing("5", final=False))
    assert figures(payment)["over_cleared"] == "3"
    assert figures(payment)["held"] == "0"
    assert payment.network.status is Network.AUTHORIZED


def test_a_second_final_clearing_is_accepted_without_a_hold() -> None:
    payment = run(approve("10"), clearing("10"))
    [event] = new_events(payment, clearing("4"))
    assert isinstance(event, e.ClearingRecorded) and event.basis == "cleared"
    assert figures(payment)["cleared"] == "14"


def test_a_clearing_in_another_currency_is_refused() -> None:
    payment = run(approve())
    with pytest.raises(InvalidTransition, match="USDCe"):
        handle(payment, c.RecordClearing(**_base(), amount=Money(1, USDCE)))  # type: ignore[arg-type]


# -- clearing before its authorization ---------------------------------------------------------------
def test_a_clearing_before_its_authorization_is_parked() -> None:
    at = T0 + timedelta(hours=1)
    payment = run(clearing("20", message_id="clr-1", at=at))
    [event] = payment.pending_events
    assert isinstance(event, e.ClearingParked) and event.amount == eure("20")
    assert payment.network.status is Network.NONE
    assert payment.parked_since() == at
    assert figures(payment)["cleared"] is None


def test_a_parked_clearing_is_applied_when_its_authorization_arrives() -> None:
    payment = run(clearing("20", message_id="clr-1"))
    events = new_events(payment, approve("25", message_id="auth-msg"))
    assert [type(ev) for ev in events] == [e.PaymentAuthorized, e.ClearingRecorded]
    cleared = events[1]
    assert isinstance(cleared, e.ClearingRecorded)
    assert (cleared.clearing_id, cleared.causation_id) == ("clr-1", "auth-msg")
    assert (cleared.from_hold, cleared.released, cleared.basis) == (eure("20"), eure("5"), "hold")
    assert payment.parked_since() is None
    assert payment.network.status is Network.CLEARED
    assert_conserved(payment)
    # The parked clearing's id stays known: its retry changes nothing.
    assert new_events(payment, clearing("20", message_id="clr-1")) == []


def test_several_parked_clearings_apply_in_arrival_order() -> None:
    payment = run(clearing("5", final=False, message_id="clr-1", at=T0),
                  clearing("3", final=True, message_id="clr-2", at=T0 + timedelta(minutes=1)))
    assert payment.parked_since() == T0
    events = new_events(payment, advice("10"))
    assert [getattr(ev, "clearing_id", None) for ev in events] == [None, "clr-1", "clr-2"]
    assert figures(payment) == {
        "authorized": "10", "held": "0", "cleared": "8", "reversed": "0", "released": "2",
        "returned": "0", "over_cleared": "0"}


def test_a_parked_clearing_meets_a_decline_as_cleared_without_hold() -> None:
    payment = run(clearing("20"))
    events = new_events(payment, decline("20"))
    assert [type(ev) for ev in events] == [e.AuthorizationDeclined, e.ClearingRecorded]
    cleared = events[1]
    assert isinstance(cleared, e.ClearingRecorded)
    assert (cleared.basis, cleared.beyond_hold) == ("declined", eure("20"))


def test_a_parked_clearing_in_another_currency_than_its_authorization_is_refused() -> None:
    payment = run(clearing("20"))
    cmd = c.AuthorizePayment(**_base(), account="0xsafe",  # type: ignore[arg-type]
                             amount=Money(20_000_000, USDCE), merchant="Hotel", mcc="7011",
                             expires_at=EXPIRES)
    with pytest.raises(InvalidTransition, match="EURe"):
        handle(payment, cmd)
    assert payment.parked_since() == T0


def test_rehydrating_keeps_parked_clearings() -> None:
    payment = run(clearing("20", message_id="clr-1"))
    again = Payment.rehydrate(AUTH_ID, list(payment.pending_events))
    assert again.parked_since() == T0
    handle(again, approve("20"))
    assert again.network.status is Network.CLEARED


# -- force post, financial authorization ------------------------------------------------------------
@pytest.mark.parametrize(("make", "event_type"), [
    (force_post, e.PaymentForcePosted), (financial, e.FinancialAuthorizationRecorded)])
def test_a_message_without_authorization_creates_a_cleared_payment(
    make: Callable[[], c.Command], event_type: type[e.DomainEvent]
) -> None:
    payment = run(make())
    [event] = payment.pending_events
    assert type(event) is event_type
    assert payment.network.status is Network.CLEARED
    assert figures(payment)["cleared"] == "40" and figures(payment)["held"] == "0"
    assert payment.network.cleared_without_hold == eure("40")
    assert payment.network.account == "0xsafe"
    handle(payment, return_("40"))  # a cleared payment takes returns
    assert figures(payment)["returned"] == "40"


@pytest.mark.parametrize("make", [force_post, financial])
@pytest.mark.parametrize("before", [approve, decline, clearing],
                         ids=["approved", "declined", "parked"])
def test_force_post_and_financial_start_their_own_payment(
    make: Callable[[], c.Command], before: Callable[[], c.Command]
) -> None:
    payment = run(before())
    with pytest.raises(InvalidTransition, match="exists"):
        handle(payment, make())


# -- returns -----------------------------------------------------------------------------------------
def test_returns_never_exceed_what_was_cleared_net_of_earlier_returns() -> None:
    payment = run(approve("100"), clearing("80"))
    [event] = new_events(payment, return_("30"))
    assert isinstance(event, e.ReturnRecorded) and event.returned == eure("30")
    handle(payment, return_("50"))
    with pytest.raises(ReturnExceedsClearing):
        handle(payment, return_("0.000000000000000001"))
    assert figures(payment)["returned"] == "80"


def test_a_return_above_what_was_cleared_is_refused() -> None:
    payment = run(approve("100"), clearing("80"))
    with pytest.raises(ReturnExceedsClearing):
        handle(payment, return_("80.000000000000000001"))
    assert figures(payment)["returned"] == "0"


def test_a_return_before_any_clearing_is_refused() -> None:
    payment = run(approve("100"))
    with pytest.raises(ReturnExceedsClearing):
        handle(payment, return_("10"))
    with pytest.raises(ReturnExceedsClearing):  # nothing known at all
        run(return_("10"))


def test_a_return_reversal_undoes_at_most_what_was_returned() -> None:
    payment = run(approve("100"), clearing("80"), return_("30"))
    with pytest.raises(ReturnExceedsClearing):
        handle(payment, reverse_return("31"))
    [event] = new_events(payment, reverse_return("30"))
    assert isinstance(event, e.ReturnReversed) and event.returned == eure("0")
    handle(payment, return_("80"))  # returnable again
    assert figures(payment)["returned"] == "80"


def test_returns_count_every_clearing() -> None:
    payment = run(approve("10"), clearing("6", final=False), expire(), clearing("7"))
    handle(payment, return_("13"))
    assert payment.network.returnable == eure("0")


# -- replays -----------------------------------------------------------------------------------------
SCENARIOS: dict[str, tuple[list[Callable[[str], c.Command]], Callable[[str], c.Command]]] = {
    "approve": ([], lambda m: approve(message_id=m)),
    "decline": ([], lambda m: decline(message_id=m)),
    "advice": ([lambda m: decline(message_id=m)], lambda m: advice(message_id=m)),
    "increase": ([lambda m: approve(message_id=m)], lambda m: increase("5", message_id=m)),
    "partial reversal": ([lambda m: approve(message_id=m)], lambda m: reverse("5", message_id=m)),
    "full reversal": ([lambda m: approve(message_id=m)], lambda m: reverse(message_id=m)),
    "expiry": ([lambda m: approve(message_id=m)], lambda m: expire(message_id=m)),
    "clearing": ([lambda m: approve(message_id=m)],
                 lambda m: clearing("5", final=False, message_id=m)),
    "parked clearing": ([], lambda m: clearing("5", message_id=m)),
    "force post": ([], lambda m: force_post(message_id=m)),
    "financial": ([], lambda m: financial(message_id=m)),
    "return": ([lambda m: approve(message_id=m), lambda m: clearing(message_id=m)],
               lambda m: return_("5", message_id=m)),
    "return reversal": ([lambda m: approve(message_id=m), lambda m: clearing(message_id=m),
                         lambda m: return_("10", message_id=m)],
                        lambda m: reverse_return("5", message_id=m)),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_same_message_twice_records_it_once(name: str) -> None:
    setup, make = SCENARIOS[name]
    payment = run(*(step(f"setup-{i}") for i, step in enumerate(setup)))
    first = new_events(payment, make("dup"))
    assert first != []
    again = Payment.rehydrate(AUTH_ID, list(payment.pending_events))
    for replayed in (payment, again):  # live and after a reload from the store
        version, figures_before = replayed.version, figures(replayed)
        assert new_events(replayed, make("dup")) == []
        assert replayed.version == version and figures(replayed) == figures_before


def test_a_repeated_id_with_another_body_is_still_a_no_op() -> None:
    """The aggregate keys on the message id; a changed body under the same id is refused
    (409) at the API, which keeps the bodies."""
    payment = run(approve("100"), reverse("10", message_id="rev-1"))
    assert new_events(payment, reverse("50", message_id="rev-1")) == []
    assert figures(payment)["held"] == "90"


def test_chain_commands_are_not_deduplicated_by_the_network_ids() -> None:
    """The chain side keeps its own rules: a repeated chain command is judged by state."""
    payment = run(approve("25", message_id="m1"))
    spend = c.ConfirmSpend(command_id="m1", payment_id=AUTH_ID, at=T0, account="0xsafe",
                           amount=eure("25"), evidence=e.ChainEvidence(
                               chain_id=100, block_number=1, block_hash="0x1", tx_hash="0x2",
                               log_index=0))
    handle(payment, spend)
    assert payment.status is Status.HELD


# -- reordering: what each out-of-order pair does ------------------------------------------------------
def test_every_refusal_is_a_domain_error_that_changes_nothing() -> None:
    cases: list[tuple[list[c.Command], c.Command, type[DomainError]]] = [
        ([], reverse(), AuthorizationNotFound),
        ([], increase("1"), AuthorizationNotFound),
        ([], expire(), AuthorizationNotFound),
        ([], return_("1"), ReturnExceedsClearing),
        ([], reverse_return("1"), ReturnExceedsClearing),
        ([approve()], expire(at=T0), AuthorizationNotExpired),
        ([approve(), reverse()], increase("1"), AuthorizationClosed),
        ([approve(), expire()], advice(), AuthorizationClosed),
        ([approve()], approve(), InvalidTransition),
    ]
    for setup, cmd, error in cases:
        payment = run(*setup)
        version, fig = payment.version, figures(payment)
        with pytest.raises(error):
            handle(payment, cmd)
        assert (payment.version, figures(payment)) == (version, fig)
    # A clearing is never refused, not even on a force-posted payment.
    payment = run(force_post("40"))
    handle(payment, clearing("1"))
    assert figures(payment)["cleared"] == "41"


def test_naive_times_are_refused_before_they_are_compared() -> None:
    payment = run(approve())
    naive = datetime(2024, 6, 1, 12, 0)
    with pytest.raises(NaiveTimestamp):
        handle(payment, expire(at=naive))
    with pytest.raises(NaiveTimestamp):
        handle(payment, increase("1", expires_at=naive))
    assert payment.version == 1


@pytest.mark.parametrize("zero", [
    lambda: approve("0"), lambda: decline("0"), lambda: advice("0"), lambda: clearing("0"),
    lambda: force_post("0"), lambda: financial("0"), lambda: return_("0"),
    lambda: reverse_return("0"),
])
def test_network_amounts_must_be_positive(zero: Callable[[], c.Command]) -> None:
    with pytest.raises(InvalidTransition, match="positive"):
        run(zero())


def test_zero_increments_and_reversals_are_refused() -> None:
    payment = run(approve())
    for cmd in (increase("0"), reverse("0")):
        with pytest.raises(InvalidTransition, match="positive"):
            handle(payment, cmd)


# -- the whole story, reloaded -----------------------------------------------------------------------
def test_a_hotel_stay_rehydrates_to_the_same_state() -> None:
    payment = run(
        clearing("12", final=False, message_id="early-clr"),
        approve("300", requested="300"),
        increase("150", expires_at=T0 + timedelta(days=30)),
        reverse("50"),
        clearing("200", final=False),
        clearing("210"),
        return_("20"),
        reverse_return("5"),
    )
    assert figures(payment) == {
        "authorized": "450", "held": "0", "cleared": "422", "reversed": "50", "released": "0",
        "returned": "15", "over_cleared": "22"}
    assert_conserved(payment)
    again = Payment.rehydrate(AUTH_ID, list(payment.pending_events))
    assert again.network == payment.network
    assert again.version == payment.version == 9
