"""One Payment driven through random command sequences; its invariants hold after every step.

Every rule builds a command from random (often boundary) values and predicts, from an independent
model of the payment kept by the test, whether the command should be accepted and which events it
records; then it checks the aggregate agreed. Accepted commands record exactly the predicted events
(a clearing below what is left, or a reversal of a spend, records a refund too); rejected ones raise
a DomainError and change neither state nor version. After every step the model and the aggregate
agree, and the aggregate rehydrated from its events equals the live one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
# For refunds and clearings, also a share of the known amount (so that several fit in a spend).
SHARES = st.sampled_from([None, 0, 0, -1, 1, "half", "half", "third"])
# Which known amount a clearing is nudged around: the spend, or what is left of it.
CLEAR_ANCHORS = st.sampled_from(["refundable", "spent"])
# Which log a retraction names: the current one (right), an earlier one (stale), or a fresh one.
EVIDENCE_PICKS = st.sampled_from(["current", "current", "current", "stale", "fresh"])
# Which hash a submission carries: a new one, one this refund was already submitted in, or one
# another refund was submitted in (a batch transaction refunding several).
HASH_PICKS = st.sampled_from(["fresh", "fresh", "same", "other"])

# Valid steps the machine may take before the random walk starts, and the events they record.
PREFIXES = {
    "new": 0,
    "authorized": 1,
    "held": 2,
    "held-with-refund": 3,
    "refund-confirmed": 4,
    "chain-first": 1,
    "cleared": 3,
    "reversed": 4,
    "retracted": 3,
}

# Every change of the hold: it is placed by a spend, resolved once (posted or voided), and removed
# before it resolved only when a reorg retracts the spend.
HOLD_MOVES = {
    (Hold.NONE, Hold.PENDING): e.PaymentSpent,
    (Hold.PENDING, Hold.POSTED): e.PaymentCleared,
    (Hold.PENDING, Hold.VOIDED): e.PaymentReversed,
    (Hold.PENDING, Hold.NONE): e.SpendRetracted,
}

HOLD_OF_STATUS = {
    Status.NEW: {Hold.NONE},
    Status.AUTHORIZED: {Hold.NONE},
    Status.HELD: {Hold.PENDING},
    Status.CLEARED: {Hold.POSTED},
    Status.SETTLED: {Hold.POSTED},
    Status.REVERSED: {Hold.NONE, Hold.VOIDED},
}


def evidence(n: int) -> ChainEvidence:
    return ChainEvidence(
        chain_id=100,
        block_number=n,
        block_hash=f"0x{n:064x}",
        tx_hash=f"0x{n + 1:064x}",
        log_index=n % 7,
    )


def tx_hash(n: int) -> str:
    return f"0x{n:064x}"


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
        payment.spend_evidence,
        {
            k: (r.amount, r.tx_hashes, r.confirmed, r.evidence)
            for k, r in payment.refunds.items()
        },
    )


@dataclass
class ModelRefund:
    amount: Money
    tx_hashes: tuple[str, ...] = ()
    evidence: ChainEvidence | None = None  # set while confirmed


@dataclass
class Model:
    """What the test expects the payment to be, kept apart from the aggregate."""

    version: int = 0
    status: Status = Status.NEW
    hold: Hold = Hold.NONE
    account: str | None = None
    authorized: Money | None = None
    spent: Money | None = None
    cleared: Money | None = None
    spend_evidence: ChainEvidence | None = None
    refunds: dict[str, ModelRefund] = field(default_factory=dict)

    def state(self) -> tuple[object, ...]:
        return (
            PAYMENT_ID,
            self.version,
            self.status,
            self.hold,
            self.account,
            self.authorized,
            self.spent,
            self.cleared,
            self.spend_evidence,
            {
                k: (r.amount, r.tx_hashes, r.evidence is not None, r.evidence)
                for k, r in self.refunds.items()
            },
        )

    def committed_units(self) -> int:
        return sum(r.amount.units for r in self.refunds.values())

    def refundable(self) -> Money | None:
        if self.spent is None:
            return None
        return Money(self.spent.units - self.committed_units(), self.spent.currency)

    def open_refund(self, refund_id: str) -> ModelRefund | None:
        """The refund, if it may still be submitted or confirmed (requested, not yet confirmed)."""
        refund = self.refunds.get(refund_id)
        allowed = (Status.HELD, Status.CLEARED, Status.SETTLED, Status.REVERSED)
        if self.status in allowed and refund is not None and refund.evidence is None:
            return refund
        return None


def same_currency(amount: Money, other: Money | None) -> bool:
    return other is not None and amount.currency == other.currency


# An expected event: its type and the payload fields to compare (refund ids, amounts).
Expected = tuple[type[e.DomainEvent], dict[str, object]]


@settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
class PaymentMachine(RuleBasedStateMachine):
    @initialize(
        # Held with a refund requested twice as often: most of the rules' edges are there.
        prefix=st.sampled_from([*PREFIXES, "held-with-refund"]),
        units=st.integers(min_value=1, max_value=100 * ONE),
    )
    def start(self, prefix: str, units: int) -> None:
        """Begin NEW, or (so that random walks reach the later states often) a few valid steps in."""
        self.payment = Payment(PAYMENT_ID)
        self.model = Model()
        self.recorded: list[e.DomainEvent] = []
        self.steps = 0
        self.spend_evidences: list[ChainEvidence] = []
        self.submitted_hashes: list[str] = []
        self.reversed_state: tuple[object, ...] | None = None
        self.committed_at_clearing: int | None = None
        with_refund = ("held-with-refund", "refund-confirmed")
        if prefix in ("authorized", "held", *with_refund, "cleared", "reversed", "retracted"):
            self.authorize(units, EURE, correlated=False)
        if prefix in ("held", *with_refund, "chain-first", "cleared", "reversed", "retracted"):
            self.confirm_spend(units, EURE, nudge=None, correlated=False)
        if prefix in with_refund:
            self.request_refund(0, units, EURE, nudge="third" if units >= 3 else 0,
                                correlated=False)
        if prefix == "refund-confirmed":
            self.confirm_refund(0, units, EURE, nudge=0, correlated=False)
        if prefix == "cleared":
            self.clear(units, EURE, nudge=None, anchor="spent", correlated=False)
        if prefix == "reversed":
            self.reverse(correlated=False)
        if prefix == "retracted":
            self.retract_spend("current", correlated=False)
        assert len(self.recorded) == PREFIXES[prefix]
        assert self.model.version == PREFIXES[prefix]

    # -- helpers --------------------------------------------------------------------------------
    @staticmethod
    def amount(
        units: int, currency: Currency, nudge: int | str | None, anchor: Money | None
    ) -> Money:
        """`units` as drawn, or (given a `nudge` and an anchor) a known amount plus `nudge`, or
        a share of it ("half", "third")."""
        if nudge is None or anchor is None:
            return Money(units, currency)
        if nudge == "half":
            return Money(anchor.units // 2, anchor.currency)
        if nudge == "third":
            return Money(anchor.units // 3, anchor.currency)
        assert isinstance(nudge, int)
        if anchor.units + nudge >= 0:
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
        existing = sorted(self.model.refunds)
        if pick < len(NEW_REFUND_IDS) or not existing:
            return NEW_REFUND_IDS[pick % len(NEW_REFUND_IDS)]
        return existing[pick % len(existing)]

    def run(self, cmd: c.Command, expected: list[Expected] | None) -> bool:
        """Handle `cmd`; `expected` is None for a command that must be refused, else the events it
        must record. Returns whether it was accepted (the caller then updates the model)."""
        before = state_of(self.payment)
        hold_before = self.payment.hold
        pending_before = len(self.payment.pending_events)
        try:
            handle(self.payment, cmd)
        except DomainError:
            assert expected is None, f"{type(cmd).__name__} wrongly rejected"
            assert state_of(self.payment) == before
            assert len(self.payment.pending_events) == pending_before
            return False
        assert expected is not None, f"{type(cmd).__name__} wrongly accepted"
        new = self.payment.pending_events[pending_before:]
        assert [type(ev) for ev in new] == [cls for cls, _ in expected]
        for event, (_, fields) in zip(new, expected, strict=True):
            self.recorded.append(event)
            assert event.stream_id == PAYMENT_ID
            assert event.version == len(self.recorded)
            assert event.occurred_at == cmd.at
            assert event.occurred_at.tzinfo is not None
            assert event.causation_id == cmd.command_id
            assert event.correlation_id == (cmd.correlation_id or cmd.command_id)
            for name, value in fields.items():
                assert getattr(event, name) == value, name
        hold_after = self.payment.hold
        if hold_after is not hold_before:
            move = HOLD_MOVES.get((hold_before, hold_after))
            assert move is not None, f"hold moved {hold_before} -> {hold_after}"
            assert any(type(ev) is move for ev in new)
        return True

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
        ok = self.model.status is Status.NEW and units > 0
        if self.run(cmd, [(e.PaymentAuthorized, {"amount": amount})] if ok else None):
            m = self.model
            m.status, m.account, m.authorized = Status.AUTHORIZED, "0xsafe", amount
            m.version += 1

    @rule(units=RAW_UNITS, currency=CURRENCIES, nudge=NUDGES, correlated=st.booleans())
    def confirm_spend(
        self, units: int, currency: Currency, nudge: int | None, correlated: bool
    ) -> None:
        m = self.model
        amount = self.amount(units, currency, nudge, m.authorized)
        cmd = c.ConfirmSpend(
            **self.base(correlated),  # type: ignore[arg-type]
            account="0xsafe",
            amount=amount,
            evidence=evidence(self.steps),
        )
        ok = amount.units > 0 and (
            m.status is Status.NEW
            or (
                m.status is Status.AUTHORIZED
                and same_currency(amount, m.authorized)
                and m.authorized is not None
                and amount.units <= m.authorized.units
            )
        )
        if self.run(cmd, [(e.PaymentSpent, {"amount": amount})] if ok else None):
            m.status, m.hold, m.account = Status.HELD, Hold.PENDING, "0xsafe"
            m.spent, m.spend_evidence = amount, cmd.evidence
            self.spend_evidences.append(cmd.evidence)
            m.version += 1

    @rule(
        units=RAW_UNITS,
        currency=CURRENCIES,
        nudge=SHARES,
        anchor=CLEAR_ANCHORS,
        correlated=st.booleans(),
    )
    def clear(
        self, units: int, currency: Currency, nudge: int | str | None, anchor: str,
        correlated: bool,
    ) -> None:
        m = self.model
        refundable = m.refundable()
        amount = self.amount(units, currency, nudge, m.spent if anchor == "spent" else refundable)
        cmd = c.ClearPayment(**self.base(correlated), amount=amount)  # type: ignore[arg-type]
        ok = (
            m.status is Status.HELD
            and amount.units > 0
            and same_currency(amount, m.spent)
            and refundable is not None
            and amount.units <= refundable.units
        )
        expected: list[Expected] | None = None
        difference: Money | None = None
        if ok:
            assert refundable is not None
            expected = [(e.PaymentCleared, {"amount": amount})]
            if amount.units < refundable.units:
                difference = Money(refundable.units - amount.units, amount.currency)
                expected.append((e.RefundRequested, {
                    "refund_id": f"{cmd.command_id}:difference", "amount": difference}))
        if self.run(cmd, expected):
            m.status, m.hold, m.cleared = Status.CLEARED, Hold.POSTED, amount
            if difference is not None:
                m.refunds[f"{cmd.command_id}:difference"] = ModelRefund(difference)
            m.version += 1 + (difference is not None)
            self.committed_at_clearing = m.committed_units()

    @rule(correlated=st.booleans())
    def reverse(self, correlated: bool) -> None:
        m = self.model
        cmd = c.ReversePayment(**self.base(correlated), reason="expired")  # type: ignore[arg-type]
        ok = m.status in (Status.AUTHORIZED, Status.HELD)
        refundable = m.refundable()
        refund = refundable if refundable is not None and refundable.units > 0 else None
        expected: list[Expected] | None = None
        if ok:
            expected = [(e.PaymentReversed, {"reason": "expired"})]
            if refund is not None:
                expected.append((e.RefundRequested, {
                    "refund_id": f"{cmd.command_id}:reversal", "amount": refund}))
        if self.run(cmd, expected):
            m.status = Status.REVERSED
            if m.hold is Hold.PENDING:
                m.hold = Hold.VOIDED
            if refund is not None:
                m.refunds[f"{cmd.command_id}:reversal"] = ModelRefund(refund)
            m.version += 1 + (refund is not None)
            self.reversed_state = self.lifecycle_state()

    @rule(
        pick=REFUND_PICKS,
        units=RAW_UNITS,
        currency=CURRENCIES,
        nudge=SHARES,
        correlated=st.booleans(),
    )
    def request_refund(
        self, pick: int, units: int, currency: Currency, nudge: int | str | None,
        correlated: bool,
    ) -> None:
        m = self.model
        refund_id = self.refund_id(pick)
        refundable = m.refundable()
        amount = self.amount(units, currency, nudge, refundable)
        cmd = c.RequestRefund(
            **self.base(correlated),  # type: ignore[arg-type]
            refund_id=refund_id,
            amount=amount,
            reason="merchant credit",
        )
        ok = (
            m.status in (Status.HELD, Status.CLEARED, Status.SETTLED)
            and amount.units > 0
            and refund_id not in m.refunds
            and same_currency(amount, refundable)
            and refundable is not None
            and amount.units <= refundable.units
        )
        expected: list[Expected] = [(e.RefundRequested, {"refund_id": refund_id, "amount": amount})]
        if self.run(cmd, expected if ok else None):
            m.refunds[refund_id] = ModelRefund(amount)
            m.version += 1

    @rule(pick=REFUND_PICKS, hash_pick=HASH_PICKS, correlated=st.booleans())
    def record_refund_submission(self, pick: int, hash_pick: str, correlated: bool) -> None:
        m = self.model
        refund_id = self.refund_id(pick)
        known = m.refunds.get(refund_id)
        base = self.base(correlated)
        if hash_pick == "same" and known is not None and known.tx_hashes:
            tx = known.tx_hashes[self.steps % len(known.tx_hashes)]
        elif hash_pick == "other" and self.submitted_hashes:
            tx = self.submitted_hashes[self.steps % len(self.submitted_hashes)]
        else:
            tx = tx_hash(self.steps)
        cmd = c.RecordRefundSubmission(
            **base,  # type: ignore[arg-type]
            refund_id=refund_id,
            tx_hash=tx,
        )
        refund = m.open_refund(refund_id)
        ok = refund is not None and tx not in refund.tx_hashes
        expected: list[Expected] = [(e.RefundSubmitted, {"refund_id": refund_id, "tx_hash": tx})]
        if self.run(cmd, expected if ok else None):
            assert refund is not None
            refund.tx_hashes = (*refund.tx_hashes, tx)
            self.submitted_hashes.append(tx)
            m.version += 1

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
        m = self.model
        refund_id = self.refund_id(pick)
        known = m.refunds.get(refund_id)
        amount = self.amount(units, currency, nudge, known.amount if known else None)
        cmd = c.ConfirmRefund(
            **self.base(correlated),  # type: ignore[arg-type]
            refund_id=refund_id,
            amount=amount,
            evidence=evidence(self.steps),
        )
        refund = m.open_refund(refund_id)
        ok = refund is not None and amount == refund.amount
        expected: list[Expected] = [(e.PaymentRefunded, {
            "refund_id": refund_id, "amount": amount, "evidence": cmd.evidence})]
        if self.run(cmd, expected if ok else None):
            assert refund is not None
            refund.evidence = cmd.evidence
            m.version += 1

    @rule(which=EVIDENCE_PICKS, correlated=st.booleans())
    def retract_spend(self, which: str, correlated: bool) -> None:
        m = self.model
        base = self.base(correlated)
        proof = evidence(10_000 + self.steps)
        if which == "current" and m.spend_evidence is not None:
            proof = m.spend_evidence
        elif which == "stale" and self.spend_evidences:
            proof = self.spend_evidences[0]
        cmd = c.RetractSpend(**base, evidence=proof, reason="reorg")  # type: ignore[arg-type]
        ok = m.status is Status.HELD and proof == m.spend_evidence and not m.refunds
        expected: list[Expected] = [(e.SpendRetracted, {"evidence": proof})]
        if self.run(cmd, expected if ok else None):
            m.status = Status.AUTHORIZED if m.authorized is not None else Status.NEW
            m.hold, m.spent, m.spend_evidence = Hold.NONE, None, None
            m.version += 1

    @rule(pick=REFUND_PICKS, which=EVIDENCE_PICKS, correlated=st.booleans())
    def retract_refund(self, pick: int, which: str, correlated: bool) -> None:
        m = self.model
        refund_id = self.refund_id(pick)
        known = m.refunds.get(refund_id)
        base = self.base(correlated)
        confirmations = [r.evidence for r in m.refunds.values() if r.evidence is not None]
        proof = evidence(10_000 + self.steps)
        if which == "current" and known is not None and known.evidence is not None:
            proof = known.evidence
        elif which == "stale" and confirmations:  # some confirmed refund's log, maybe not this one's
            proof = confirmations[self.steps % len(confirmations)]
        cmd = c.RetractRefund(
            **base,  # type: ignore[arg-type]
            refund_id=refund_id,
            evidence=proof,
            reason="reorg",
        )
        ok = known is not None and known.evidence is not None and known.evidence == proof
        expected: list[Expected] = [(e.RefundRetracted, {
            "refund_id": refund_id, "evidence": proof,
            "amount": known.amount if known else None})]
        if self.run(cmd, expected if ok else None):
            assert known is not None
            known.evidence = None
            m.version += 1

    @rule(batch=st.sampled_from(["b1", "b2"]), correlated=st.booleans())
    def settle(self, batch: str, correlated: bool) -> None:
        m = self.model
        cmd = c.SettlePayment(**self.base(correlated), batch_id=batch)  # type: ignore[arg-type]
        ok = m.status is Status.CLEARED
        if self.run(cmd, [(e.PaymentSettled, {"batch_id": batch})] if ok else None):
            m.status = Status.SETTLED
            m.version += 1

    # -- invariants -------------------------------------------------------------------------------
    def lifecycle_state(self) -> tuple[object, ...]:
        """What a reversal freezes: everything but the progress of refunds already in flight."""
        p = self.payment
        return (p.status, p.hold, p.account, p.authorized, p.spent, p.cleared, p.spend_evidence,
                {k: r.amount for k, r in p.refunds.items()})

    @invariant()
    def the_model_agrees(self) -> None:
        assert state_of(self.payment) == self.model.state()

    @invariant()
    def refunds_never_exceed_the_spend(self) -> None:
        payment = self.payment
        if payment.spent is None:
            # No spend (never, or retracted by a reorg): nothing can have been refunded.
            assert payment.refunds == {}
            assert payment.refunded is None
            assert payment.committed_refunds is None
            assert payment.refundable is None
            return
        committed, refunded = payment.committed_refunds, payment.refunded
        assert committed is not None
        assert refunded is not None
        # Confirmed plus in flight never exceed the spend; confirmed alone neither.
        assert Money.zero(payment.spent.currency) <= refunded <= committed <= payment.spent
        assert payment.refundable == payment.spent - committed
        assert refunded.units == sum(
            r.amount.units for r in payment.refunds.values() if r.confirmed)
        for refund in payment.refunds.values():
            assert refund.amount.units > 0
            assert refund.confirmed == (refund.evidence is not None)
            assert len(set(refund.tx_hashes)) == len(refund.tx_hashes)

    @invariant()
    def refunds_after_clearing_never_exceed_the_cleared_amount(self) -> None:
        payment = self.payment
        if payment.cleared is None:
            assert self.committed_at_clearing is None
            return
        assert payment.spent is not None and self.committed_at_clearing is not None
        # At clearing, everything spent beyond the cleared amount was committed to refunds
        # (earlier refunds plus the automatic difference), ...
        assert self.committed_at_clearing == payment.spent.units - payment.cleared.units
        # ... so refunds requested since never exceed what was cleared.
        committed = payment.committed_refunds
        assert committed is not None
        assert 0 <= committed.units - self.committed_at_clearing <= payment.cleared.units
        assert payment.cleared <= payment.spent

    @invariant()
    def the_hold_matches_the_status(self) -> None:
        assert self.payment.hold in HOLD_OF_STATUS[self.payment.status]

    @invariant()
    def a_reversed_payment_never_leaves_reversed(self) -> None:
        if self.reversed_state is not None:
            assert self.payment.status is Status.REVERSED
            assert self.lifecycle_state() == self.reversed_state

    @invariant()
    def version_counts_the_recorded_events(self) -> None:
        assert self.payment.version == len(self.recorded) == self.model.version
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
