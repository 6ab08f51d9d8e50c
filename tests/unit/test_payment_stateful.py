"""One Payment driven through random command sequences; its invariants hold after every step.

Every rule builds a command from random (often boundary) values, states from the payment's public
state whether the command should be accepted, then checks the aggregate agreed: accepted commands
record exactly one event of the right type, rejected ones raise a DomainError and change nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from domain import commands as c
from domain import events as e
from domain.errors import DomainError
from domain.events import ChainEvidence
from domain.money import EUR, Currency, Money
from domain.payment import Hold, Payment, Status, handle

pytestmark = pytest.mark.unit

EURE = Currency("EURe", 18)
PAYMENT_ID = "pay-stateful"
T0 = datetime(2024, 5, 1, tzinfo=UTC)
ONE = 10**18

NEW_REFUND_IDS = ("r1", "r2", "r3", "r4")
# A fixed id (new, duplicate or unknown) or, more often once there are any, an existing one.
REFUND_PICKS = st.integers(min_value=0, max_value=9)
# Mostly the payment's own token; sometimes fiat, to exercise currency mismatches.
CURRENCIES = st.sampled_from([EURE, EURE, EURE, EURE, EUR])
# Ordinary, tiny, far larger than anything authorized, and zero (ordinary first: hypothesis leans
# towards the first branch, and a zero amount stalls the payment in NEW).
RAW_UNITS = st.one_of(
    st.integers(min_value=1, max_value=100 * ONE),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=10**24, max_value=10**30),
    st.just(0),
)
# Offsets around an amount the payment already knows (authorized, spent, refundable, requested).
NUDGES = st.sampled_from([None, 0, 0, 0, -1, 1])

# How many valid steps the machine may take before the random walk starts.
PREFIX_LENGTHS = {"new": 0, "authorized": 1, "held": 2, "chain-first": 1, "cleared": 3}

HOLD_PATHS = (
    (Hold.NONE,),
    (Hold.NONE, Hold.PENDING),
    (Hold.NONE, Hold.PENDING, Hold.POSTED),
    (Hold.NONE, Hold.PENDING, Hold.VOIDED),
)


def evidence(n: int) -> ChainEvidence:
    return ChainEvidence(
        chain_id=100,
        block_number=n,
        block_hash=f"0x{n:064x}",
        tx_hash=f"0x{n + 1:064x}",
        log_index=n % 7,
    )


def state_of(payment: Payment) -> tuple[object, ...]:
    """Everything commands may change, in comparable form (pending_events apart)."""
    return (
        payment.id,
        payment.version,
        payment.status,
        payment.hold,
        payment.account,
        payment.authorized,
        payment.spent,
        payment.cleared,
        {k: (r.amount, r.tx_hash, r.confirmed) for k, r in payment.refunds.items()},
    )


def same_currency(amount: Money, other: Money | None) -> bool:
    return other is not None and amount.currency == other.currency


@settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
class PaymentMachine(RuleBasedStateMachine):
    @initialize(
        prefix=st.sampled_from(list(PREFIX_LENGTHS)),
        units=st.integers(min_value=1, max_value=100 * ONE),
    )
    def start(self, prefix: str, units: int) -> None:
        """Begin NEW, or (so that random walks reach the later states often) a few valid steps in."""
        self.payment = Payment(PAYMENT_ID)
        self.recorded: list[e.DomainEvent] = []
        self.hold_history: list[Hold] = [self.payment.hold]
        self.steps = 0
        self.reversed_state: tuple[object, ...] | None = None
        if prefix in ("authorized", "held", "cleared"):
            self.authorize(units, EURE, correlated=False)
        if prefix in ("held", "chain-first", "cleared"):
            self.confirm_spend(units, EURE, nudge=None, correlated=False)
        if prefix == "cleared":
            self.clear(units, EURE, nudge=None, correlated=False)
        assert len(self.recorded) == PREFIX_LENGTHS[prefix]

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def amount(units: int, currency: Currency, nudge: int | None, anchor: Money | None) -> Money:
        """`units` as drawn, or (given a `nudge` and an anchor) a known amount plus `nudge`."""
        if nudge is not None and anchor is not None and anchor.units + nudge >= 0:
            return Money(anchor.units + nudge, anchor.currency)
        return Money(units, currency)

    def base(self, correlated: bool) -> dict[str, object]:
        self.steps += 1
        return {
            "command_id": f"cmd-{self.steps}",
            "payment_id": PAYMENT_ID,
            "at": T0 + timedelta(minutes=self.steps),
            "correlation_id": "corr-1" if correlated else None,
        }

    def refund_id(self, pick: int) -> str:
        existing = sorted(self.payment.refunds)
        if pick < len(NEW_REFUND_IDS) or not existing:
            return NEW_REFUND_IDS[pick % len(NEW_REFUND_IDS)]
        return existing[pick % len(existing)]

    def run(self, cmd: c.Command, should_accept: bool, event_type: type[e.DomainEvent]) -> None:
        before = state_of(self.payment)
        pending_before = len(self.payment.pending_events)
        try:
            handle(self.payment, cmd)
        except DomainError:
            assert not should_accept, f"{type(cmd).__name__} wrongly rejected"
            assert state_of(self.payment) == before
            assert len(self.payment.pending_events) == pending_before
            return
        assert should_accept, f"{type(cmd).__name__} wrongly accepted"
        new = self.payment.pending_events[pending_before:]
        assert len(new) == 1
        (event,) = new
        assert type(event) is event_type
        assert event.stream_id == PAYMENT_ID
        assert event.version == len(self.recorded) + 1
        assert event.occurred_at == cmd.at
        assert event.occurred_at.tzinfo is not None
        assert event.causation_id == cmd.command_id
        assert event.correlation_id == (cmd.correlation_id or cmd.command_id)
        self.recorded.append(event)
        if self.hold_history[-1] is not self.payment.hold:
            self.hold_history.append(self.payment.hold)
        if self.payment.status is Status.REVERSED and self.reversed_state is None:
            self.reversed_state = state_of(self.payment)

    @property
    def status(self) -> Status:
        return self.payment.status

    # -- rules ------------------------------------------------------------------------------------
    @rule(units=RAW_UNITS, currency=CURRENCIES, correlated=st.booleans())
    def authorize(self, units: int, currency: Currency, correlated: bool) -> None:
        amount = Money(units, currency)
        cmd = c.AuthorizePayment(
            **self.base(correlated),  # type: ignore[arg-type]
            account="0xsafe",
            amount=amount,
            merchant="Bakery",
            mcc="5462",
            expires_at=T0 + timedelta(days=7),
        )
        ok = self.status is Status.NEW and units > 0
        self.run(cmd, ok, e.PaymentAuthorized)

    @rule(units=RAW_UNITS, currency=CURRENCIES, nudge=NUDGES, correlated=st.booleans())
    def confirm_spend(
        self, units: int, currency: Currency, nudge: int | None, correlated: bool
    ) -> None:
        authorized = self.payment.authorized
        amount = self.amount(units, currency, nudge, authorized)
        cmd = c.ConfirmSpend(
            **self.base(correlated),  # type: ignore[arg-type]
            account="0xsafe",
            amount=amount,
            evidence=evidence(self.steps),
        )
        ok = amount.units > 0 and (
            self.status is Status.NEW
            or (
                self.status is Status.AUTHORIZED
                and same_currency(amount, authorized)
                and authorized is not None
                and amount.units <= authorized.units
            )
        )
        self.run(cmd, ok, e.PaymentSpent)

    @rule(units=RAW_UNITS, currency=CURRENCIES, nudge=NUDGES, correlated=st.booleans())
    def clear(self, units: int, currency: Currency, nudge: int | None, correlated: bool) -> None:
        amount = self.amount(units, currency, nudge, self.payment.spent)
        cmd = c.ClearPayment(**self.base(correlated), amount=amount)  # type: ignore[arg-type]
        ok = (
            self.status is Status.HELD
            and amount.units > 0
            and same_currency(amount, self.payment.spent)
        )
        self.run(cmd, ok, e.PaymentCleared)

    @rule(correlated=st.booleans())
    def reverse(self, correlated: bool) -> None:
        cmd = c.ReversePayment(**self.base(correlated), reason="expired")  # type: ignore[arg-type]
        ok = self.status in (Status.AUTHORIZED, Status.HELD)
        self.run(cmd, ok, e.PaymentReversed)

    @rule(
        pick=REFUND_PICKS,
        units=RAW_UNITS,
        currency=CURRENCIES,
        nudge=NUDGES,
        correlated=st.booleans(),
    )
    def request_refund(
        self, pick: int, units: int, currency: Currency, nudge: int | None, correlated: bool
    ) -> None:
        refund_id = self.refund_id(pick)
        refundable = self.payment.refundable
        amount = self.amount(units, currency, nudge, refundable)
        cmd = c.RequestRefund(
            **self.base(correlated),  # type: ignore[arg-type]
            refund_id=refund_id,
            amount=amount,
            reason="merchant credit",
        )
        ok = (
            self.status in (Status.HELD, Status.CLEARED, Status.SETTLED)
            and amount.units > 0
            and refund_id not in self.payment.refunds
            and same_currency(amount, refundable)
            and refundable is not None
            and amount.units <= refundable.units
        )
        self.run(cmd, ok, e.RefundRequested)

    def open_refund(self, refund_id: str) -> bool:
        refund = self.payment.refunds.get(refund_id)
        return (
            self.status in (Status.HELD, Status.CLEARED, Status.SETTLED)
            and refund is not None
            and not refund.confirmed
        )

    @rule(pick=REFUND_PICKS, correlated=st.booleans())
    def record_refund_submission(self, pick: int, correlated: bool) -> None:
        refund_id = self.refund_id(pick)
        cmd = c.RecordRefundSubmission(
            **self.base(correlated),  # type: ignore[arg-type]
            refund_id=refund_id,
            tx_hash=f"0x{self.steps:064x}",
        )
        refund = self.payment.refunds.get(refund_id)
        ok = self.open_refund(refund_id) and refund is not None and refund.tx_hash is None
        self.run(cmd, ok, e.RefundSubmitted)

    @rule(
        pick=REFUND_PICKS,
        units=RAW_UNITS,
        currency=CURRENCIES,
        nudge=NUDGES,
        correlated=st.booleans(),
    )
    def confirm_refund(
        self, pick: int, units: int, currency: Currency, nudge: int | None, correlated: bool
    ) -> None:
        refund_id = self.refund_id(pick)
        refund = self.payment.refunds.get(refund_id)
        amount = self.amount(units, currency, nudge, refund.amount if refund else None)
        cmd = c.ConfirmRefund(
            **self.base(correlated),  # type: ignore[arg-type]
            refund_id=refund_id,
            amount=amount,
            evidence=evidence(self.steps),
        )
        ok = self.open_refund(refund_id) and refund is not None and amount == refund.amount
        self.run(cmd, ok, e.PaymentRefunded)

    @rule(batch=st.sampled_from(["b1", "b2"]), correlated=st.booleans())
    def settle(self, batch: str, correlated: bool) -> None:
        cmd = c.SettlePayment(**self.base(correlated), batch_id=batch)  # type: ignore[arg-type]
        self.run(cmd, self.status is Status.CLEARED, e.PaymentSettled)

    # -- invariants -------------------------------------------------------------------------------
    @invariant()
    def refunds_never_exceed_the_spend(self) -> None:
        payment = self.payment
        if payment.spent is None:
            assert payment.refunds == {}
            assert payment.refunded is None
            assert payment.committed_refunds is None
            return
        committed, refunded = payment.committed_refunds, payment.refunded
        assert committed is not None
        assert refunded is not None
        assert Money.zero(payment.spent.currency) <= refunded <= committed <= payment.spent
        assert payment.refundable == payment.spent - committed
        for refund in payment.refunds.values():
            assert refund.amount.units > 0

    @invariant()
    def the_hold_resolves_at_most_once(self) -> None:
        assert tuple(self.hold_history) in HOLD_PATHS
        assert self.hold_history[-1] is self.payment.hold
        expected = {
            Status.NEW: {Hold.NONE},
            Status.AUTHORIZED: {Hold.NONE},
            Status.HELD: {Hold.PENDING},
            Status.CLEARED: {Hold.POSTED},
            Status.SETTLED: {Hold.POSTED},
            Status.REVERSED: {Hold.NONE, Hold.VOIDED},
        }[self.payment.status]
        assert self.payment.hold in expected

    @invariant()
    def a_reversed_payment_never_changes(self) -> None:
        if self.reversed_state is not None:
            assert self.payment.status is Status.REVERSED
            assert state_of(self.payment) == self.reversed_state

    @invariant()
    def version_counts_the_recorded_events(self) -> None:
        assert self.payment.version == len(self.recorded)
        assert self.payment.pending_events == self.recorded
        assert [ev.version for ev in self.recorded] == list(range(1, len(self.recorded) + 1))

    @invariant()
    def rehydrating_gives_the_live_state(self) -> None:
        again = Payment.rehydrate(PAYMENT_ID, list(self.recorded))
        assert state_of(again) == state_of(self.payment)
        assert again.pending_events == []
        assert (again.refunded, again.committed_refunds, again.refundable) == (
            self.payment.refunded,
            self.payment.committed_refunds,
            self.payment.refundable,
        )


TestPaymentStateful = PaymentMachine.TestCase
