"""The Payment aggregate's lifecycle, example by example."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from domain import commands as c
from domain import events as e
from domain.errors import DomainError, InvalidTransition, RefundExceedsCapture
from domain.events import ChainEvidence
from domain.money import EUR, Currency, Money
from domain.payment import Hold, Payment, Status, handle

pytestmark = pytest.mark.unit

EURE = Currency("EURe", 18)
PAYMENT_ID = "pay-1"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)


def eure(major: str) -> Money:
    return Money.parse(major, EURE)


def evidence(log_index: int = 0) -> ChainEvidence:
    return ChainEvidence(
        chain_id=100,
        block_number=35_000_000 + log_index,
        block_hash="0x" + "ab" * 32,
        tx_hash="0x" + f"{log_index:064x}",
        log_index=log_index,
    )


def _base(minutes: int = 0, correlation_id: str | None = None) -> dict[str, object]:
    return {
        "command_id": f"cmd-{next(_ids)}",
        "payment_id": PAYMENT_ID,
        "at": T0 + timedelta(minutes=minutes),
        "correlation_id": correlation_id,
    }


def authorize(amount: Money | None = None, **kw: object) -> c.AuthorizePayment:
    return c.AuthorizePayment(
        **_base(**kw),  # type: ignore[arg-type]
        account="0xsafe",
        amount=amount or eure("25"),
        merchant="Bakery",
        mcc="5462",
        expires_at=T0 + timedelta(days=7),
    )


def confirm_spend(
    amount: Money | None = None, proof: ChainEvidence | None = None, **kw: object
) -> c.ConfirmSpend:
    return c.ConfirmSpend(
        **_base(**kw),  # type: ignore[arg-type]
        account="0xsafe",
        amount=amount or eure("25"),
        evidence=proof or evidence(1),
    )


def clear(amount: Money | None = None, **kw: object) -> c.ClearPayment:
    return c.ClearPayment(**_base(**kw), amount=amount or eure("25"))  # type: ignore[arg-type]


def reverse(**kw: object) -> c.ReversePayment:
    return c.ReversePayment(**_base(**kw), reason="expired")  # type: ignore[arg-type]


def request_refund(refund_id: str, amount: Money, **kw: object) -> c.RequestRefund:
    return c.RequestRefund(
        **_base(**kw),  # type: ignore[arg-type]
        refund_id=refund_id,
        amount=amount,
        reason="merchant credit",
    )


TX_A = "0x" + "cd" * 32
TX_B = "0x" + "ce" * 32


def submit_refund(refund_id: str, tx_hash: str = TX_A, **kw: object) -> c.RecordRefundSubmission:
    return c.RecordRefundSubmission(
        **_base(**kw),  # type: ignore[arg-type]
        refund_id=refund_id,
        tx_hash=tx_hash,
    )


def confirm_refund(
    refund_id: str, amount: Money, proof: ChainEvidence | None = None, **kw: object
) -> c.ConfirmRefund:
    return c.ConfirmRefund(
        **_base(**kw),  # type: ignore[arg-type]
        refund_id=refund_id,
        amount=amount,
        evidence=proof or evidence(7),
    )


def retract_spend(proof: ChainEvidence | None = None, **kw: object) -> c.RetractSpend:
    return c.RetractSpend(
        **_base(**kw),  # type: ignore[arg-type]
        evidence=proof or evidence(1),
        reason="reorg",
    )


def retract_refund(
    refund_id: str, proof: ChainEvidence | None = None, **kw: object
) -> c.RetractRefund:
    return c.RetractRefund(
        **_base(**kw),  # type: ignore[arg-type]
        refund_id=refund_id,
        evidence=proof or evidence(7),
        reason="reorg",
    )


def settle(**kw: object) -> c.SettlePayment:
    return c.SettlePayment(**_base(**kw), batch_id="2024-05-02-EUR")  # type: ignore[arg-type]


def snapshot(payment: Payment) -> tuple[object, ...]:
    """Everything a command may change, in comparable form."""
    return (
        payment.version,
        payment.status,
        payment.hold,
        payment.account,
        payment.authorized,
        payment.spent,
        payment.cleared,
        payment.spend_evidence,
        {k: (r.amount, r.tx_hashes, r.confirmed, r.evidence) for k, r in payment.refunds.items()},
        len(payment.pending_events),
    )


def network_cleared(amount: str = "25") -> Payment:
    """Held, cleared by the network's final clearing, and the chain side cleared for it."""
    payment = held(amount)
    payment.record_clearing(c.RecordClearing(**_base(), amount=eure(amount)))  # type: ignore[arg-type]
    payment.clear(clear(eure(amount)))
    return payment


def held(amount: str = "25") -> Payment:
    payment = Payment(PAYMENT_ID)
    payment.authorize(authorize(eure(amount)))
    payment.confirm_spend(confirm_spend(eure(amount)))
    return payment


def cleared(amount: str = "25") -> Payment:
    payment = held(amount)
    payment.clear(clear(eure(amount)))
    return payment


# -- the happy path --------------------------------------------------------------------------------
def test_authorize_confirm_clear_settle() -> None:
    payment = Payment(PAYMENT_ID)
    assert (payment.status, payment.hold, payment.version) == (Status.NEW, Hold.NONE, 0)

    payment.authorize(authorize(eure("25"), minutes=0))
    assert (payment.status, payment.hold) == (Status.AUTHORIZED, Hold.NONE)
    assert payment.authorized == eure("25")
    assert payment.account == "0xsafe"
    assert payment.spent is None

    payment.confirm_spend(confirm_spend(eure("25"), minutes=1))
    assert (payment.status, payment.hold) == (Status.HELD, Hold.PENDING)
    assert payment.spent == eure("25")
    assert payment.refunded == Money.zero(EURE)
    assert payment.refundable == eure("25")

    payment.clear(clear(eure("25"), minutes=2))
    assert (payment.status, payment.hold) == (Status.CLEARED, Hold.POSTED)
    assert payment.cleared == eure("25")

    payment.settle(settle(minutes=3))
    assert (payment.status, payment.hold) == (Status.SETTLED, Hold.POSTED)

    assert [type(ev) for ev in payment.pending_events] == [
        e.PaymentAuthorized,
        e.PaymentSpent,
        e.PaymentCleared,
        e.PaymentSettled,
    ]
    assert payment.version == 4


def test_partial_spend_and_clearing_below_the_authorization() -> None:
    payment = Payment(PAYMENT_ID)
    payment.authorize(authorize(eure("100")))
    payment.confirm_spend(confirm_spend(eure("60")))
    cmd = clear(eure("55.5"))
    payment.clear(cmd)
    assert payment.authorized == eure("100")
    assert payment.spent == eure("60")
    assert payment.cleared == eure("55.5")
    assert payment.hold is Hold.POSTED
    # The 4.50 spent but not cleared goes back to the cardholder, in the same command.
    cleared_event, difference = payment.pending_events[-2:]
    assert isinstance(cleared_event, e.PaymentCleared)
    assert isinstance(difference, e.RefundRequested)
    assert difference.refund_id == f"{cmd.command_id}:difference"
    assert difference.amount == eure("4.5")
    assert difference.causation_id == cmd.command_id
    assert (cleared_event.version, difference.version) == (3, 4)
    assert payment.version == 4
    assert payment.committed_refunds == eure("4.5")
    assert payment.refunded == Money.zero(EURE)
    assert payment.refundable == eure("55.5") == payment.cleared


def test_clearing_the_whole_spend_requests_no_refund() -> None:
    payment = held("25")
    payment.clear(clear(eure("25")))
    assert [type(ev) for ev in payment.pending_events] == [
        e.PaymentAuthorized, e.PaymentSpent, e.PaymentCleared]
    assert payment.refunds == {}


def test_clearing_more_than_was_spent_leaves_the_shortfall_to_the_saga() -> None:
    """The network's amount cannot be refused: the payment clears for it, refunds nothing, and
    the saga collects the rest (an incremental spend) or raises it (a finance exception)."""
    payment = Payment(PAYMENT_ID)
    payment.authorize(authorize(eure("100")))
    payment.confirm_spend(confirm_spend(eure("60")))
    payment.clear(clear(eure("75")))
    assert [type(ev) for ev in payment.pending_events][-1] is e.PaymentCleared
    assert (payment.status, payment.cleared, payment.refundable) == (
        Status.CLEARED, eure("75"), eure("60"))
    payment.confirm_spend(confirm_spend(eure("15"), evidence(2)))  # the incremental spend
    assert payment.spent == eure("75") and payment.status is Status.CLEARED
    assert payment.committed_refunds == Money.zero(EURE)


def test_a_clearing_before_the_spend_landed_clears_and_the_spend_then_counts() -> None:
    payment = Payment(PAYMENT_ID)
    payment.authorize(authorize(eure("100")))
    payment.clear(clear(eure("80")))
    assert (payment.status, payment.spent, payment.refunds) == (Status.CLEARED, None, {})
    payment.confirm_spend(confirm_spend(eure("100")))
    assert payment.spent == eure("100") and payment.rests_on(evidence(1))


def test_clearing_counts_refunds_already_requested() -> None:
    payment = held("25")
    payment.request_refund(request_refund("early", eure("10")))
    cmd = clear(eure("12"))
    payment.clear(cmd)
    assert payment.refunds[f"{cmd.command_id}:difference"].amount == eure("3")
    assert payment.committed_refunds == eure("13")
    assert payment.refundable == eure("12") == payment.cleared


def test_clearing_exactly_what_is_left_requests_no_difference() -> None:
    payment = held("25")
    payment.request_refund(request_refund("early", eure("10")))
    payment.clear(clear(eure("15")))
    assert set(payment.refunds) == {"early"}
    assert payment.refundable == eure("15")


def test_spend_above_the_authorization_is_rejected() -> None:
    payment = Payment(PAYMENT_ID)
    payment.authorize(authorize(eure("25")))
    with pytest.raises(InvalidTransition):
        payment.confirm_spend(confirm_spend(Money(eure("25").units + 1, EURE)))
    assert payment.status is Status.AUTHORIZED


def test_handle_dispatches_every_command() -> None:
    payment = Payment(PAYMENT_ID)
    for cmd in [
        authorize(),
        confirm_spend(proof=evidence(1)),
        retract_spend(evidence(1)),
        confirm_spend(proof=evidence(2)),
        request_refund("r1", eure("5")),
        submit_refund("r1"),
        confirm_refund("r1", eure("5"), evidence(7)),
        retract_refund("r1", evidence(7)),
        confirm_refund("r1", eure("5"), evidence(8)),
        clear(eure("20")),
        settle(),
    ]:
        handle(payment, cmd)
    assert payment.status is Status.SETTLED
    assert payment.refunded == eure("5")
    assert payment.version == 11
    assert [type(ev) for ev in payment.pending_events] == [
        e.PaymentAuthorized, e.PaymentSpent, e.SpendRetracted, e.PaymentSpent,
        e.RefundRequested, e.RefundSubmitted, e.PaymentRefunded, e.RefundRetracted,
        e.PaymentRefunded, e.PaymentCleared, e.PaymentSettled,
    ]
    with pytest.raises(InvalidTransition):
        handle(payment, c.Command(**_base()))  # type: ignore[arg-type]


# -- chain first (observer mode) -----------------------------------------------------------------
def test_chain_first_payment_starts_with_the_spend() -> None:
    payment = Payment(PAYMENT_ID)
    payment.confirm_spend(confirm_spend(eure("12.34")))
    assert (payment.status, payment.hold) == (Status.HELD, Hold.PENDING)
    assert payment.authorized is None
    assert payment.spent == eure("12.34")
    assert payment.version == 1

    payment.clear(clear(eure("12.34")))
    payment.settle(settle())
    assert (payment.status, payment.hold) == (Status.SETTLED, Hold.POSTED)


def test_a_chain_first_payment_cannot_be_authorized_afterwards() -> None:
    payment = Payment(PAYMENT_ID)
    payment.confirm_spend(confirm_spend())
    with pytest.raises(InvalidTransition):
        payment.authorize(authorize())


# -- reversal -------------------------------------------------------------------------------------
def test_reversal_voids_a_pending_hold_and_refunds_the_spend() -> None:
    payment = held("25")
    cmd = reverse(correlation_id="network-msg-4")
    payment.reverse(cmd)
    assert (payment.status, payment.hold) == (Status.REVERSED, Hold.VOIDED)
    reversed_event, refund = payment.pending_events[-2:]
    assert isinstance(reversed_event, e.PaymentReversed)
    assert reversed_event.reason == "expired"
    assert isinstance(refund, e.RefundRequested)
    assert refund.refund_id == f"{cmd.command_id}:reversal"
    assert refund.amount == eure("25")
    assert (refund.causation_id, refund.correlation_id) == (cmd.command_id, "network-msg-4")
    assert (reversed_event.version, refund.version) == (3, 4)
    assert payment.committed_refunds == eure("25")
    assert payment.refunded == Money.zero(EURE)
    assert payment.refundable == Money.zero(EURE)


def test_reversal_refunds_only_what_is_still_refundable() -> None:
    payment = held("25")
    payment.request_refund(request_refund("r1", eure("10")))
    cmd = reverse()
    payment.reverse(cmd)
    assert payment.refunds[f"{cmd.command_id}:reversal"].amount == eure("15")
    assert payment.committed_refunds == eure("25")


def test_reversal_with_everything_already_refunded_requests_no_refund() -> None:
    payment = held("25")
    payment.request_refund(request_refund("r1", eure("25")))
    payment.reverse(reverse())
    assert isinstance(payment.pending_events[-1], e.PaymentReversed)
    assert set(payment.refunds) == {"r1"}
    assert (payment.status, payment.hold) == (Status.REVERSED, Hold.VOIDED)


def test_reversal_before_the_spend_has_no_hold_to_void_and_nothing_to_refund() -> None:
    payment = Payment(PAYMENT_ID)
    payment.authorize(authorize())
    payment.reverse(reverse())
    assert (payment.status, payment.hold) == (Status.REVERSED, Hold.NONE)
    assert [type(ev) for ev in payment.pending_events] == [e.PaymentAuthorized, e.PaymentReversed]
    assert payment.refunds == {}
    assert payment.committed_refunds is None


@pytest.mark.parametrize("make", [lambda: Payment(PAYMENT_ID), cleared], ids=["new", "cleared"])
def test_reversal_needs_an_unresolved_authorization(make: Callable[[], Payment]) -> None:
    payment = make()
    before = snapshot(payment)
    with pytest.raises(InvalidTransition):
        payment.reverse(reverse())
    assert snapshot(payment) == before


def test_a_posted_hold_is_never_voided() -> None:
    payment = cleared()
    with pytest.raises(InvalidTransition):
        payment.reverse(reverse())
    assert payment.hold is Hold.POSTED


# -- refunds --------------------------------------------------------------------------------------
def test_refund_request_submission_confirmation() -> None:
    payment = cleared("25")

    payment.request_refund(request_refund("r1", eure("10")))
    assert payment.committed_refunds == eure("10")
    assert payment.refunded == Money.zero(EURE)
    assert payment.refundable == eure("15")

    payment.record_refund_submission(submit_refund("r1"))
    assert payment.refunds["r1"].tx_hashes == (TX_A,)
    assert payment.refunded == Money.zero(EURE)

    payment.confirm_refund(confirm_refund("r1", eure("10")))
    assert payment.refunded == eure("10")
    assert payment.committed_refunds == eure("10")
    assert payment.refundable == eure("15")
    assert [type(ev) for ev in payment.pending_events[-3:]] == [
        e.RefundRequested,
        e.RefundSubmitted,
        e.PaymentRefunded,
    ]
    assert payment.status is Status.CLEARED


def test_refund_seen_on_chain_before_its_submission_was_recorded() -> None:
    payment = cleared()
    payment.request_refund(request_refund("r1", eure("1")))
    payment.confirm_refund(confirm_refund("r1", eure("1")))
    assert payment.refunded == eure("1")
    with pytest.raises(InvalidTransition):
        payment.record_refund_submission(submit_refund("r1"))


def test_refunds_before_clearing_and_after_settlement() -> None:
    payment = held("25")
    payment.request_refund(request_refund("difference", eure("5")))
    payment.clear(clear(eure("20")))
    payment.settle(settle())
    payment.request_refund(request_refund("merchant", eure("20")))
    payment.confirm_refund(confirm_refund("merchant", eure("20")))
    payment.confirm_refund(confirm_refund("difference", eure("5")))
    assert payment.refunded == eure("25")
    assert payment.refundable == Money.zero(EURE)


def test_refund_exceeding_what_was_spent() -> None:
    payment = cleared("25")
    with pytest.raises(RefundExceedsCapture):
        payment.request_refund(request_refund("r1", Money(eure("25").units + 1, EURE)))

    payment.request_refund(request_refund("r1", eure("20")))
    before = snapshot(payment)
    # In-flight refunds count: 20 requested leaves 5, whether or not it was confirmed yet.
    with pytest.raises(RefundExceedsCapture):
        payment.request_refund(request_refund("r2", eure("5.000000000000000001")))
    assert snapshot(payment) == before

    payment.request_refund(request_refund("r2", eure("5")))
    assert payment.refundable == Money.zero(EURE)
    with pytest.raises(RefundExceedsCapture):
        payment.request_refund(request_refund("r3", Money(1, EURE)))


def test_refund_exceeds_capture_is_an_invalid_transition() -> None:
    assert issubclass(RefundExceedsCapture, InvalidTransition)
    assert issubclass(InvalidTransition, DomainError)


@pytest.mark.parametrize(
    "bad",
    [
        lambda p: p.request_refund(request_refund("r1", eure("1"))),  # duplicate id
        lambda p: p.record_refund_submission(submit_refund("unknown")),
        lambda p: p.confirm_refund(confirm_refund("unknown", eure("1"))),
        lambda p: p.confirm_refund(confirm_refund("r1", eure("2"))),  # chain shows another amount
        lambda p: p.request_refund(request_refund("r0", Money(0, EURE))),
        lambda p: p.request_refund(request_refund("r0", Money(-1, EURE))),
    ],
    ids=["duplicate", "submit-unknown", "confirm-unknown", "amount-differs", "zero", "negative"],
)
def test_bad_refund_commands_change_nothing(bad: Callable[[Payment], None]) -> None:
    payment = cleared()
    payment.request_refund(request_refund("r1", eure("1")))
    before = snapshot(payment)
    with pytest.raises(InvalidTransition):
        bad(payment)
    assert snapshot(payment) == before


def test_a_refund_resolves_once() -> None:
    payment = cleared()
    payment.request_refund(request_refund("r1", eure("1")))
    payment.record_refund_submission(submit_refund("r1"))
    payment.confirm_refund(confirm_refund("r1", eure("1")))
    before = snapshot(payment)
    with pytest.raises(InvalidTransition):
        payment.confirm_refund(confirm_refund("r1", eure("1")))
    with pytest.raises(InvalidTransition):
        payment.record_refund_submission(submit_refund("r1", TX_B))
    assert snapshot(payment) == before
    assert payment.refunded == eure("1")


def test_a_refund_may_be_resubmitted_under_another_hash() -> None:
    payment = cleared()
    payment.request_refund(request_refund("r1", eure("1")))
    payment.record_refund_submission(submit_refund("r1", TX_A))
    payment.record_refund_submission(submit_refund("r1", TX_B))  # fee bump / re-sent
    assert payment.refunds["r1"].tx_hashes == (TX_A, TX_B)
    assert [ev.tx_hash for ev in payment.pending_events[-2:]  # type: ignore[attr-defined]
            ] == [TX_A, TX_B]
    assert payment.committed_refunds == eure("1")  # still one refund, not two

    before = snapshot(payment)
    for tx_hash in (TX_A, TX_B):
        with pytest.raises(InvalidTransition):
            payment.record_refund_submission(submit_refund("r1", tx_hash))
    assert snapshot(payment) == before

    payment.confirm_refund(confirm_refund("r1", eure("1")))
    assert payment.refunded == eure("1")
    assert payment.refunds["r1"].tx_hashes == (TX_A, TX_B)


def test_the_duplicate_hash_check_is_per_refund() -> None:
    """The duplicate check is per refund: one batch transaction may carry several refunds."""
    payment = cleared()
    payment.request_refund(request_refund("r1", eure("1")))
    payment.request_refund(request_refund("r2", eure("2")))
    payment.record_refund_submission(submit_refund("r1", TX_A))
    payment.record_refund_submission(submit_refund("r2", TX_A))
    assert payment.refunds["r2"].tx_hashes == (TX_A,)


@pytest.mark.parametrize("authorized_first", [False, True], ids=["new", "authorized"])
def test_refund_needs_a_spend(authorized_first: bool) -> None:
    payment = Payment(PAYMENT_ID)
    if authorized_first:
        payment.authorize(authorize())
    before = snapshot(payment)
    with pytest.raises(InvalidTransition):
        payment.request_refund(request_refund("r1", eure("1")))
    assert snapshot(payment) == before


# -- currencies -----------------------------------------------------------------------------------
def test_currency_mismatch_between_authorization_and_spend() -> None:
    payment = Payment(PAYMENT_ID)
    payment.authorize(authorize(eure("25")))
    with pytest.raises(InvalidTransition):
        payment.confirm_spend(confirm_spend(Money(2500, EUR)))
    assert payment.status is Status.AUTHORIZED
    assert payment.spent is None


def test_currency_mismatch_at_clearing() -> None:
    payment = held("25")
    with pytest.raises(InvalidTransition):
        payment.clear(clear(Money(2500, EUR)))
    assert payment.status is Status.HELD


def test_currency_mismatch_in_a_refund() -> None:
    payment = cleared("25")
    before = snapshot(payment)
    with pytest.raises(InvalidTransition) as raised:
        payment.request_refund(request_refund("r1", Money(100, EUR)))
    # Not "exceeds capture": 1.00 EUR is small; it is in the wrong unit.
    assert not isinstance(raised.value, RefundExceedsCapture)
    assert snapshot(payment) == before

    payment.request_refund(request_refund("r1", eure("1")))
    with pytest.raises(InvalidTransition):
        payment.confirm_refund(confirm_refund("r1", Money(100, EUR)))
    assert payment.refunded == Money.zero(EURE)


@pytest.mark.parametrize("amount", [Money(0, EURE), Money(-1, EURE)], ids=["zero", "negative"])
def test_amounts_must_be_positive(amount: Money) -> None:
    with pytest.raises(InvalidTransition):
        Payment(PAYMENT_ID).authorize(authorize(amount))
    with pytest.raises(InvalidTransition):
        Payment(PAYMENT_ID).confirm_spend(confirm_spend(amount))
    payment = held()
    with pytest.raises(InvalidTransition):
        payment.clear(clear(amount))
    assert payment.status is Status.HELD


# -- reorgs: retracting a spend -------------------------------------------------------------------
def test_retracting_the_spend_returns_an_authorized_payment_to_authorized() -> None:
    payment = held("25")
    cmd = retract_spend(evidence(1))
    payment.retract_spend(cmd)
    assert (payment.status, payment.hold) == (Status.AUTHORIZED, Hold.NONE)
    assert (payment.spent, payment.spend_evidence) == (None, None)
    assert payment.authorized == eure("25")
    assert (payment.refunded, payment.committed_refunds, payment.refundable) == (None, None, None)
    event = payment.pending_events[-1]
    assert isinstance(event, e.SpendRetracted)
    assert (event.evidence, event.reason, event.version) == (evidence(1), "reorg", 3)

    # The transaction is mined again (in another block): the payment goes on from there.
    payment.confirm_spend(confirm_spend(eure("25"), evidence(2)))
    assert (payment.status, payment.hold, payment.spend_evidence) == (
        Status.HELD, Hold.PENDING, evidence(2))
    payment.clear(clear(eure("25")))
    assert payment.hold is Hold.POSTED


def test_retracting_a_chain_first_spend_returns_the_payment_to_new() -> None:
    payment = Payment(PAYMENT_ID)
    payment.confirm_spend(confirm_spend(eure("12")))
    payment.retract_spend(retract_spend())
    assert (payment.status, payment.hold, payment.spent) == (Status.NEW, Hold.NONE, None)
    with pytest.raises(InvalidTransition):
        payment.reverse(reverse())


def test_only_the_current_spend_log_can_be_retracted() -> None:
    payment = held()
    before = snapshot(payment)
    with pytest.raises(InvalidTransition):
        payment.retract_spend(retract_spend(evidence(2)))
    assert snapshot(payment) == before

    payment.retract_spend(retract_spend(evidence(1)))
    payment.confirm_spend(confirm_spend(proof=evidence(2)))
    before = snapshot(payment)
    with pytest.raises(InvalidTransition):  # the first log's retraction, delivered again
        payment.retract_spend(retract_spend(evidence(1)))
    assert snapshot(payment) == before


def test_a_spend_with_refunds_requested_is_retracted_and_owed_until_it_lands_again() -> None:
    """Refusing the retraction would leave the payment resting on money that is gone: it is
    recorded, the payment keeps its state, and the same spend landing again restores it."""
    payment = held()
    payment.request_refund(request_refund("r1", eure("1")))
    payment.retract_spend(retract_spend())
    assert isinstance(payment.pending_events[-1], e.SpendRetracted)
    assert (payment.status, payment.spent, payment.spend_evidence) == (
        Status.HELD, Money.zero(EURE), None)
    assert not payment.rests_on(evidence(1)) and payment.refundable == eure("-1")
    payment.confirm_spend(confirm_spend(proof=evidence(3)))  # re-mined in another block
    assert (payment.status, payment.spent, payment.refundable) == (
        Status.HELD, eure("25"), eure("24"))
    assert Payment.rehydrate(PAYMENT_ID, payment.pending_events).spent == eure("25")


@pytest.mark.parametrize("settled", [False, True])
def test_a_cleared_or_settled_spend_retracted_keeps_the_payment_as_it_was(settled: bool) -> None:
    payment = cleared()
    if settled:
        payment.settle(settle())
    status = payment.status
    payment.retract_spend(retract_spend())
    assert (payment.status, payment.hold, payment.spent) == (status, Hold.POSTED,
                                                             Money.zero(EURE))
    with pytest.raises(InvalidTransition):  # once only
        payment.retract_spend(retract_spend())
    payment.confirm_spend(confirm_spend(proof=evidence(3)))
    assert payment.spent == eure("25") and payment.status is status


@pytest.mark.parametrize(
    "make",
    [
        lambda: Payment(PAYMENT_ID),
        lambda: Payment.rehydrate(PAYMENT_ID, list(held().pending_events[:1])),
        lambda: Payment.rehydrate(PAYMENT_ID, list(held().pending_events)),
    ],
    ids=["new", "authorized", "another-log"],
)
def test_only_a_spend_log_the_payment_rests_on_is_retracted(
        make: Callable[[], Payment]) -> None:
    payment = make()
    before = snapshot(payment)
    with pytest.raises(InvalidTransition):
        payment.retract_spend(retract_spend(evidence(5)))
    assert snapshot(payment) == before


# -- reorgs: retracting a refund ------------------------------------------------------------------
def test_a_retracted_refund_is_in_flight_again() -> None:
    payment = cleared("25")
    payment.request_refund(request_refund("r1", eure("10")))
    payment.record_refund_submission(submit_refund("r1", TX_A))
    payment.confirm_refund(confirm_refund("r1", eure("10"), evidence(7)))
    assert payment.refunded == eure("10")

    cmd = retract_refund("r1", evidence(7))
    payment.retract_refund(cmd)
    event = payment.pending_events[-1]
    assert isinstance(event, e.RefundRetracted)
    assert (event.refund_id, event.amount, event.evidence, event.reason) == (
        "r1", eure("10"), evidence(7), "reorg")
    refund = payment.refunds["r1"]
    assert (refund.confirmed, refund.evidence, refund.tx_hashes) == (False, None, (TX_A,))
    assert payment.refunded == Money.zero(EURE)
    assert payment.committed_refunds == eure("10")  # still committed: it will be mined again
    assert payment.refundable == eure("15")
    assert payment.status is Status.CLEARED

    # Mined again in another block, or resubmitted first.
    payment.record_refund_submission(submit_refund("r1", TX_B))
    payment.confirm_refund(confirm_refund("r1", eure("10"), evidence(8)))
    assert payment.refunded == eure("10")
    assert payment.refunds["r1"].evidence == evidence(8)


@pytest.mark.parametrize(
    "bad",
    [
        lambda p: p.retract_refund(retract_refund("r1", evidence(7))),  # never confirmed
        lambda p: p.retract_refund(retract_refund("r2", evidence(8))),  # another log
        lambda p: p.retract_refund(retract_refund("r2", evidence(7))),  # r1's log, not r2's
        lambda p: p.retract_refund(retract_refund("unknown", evidence(9))),
    ],
    ids=["unconfirmed", "other-log", "other-refund", "unknown"],
)
def test_only_a_confirmed_refund_can_be_retracted_by_its_own_log(
    bad: Callable[[Payment], None],
) -> None:
    payment = cleared("25")
    payment.request_refund(request_refund("r1", eure("1")))
    payment.request_refund(request_refund("r2", eure("2")))
    payment.confirm_refund(confirm_refund("r2", eure("2"), evidence(9)))
    before = snapshot(payment)
    with pytest.raises(InvalidTransition):
        bad(payment)
    assert snapshot(payment) == before


def test_a_refund_is_retracted_once() -> None:
    payment = cleared()
    payment.request_refund(request_refund("r1", eure("1")))
    payment.confirm_refund(confirm_refund("r1", eure("1"), evidence(7)))
    payment.retract_refund(retract_refund("r1", evidence(7)))
    before = snapshot(payment)
    with pytest.raises(InvalidTransition):
        payment.retract_refund(retract_refund("r1", evidence(7)))
    assert snapshot(payment) == before


# -- after a reversal -----------------------------------------------------------------------------
LIFECYCLE_COMMANDS: list[Callable[[], c.Command]] = [
    authorize,
    reverse,
    lambda: request_refund("r1", eure("1")),
    lambda: request_refund("r9", eure("1")),
    settle,
]
"""Not here: money the chain or the network moved after the reversal (a spend, a clearing,
a reorg) is taken, see the tests below."""


def reversed_payment(reversed_from: str) -> Payment:
    payment = Payment(PAYMENT_ID)
    payment.authorize(authorize())
    if reversed_from != "authorized":
        payment.confirm_spend(confirm_spend())
    if reversed_from == "held-with-refund":
        payment.request_refund(request_refund("r1", eure("1")))
    payment.reverse(reverse())
    return payment


@pytest.mark.parametrize("make_command", LIFECYCLE_COMMANDS)
@pytest.mark.parametrize("reversed_from", ["authorized", "held", "held-with-refund"])
def test_no_lifecycle_command_is_accepted_after_a_reversal(
    make_command: Callable[[], c.Command], reversed_from: str
) -> None:
    payment = reversed_payment(reversed_from)
    before = snapshot(payment)
    with pytest.raises(InvalidTransition):
        handle(payment, make_command())
    assert snapshot(payment) == before


@pytest.mark.parametrize("reversed_from", ["authorized", "held", "held-with-refund"])
def test_a_spend_landing_after_a_reversal_is_refunded_at_once(reversed_from: str) -> None:
    """The saga gave up on the spend (deadline) but its transaction was mined late: refusing it
    would leave the money stuck on the settlement account."""
    payment = reversed_payment(reversed_from)
    committed = payment.committed_refunds or Money.zero(EURE)
    cmd = confirm_spend(eure("25"), evidence(9))
    payment.confirm_spend(cmd)
    spent, refund = payment.pending_events[-2:]
    assert isinstance(spent, e.PaymentSpent) and isinstance(refund, e.RefundRequested)
    assert (refund.refund_id, refund.amount, refund.reason) == (
        f"{cmd.command_id}:after-reversal", eure("25"), "spend after reversal")
    assert payment.status is Status.REVERSED
    assert payment.committed_refunds == committed + eure("25")
    assert payment.refundable == Money.zero(EURE)


def test_a_spend_retracted_after_a_reversal_lands_again_without_a_second_refund() -> None:
    payment = reversed_payment("held")  # its spend refunded by the reversal
    payment.retract_spend(retract_spend())
    assert payment.status is Status.REVERSED and payment.refundable == eure("-25")
    payment.confirm_spend(confirm_spend(proof=evidence(3)))
    assert isinstance(payment.pending_events[-1], e.PaymentSpent)  # nothing more to refund
    assert payment.refundable == Money.zero(EURE)


def test_a_clearing_after_a_reversal_clears_the_payment() -> None:
    """The network may clear after its authorization expired; it cannot be refused."""
    payment = reversed_payment("held")
    payment.clear(clear(eure("10")))
    assert (payment.status, payment.cleared, payment.hold) == (
        Status.CLEARED, eure("10"), Hold.POSTED)
    assert payment.refundable == Money.zero(EURE)  # the saga collects the 10 again


def test_refund_excess_refunds_what_is_beyond_the_networks_amount_net_of_returns() -> None:
    payment = network_cleared("25")
    payment.record_return(c.RecordReturn(**_base(), amount=eure("5")))  # type: ignore[arg-type]
    payment.refund_excess(c.RefundExcess(**_base(), reason="merchant return"))  # type: ignore[arg-type]
    refund = payment.pending_events[-1]
    assert isinstance(refund, e.RefundRequested) and refund.amount == eure("5")
    count = len(payment.pending_events)
    payment.refund_excess(c.RefundExcess(**_base(), reason="again"))  # type: ignore[arg-type]
    assert len(payment.pending_events) == count  # nothing beyond any more: nothing recorded


@pytest.mark.parametrize("reversed_from", ["authorized", "held", "held-with-refund"])
def test_after_a_reversal_unknown_refunds_stay_unknown(reversed_from: str) -> None:
    payment = reversed_payment(reversed_from)
    before = snapshot(payment)
    for bad in (submit_refund("r9"), confirm_refund("r9", eure("1")),
                retract_refund("r9")):
        with pytest.raises(InvalidTransition):
            handle(payment, bad)
    assert snapshot(payment) == before


def test_refunds_in_flight_go_on_after_a_reversal() -> None:
    payment = Payment(PAYMENT_ID)
    payment.authorize(authorize(eure("25")))
    payment.confirm_spend(confirm_spend(eure("25")))
    payment.request_refund(request_refund("r1", eure("1")))
    cmd = reverse()
    payment.reverse(cmd)
    reversal = f"{cmd.command_id}:reversal"
    assert set(payment.refunds) == {"r1", reversal}
    assert payment.refunds[reversal].amount == eure("24")

    for step in (
        submit_refund(reversal, TX_A),
        submit_refund(reversal, TX_B),  # resubmitted
        submit_refund("r1", TX_A),
        confirm_refund(reversal, eure("24"), evidence(7)),
        confirm_refund("r1", eure("1"), evidence(8)),
        retract_refund(reversal, evidence(7)),  # reorged out ...
        confirm_refund(reversal, eure("24"), evidence(9)),  # ... and mined again
    ):
        handle(payment, step)
        assert (payment.status, payment.hold) == (Status.REVERSED, Hold.VOIDED)
    assert payment.refunded == eure("25") == payment.spent
    assert payment.refundable == Money.zero(EURE)
    with pytest.raises(InvalidTransition):  # confirmed: resolved
        payment.confirm_refund(confirm_refund(reversal, eure("24")))


def test_the_reversal_refund_is_confirmed_only_for_its_amount() -> None:
    payment = reversed_payment("held")
    (reversal,) = payment.refunds
    assert reversal.endswith(":reversal")
    before = snapshot(payment)
    with pytest.raises(InvalidTransition):
        payment.confirm_refund(confirm_refund(reversal, eure("1")))
    assert snapshot(payment) == before
    payment.confirm_refund(confirm_refund(reversal, eure("25")))
    assert payment.refunded == eure("25")


# -- events and rehydration -----------------------------------------------------------------------
def full_history() -> Payment:
    payment = held("25")
    payment.request_refund(request_refund("r1", eure("5"), minutes=5))
    payment.record_refund_submission(submit_refund("r1", minutes=6))
    payment.clear(clear(eure("20"), minutes=7))
    payment.confirm_refund(confirm_refund("r1", eure("5"), minutes=8))
    payment.request_refund(request_refund("r2", eure("3"), minutes=9))
    payment.settle(settle(minutes=10))
    return payment


def test_rehydrating_from_pending_events_gives_the_same_state() -> None:
    payment = full_history()
    again = Payment.rehydrate(PAYMENT_ID, list(payment.pending_events))
    assert snapshot(again)[:-1] == snapshot(payment)[:-1]
    assert again.pending_events == []
    assert (again.refunded, again.committed_refunds, again.refundable) == (
        payment.refunded,
        payment.committed_refunds,
        payment.refundable,
    )


def test_a_rehydrated_payment_continues_where_it_left_off() -> None:
    live = held()
    payment = Payment.rehydrate(PAYMENT_ID, list(live.pending_events))
    payment.clear(clear())
    assert payment.version == 3
    assert [ev.version for ev in payment.pending_events] == [3]


def test_rehydrating_a_reversed_payment() -> None:
    live = held()
    live.reverse(reverse())
    payment = Payment.rehydrate(PAYMENT_ID, list(live.pending_events))
    assert (payment.status, payment.hold, payment.version) == (Status.REVERSED, Hold.VOIDED, 4)
    assert snapshot(payment)[:-1] == snapshot(live)[:-1]


def test_rehydrating_through_retractions_and_resubmissions() -> None:
    payment = held("25")
    payment.retract_spend(retract_spend(evidence(1)))
    payment.confirm_spend(confirm_spend(eure("20"), evidence(2)))
    payment.clear(clear(eure("18")))
    payment.request_refund(request_refund("r1", eure("3")))
    payment.record_refund_submission(submit_refund("r1", TX_A))
    payment.record_refund_submission(submit_refund("r1", TX_B))
    payment.confirm_refund(confirm_refund("r1", eure("3"), evidence(7)))
    payment.retract_refund(retract_refund("r1", evidence(7)))
    payment.confirm_refund(confirm_refund("r1", eure("3"), evidence(8)))
    again = Payment.rehydrate(PAYMENT_ID, list(payment.pending_events))
    assert snapshot(again)[:-1] == snapshot(payment)[:-1]
    assert (again.refunded, again.committed_refunds, again.refundable) == (
        eure("3"), eure("5"), eure("15"))


def test_events_carry_stream_version_time_and_ids() -> None:
    payment = full_history()
    events = payment.pending_events
    assert [ev.version for ev in events] == list(range(1, len(events) + 1))
    assert payment.version == len(events)
    for ev in events:
        assert ev.stream_id == PAYMENT_ID
        assert ev.occurred_at.tzinfo is not None
        assert ev.occurred_at.utcoffset() == timedelta(0)
        assert ev.causation_id.startswith("cmd-")
        # Without a correlation id the command starts its own conversation.
        assert ev.correlation_id == ev.causation_id
    assert len({ev.causation_id for ev in events}) == len(events)
    times = [ev.occurred_at for ev in events]
    assert times == sorted(times)


def test_events_take_their_ids_and_time_from_the_command() -> None:
    payment = Payment(PAYMENT_ID)
    cmd = authorize(minutes=3, correlation_id="network-msg-9")
    payment.authorize(cmd)
    (event,) = payment.pending_events
    assert isinstance(event, e.PaymentAuthorized)
    assert event.occurred_at == cmd.at
    assert event.causation_id == cmd.command_id
    assert event.correlation_id == "network-msg-9"
    assert (event.account, event.amount, event.merchant, event.mcc, event.expires_at) == (
        cmd.account,
        cmd.amount,
        cmd.merchant,
        cmd.mcc,
        cmd.expires_at,
    )


def test_events_are_frozen() -> None:
    payment = held()
    with pytest.raises(AttributeError):
        payment.pending_events[0].version = 9  # type: ignore[misc]


def test_a_rejected_command_records_nothing() -> None:
    payment = held()
    before = snapshot(payment)
    for bad in (authorize(), confirm_spend(), settle(), submit_refund("none"),
                retract_spend(evidence(5)), retract_refund("none")):
        with pytest.raises(InvalidTransition):
            handle(payment, bad)
    assert snapshot(payment) == before


def test_naive_command_times_are_refused_before_anything_is_recorded() -> None:
    from datetime import datetime as _dt

    from domain.errors import NaiveTimestamp

    payment = Payment("naive")
    with pytest.raises(NaiveTimestamp):
        payment.confirm_spend(
            c.ConfirmSpend(command_id="x", payment_id="naive", at=_dt(2026, 1, 1),
                           account="0xabc", amount=Money(1, Currency("EURe", 18)),
                           evidence=ChainEvidence(chain_id=1, block_number=1, block_hash="0x1",
                                                  tx_hash="0x2", log_index=0)))
    assert payment.version == 0 and payment.pending_events == []
