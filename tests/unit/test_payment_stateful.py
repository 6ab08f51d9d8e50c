"""One Payment driven through random command sequences; its invariants hold after every step.

Every rule builds a command from random (often boundary) values and predicts, from an independent
model of the payment kept by the test, whether the command should be accepted and which events it
records; then it checks the aggregate agreed. Accepted commands record exactly the predicted events
(a clearing below what is left, or a reversal of a spend, records a refund too); rejected ones raise
a DomainError and change neither state nor version. After every step the model and the aggregate
agree, and the aggregate rehydrated from its events equals the live one.

The card network's messages run in the same walk against a second model (`NetModel`): approvals,
declines, advices, increments, reversals, expiries, clearings (parked before their authorization),
force posts, financial authorizations, returns and their reversals, and replays of any message
already recorded. The machine predicts each one's events and the authorized, held, cleared,
reversed, released and returned totals; the hold opens and resolves at most once, everything held
is accounted for, returns never exceed what was cleared, and a replay records nothing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from domain import commands as c
from domain import events as e
from domain.errors import DomainError
from domain.events import ChainEvidence
from domain.money import EUR, Currency, Money
from domain.payment import Hold, Network, Payment, Status, handle

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

# Full reversals and final clearings end the hold; drawn less often, so walks stay open longer.
MOSTLY_FALSE = st.sampled_from([False, False, True])

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
    "parked": 1,
    "declined": 1,
    "force-posted": 1,
    "net-cleared": 2,
    "net-partly-cleared": 2,
}

# Every change of the hold: it is placed by a spend, resolved once (posted or voided), and removed
# before it resolved only when a reorg retracts the spend.
HOLD_MOVES = {
    (Hold.NONE, Hold.PENDING): e.PaymentSpent,
    (Hold.PENDING, Hold.POSTED): e.PaymentCleared,
    (Hold.PENDING, Hold.VOIDED): e.PaymentReversed,
    (Hold.PENDING, Hold.NONE): e.SpendRetracted,
    # the network's final amount before the spend landed, or after a reversal
    (Hold.NONE, Hold.POSTED): e.PaymentCleared,
    (Hold.VOIDED, Hold.POSTED): e.PaymentCleared,
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


# An expected event: its type and the payload fields to compare (refund ids, amounts).
Expected = tuple[type[e.DomainEvent], dict[str, object]]


def network_of(payment: Payment) -> tuple[object, ...]:
    """The network side in comparable form."""
    n = payment.network
    return (n.status, n.currency, n.account, n.merchant, n.mcc, n.expires_at, n.hold_opened,
            n.authorized_units, n.held_units, n.posted_units, n.reversed_units,
            n.released_units, n.cleared_units, n.over_cleared_units, n.returned_units,
            frozenset(n.messages), tuple(n.parked))


@dataclass
class NetModel:
    """What the test expects of the network side, in integer units."""

    status: Network = Network.NONE
    currency: Currency | None = None
    expires_at: datetime | None = None
    hold_opened: bool = False
    authorized: int = 0
    held: int = 0
    posted: int = 0
    reversed: int = 0
    released: int = 0
    cleared: int = 0
    over_cleared: int = 0
    returned: int = 0
    messages: set[str] = field(default_factory=set)
    parked: list[tuple[str, Money, bool, datetime]] = field(default_factory=list)

    def known_currency(self) -> Currency | None:
        if self.currency is not None:
            return self.currency
        return self.parked[0][1].currency if self.parked else None

    def fits(self, amount: Money) -> bool:
        """Positive and in the payment's currency (any, while none is known)."""
        known = self.known_currency()
        return amount.units > 0 and (known is None or amount.currency == known)

    def state(self) -> tuple[object, ...]:
        return (self.status, self.currency, self.expires_at, self.hold_opened, self.authorized,
                self.held, self.posted, self.reversed, self.released, self.cleared,
                self.over_cleared, self.returned, frozenset(self.messages),
                tuple(self.parked))

    def clearing(self, clearing_id: str, amount: Money, final: bool) -> Expected:
        """The ClearingRecorded a clearing of `amount` records now."""
        if self.status is Network.AUTHORIZED:
            basis, from_hold = "hold", min(amount.units, self.held)
            released = self.held - from_hold if final else 0
        else:
            basis, from_hold, released = self.status.value, 0, 0
        cur = amount.currency
        return (e.ClearingRecorded, {
            "clearing_id": clearing_id, "amount": amount, "final": final, "basis": basis,
            "from_hold": Money(from_hold, cur), "beyond_hold": Money(amount.units - from_hold, cur),
            "released": Money(released, cur), "held": Money(self.held - from_hold - released, cur)})

    def apply_clearing(self, fields: dict[str, object]) -> None:
        amount, from_hold, released, held = (
            fields["amount"], fields["from_hold"], fields["released"], fields["held"])
        assert isinstance(amount, Money) and isinstance(from_hold, Money)
        assert isinstance(released, Money) and isinstance(held, Money)
        self.cleared += amount.units
        self.posted += from_hold.units
        self.released += released.units
        if fields["basis"] == "hold":
            self.over_cleared += amount.units - from_hold.units
        self.held = held.units
        self.messages.add(str(fields["clearing_id"]))
        self.parked = [p for p in self.parked if p[0] != fields["clearing_id"]]
        if fields["final"]:
            self.status = Network.CLEARED

    def parked_clearings(self) -> list[Expected]:
        """What the clearings waiting for the authorization record once it arrived; applies them
        to the model one by one, as the aggregate does."""
        expected = []
        for clearing_id, amount, final, _ in list(self.parked):
            event = self.clearing(clearing_id, amount, final)
            self.apply_clearing(event[1])
            expected.append(event)
        return expected


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
    spends: dict[ChainEvidence, Money] = field(default_factory=dict)
    ever_spent: int = 0
    """Every spend ever confirmed, retracted or not: refunds never exceed it."""

    def spends_changed(self, currency: Currency) -> None:
        self.spent = Money(sum(m.units for m in self.spends.values()), currency)
        self.spend_evidence = next(iter(self.spends), None)

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
        self.net = NetModel()
        self.sent: list[c.Command] = []  # network messages that recorded events, for replays
        self.hold_opens = self.hold_resolutions = 0
        if prefix == "parked":
            self.record_clearing(units, EURE, nudge=None, final=True, correlated=False)
        if prefix == "declined":
            self.decline(units, EURE, correlated=False)
        if prefix == "force-posted":
            self.force_post(units, EURE, financial=units % 2 == 0, correlated=False)
        if prefix in ("net-cleared", "net-partly-cleared"):
            self.authorize(units, EURE, correlated=False)
            self.record_clearing(units, EURE, nudge="half" if units >= 2 else None,
                                 final=prefix == "net-cleared", correlated=False)
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
        network_before = network_of(self.payment)
        net_status_before = self.payment.network.status
        opened_before = self.payment.network.hold_opened
        hold_before = self.payment.hold
        pending_before = len(self.payment.pending_events)
        try:
            handle(self.payment, cmd)
        except DomainError:
            assert expected is None, f"{type(cmd).__name__} wrongly rejected"
            assert state_of(self.payment) == before
            assert network_of(self.payment) == network_before
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
        if not new:
            assert network_of(self.payment) == network_before, "a no-op changed the payment"
        net_status_after = self.payment.network.status
        if net_status_before is Network.AUTHORIZED and net_status_after is not Network.AUTHORIZED:
            self.hold_resolutions += 1
        if self.payment.network.hold_opened and not opened_before:
            self.hold_opens += 1
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
        net = copy.deepcopy(self.net)
        ok = (self.model.status is Status.NEW and net.status is Network.NONE
              and net.fits(amount))
        expected: list[Expected] | None = None
        if ok:
            net.status, net.currency, net.hold_opened = Network.AUTHORIZED, currency, True
            net.authorized = net.held = units
            net.expires_at = cmd.expires_at
            net.messages.add(cmd.command_id)
            expected = [(e.PaymentAuthorized, {"amount": amount}), *net.parked_clearings()]
        if self.run(cmd, expected):
            m = self.model
            m.status, m.account, m.authorized = Status.AUTHORIZED, "0xsafe", amount
            m.version += len(expected or ())
            self.net = net
            self.sent.append(cmd)

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
        first = m.status in (Status.NEW, Status.AUTHORIZED)
        known = m.spent or m.authorized
        ok = amount.units > 0 and (
            m.status is Status.NEW
            or (
                m.status is Status.AUTHORIZED
                and same_currency(amount, m.authorized)
                and m.authorized is not None
                and amount.units <= m.authorized.units
            )
            # later: never refused for the state (money on chain is never hidden)
            or (not first and (m.authorized is not None or self.net.hold_opened)
                and (known is None or amount.currency == known.currency))
        )
        expected: list[Expected] | None = [(e.PaymentSpent, {"amount": amount})] if ok else None
        refund: Money | None = None
        if ok and m.status is Status.REVERSED:
            left = (m.spent.units if m.spent else 0) + amount.units - m.committed_units()
            if left > 0:
                refund = Money(left, amount.currency)
                assert expected is not None
                expected.append((e.RefundRequested, {
                    "refund_id": f"{cmd.command_id}:after-reversal", "amount": refund,
                    "reason": "spend after reversal"}))
        if self.run(cmd, expected):
            if first:
                m.status, m.hold = Status.HELD, Hold.PENDING
            m.account = "0xsafe"
            m.spends[cmd.evidence] = amount
            m.ever_spent += amount.units
            m.spends_changed(amount.currency)
            if refund is not None:
                m.refunds[f"{cmd.command_id}:after-reversal"] = ModelRefund(refund)
            self.spend_evidences.append(cmd.evidence)
            m.version += 1 + (refund is not None)

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
        known = m.spent or m.authorized
        ok = (
            m.status in (*self.approved(), Status.HELD, Status.REVERSED)
            and amount.units > 0
            and (known is None or amount.currency == known.currency)
        )
        expected: list[Expected] | None = None
        difference: Money | None = None
        if ok:
            expected = [(e.PaymentCleared, {"amount": amount})]
            if refundable is not None and amount.units < refundable.units:
                difference = Money(refundable.units - amount.units, amount.currency)
                expected.append((e.RefundRequested, {
                    "refund_id": f"{cmd.command_id}:difference", "amount": difference}))
        if self.run(cmd, expected):
            m.status, m.hold, m.cleared = Status.CLEARED, Hold.POSTED, amount
            if difference is not None:
                m.refunds[f"{cmd.command_id}:difference"] = ModelRefund(difference)
            m.version += 1 + (difference is not None)
            self.committed_at_clearing = (m.spent.units if m.spent else 0) - m.committed_units()

    @rule(correlated=st.booleans())
    def reverse(self, correlated: bool) -> None:
        m = self.model
        cmd = c.ReversePayment(**self.base(correlated), reason="expired")  # type: ignore[arg-type]
        ok = m.status in (*self.approved(), Status.HELD)
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
        ok = proof in m.spends
        expected: list[Expected] = [(e.SpendRetracted, {"evidence": proof})]
        if self.run(cmd, expected if ok else None):
            gone = m.spends.pop(proof)
            if not m.spends and m.status is Status.HELD and not m.refunds:
                m.status = Status.AUTHORIZED if m.authorized is not None else Status.NEW
                m.hold, m.spent, m.spend_evidence = Hold.NONE, None, None
            else:
                m.spends_changed(gone.currency)
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

    # -- network rules ----------------------------------------------------------------------------
    def accepted(self, cmd: c.Command, expected: list[Expected] | None, net: NetModel) -> bool:
        """Run a network command; on acceptance take `net` (the model after it) as the model."""
        if not self.run(cmd, expected):
            return False
        assert expected is not None
        self.model.version += len(expected)
        if expected:
            net.messages.add(cmd.command_id)
            self.sent.append(cmd)
        self.net = net
        return True

    def net_amount(self, units: int, currency: Currency, nudge: int | str | None,
                   anchor: int) -> Money:
        known = self.net.known_currency()
        return self.amount(units, currency, nudge,
                           Money(anchor, known) if known is not None and anchor > 0 else None)

    @rule(units=RAW_UNITS, currency=CURRENCIES, correlated=st.booleans())
    def decline(self, units: int, currency: Currency, correlated: bool) -> None:
        amount = Money(units, currency)
        cmd = c.DeclineAuthorization(**self.base(correlated), account="0xsafe",  # type: ignore[arg-type]
                                     amount=amount, merchant="Bakery", mcc="5462",
                                     reason="insufficient_funds")
        net = copy.deepcopy(self.net)
        expected: list[Expected] | None = None
        if net.fits(amount) and net.status in (Network.NONE, Network.AUTHORIZED):
            expected = [(e.AuthorizationDeclined, {
                "amount": amount, "held": Money(net.held, currency)})]
            net.messages.add(cmd.command_id)
            if net.status is Network.NONE:
                net.status, net.currency = Network.DECLINED, currency
                expected += net.parked_clearings()
        self.accepted(cmd, expected, net)

    @rule(units=RAW_UNITS, currency=CURRENCIES, nudge=SHARES, approved=st.booleans(),
          correlated=st.booleans())
    def advise(self, units: int, currency: Currency, nudge: int | str | None, approved: bool,
               correlated: bool) -> None:
        net = copy.deepcopy(self.net)
        amount = self.net_amount(units, currency, nudge, net.authorized)
        cmd = c.AdviseAuthorization(**self.base(correlated), account="0xsafe",  # type: ignore[arg-type]
                                    amount=amount, merchant="Fuel", mcc="5542",
                                    expires_at=T0 + timedelta(days=7), approved=approved)
        open_ = net.status in (Network.NONE, Network.AUTHORIZED) or (
            net.status is Network.DECLINED and not net.hold_opened)
        expected: list[Expected] | None = None
        if net.fits(amount) and open_:
            cur = amount.currency
            was_new = net.status is Network.NONE
            released = 0
            if approved:
                consumed = net.authorized - net.held
                held = (max(amount.units - consumed, 0) if net.status is Network.AUTHORIZED
                        else amount.units)
                if net.status is not Network.AUTHORIZED:
                    net.authorized = 0
                    consumed = 0
                net.authorized = consumed + held
                net.status, net.hold_opened, net.expires_at = (
                    Network.AUTHORIZED, True, cmd.expires_at)
            else:
                held, released = 0, net.held
                net.status = Network.DECLINED
                net.released += released
            net.held, net.currency = held, cur
            net.messages.add(cmd.command_id)
            expected = [(e.AuthorizationAdvised, {
                "amount": amount, "approved": approved, "held": Money(held, cur),
                "released": Money(released, cur)})]
            if was_new:
                expected += net.parked_clearings()
        self.accepted(cmd, expected, net)

    @rule(units=RAW_UNITS, currency=CURRENCIES, extend=st.sampled_from([None, 1, -1]),
          correlated=st.booleans())
    def increase(self, units: int, currency: Currency, extend: int | None,
                 correlated: bool) -> None:
        net = copy.deepcopy(self.net)
        amount = Money(units, currency)
        base_expiry = net.expires_at or T0
        new_expiry = None if extend is None else base_expiry + timedelta(days=extend)
        cmd = c.IncreaseAuthorization(**self.base(correlated), amount=amount,  # type: ignore[arg-type]
                                      expires_at=new_expiry)
        expected: list[Expected] | None = None
        if net.status is Network.AUTHORIZED and net.fits(amount):
            net.authorized += units
            net.held += units
            if new_expiry is not None and net.expires_at is not None:
                net.expires_at = max(net.expires_at, new_expiry)
            expected = [(e.AuthorizationIncreased, {
                "amount": amount, "authorized": Money(net.authorized, currency),
                "held": Money(net.held, currency), "expires_at": net.expires_at})]
        self.accepted(cmd, expected, net)

    @rule(units=RAW_UNITS, currency=CURRENCIES, nudge=SHARES, full=MOSTLY_FALSE,
          correlated=st.booleans())
    def reverse_authorization(self, units: int, currency: Currency, nudge: int | str | None,
                              full: bool, correlated: bool) -> None:
        net = copy.deepcopy(self.net)
        amount = None if full else self.net_amount(units, currency, nudge, net.held)
        cmd = c.ReverseAuthorization(**self.base(correlated), amount=amount)  # type: ignore[arg-type]
        expected: list[Expected] | None = None
        if net.status is not Network.NONE and (amount is None or net.fits(amount)):
            assert net.currency is not None
            asked = net.held if amount is None else amount.units
            released = min(asked, net.held) if net.status is Network.AUTHORIZED else 0
            is_full = amount is None or released == net.held
            expected = [(e.AuthorizationReversed, {
                "amount": Money(asked, net.currency), "full": is_full,
                "released": Money(released, net.currency),
                "held": Money(net.held - released, net.currency)})]
            if net.status is Network.AUTHORIZED:
                net.held -= released
                net.reversed += released
                if is_full:
                    net.status = Network.REVERSED
        self.accepted(cmd, expected, net)

    @rule(when=st.sampled_from(["early", "on time", "late"]), correlated=st.booleans())
    def expire(self, when: str, correlated: bool) -> None:
        net = copy.deepcopy(self.net)
        base = self.base(correlated)
        deadline = net.expires_at or T0
        base["at"] = deadline + {"early": -timedelta(seconds=1), "on time": timedelta(0),
                                 "late": timedelta(days=3)}[when]
        cmd = c.ExpireAuthorization(**base)  # type: ignore[arg-type]
        expected: list[Expected] | None = None
        if net.status is Network.AUTHORIZED and when != "early":
            assert net.currency is not None
            expected = [(e.AuthorizationExpired, {"released": Money(net.held, net.currency)})]
            net.released += net.held
            net.status, net.held = Network.EXPIRED, 0
        elif net.status not in (Network.NONE, Network.AUTHORIZED):
            expected = []  # the hold already ended: nothing to release, nothing recorded
        self.accepted(cmd, expected, net)

    @rule(units=RAW_UNITS, currency=CURRENCIES, nudge=SHARES, final=MOSTLY_FALSE,
          correlated=st.booleans())
    def record_clearing(self, units: int, currency: Currency, nudge: int | str | None,
                        final: bool, correlated: bool) -> None:
        net = copy.deepcopy(self.net)
        amount = self.net_amount(units, currency, nudge, net.held or net.authorized)
        cmd = c.RecordClearing(**self.base(correlated), amount=amount,  # type: ignore[arg-type]
                               final=final)
        expected: list[Expected] | None = None
        if net.fits(amount):
            if net.status is Network.NONE:
                expected = [(e.ClearingParked, {"amount": amount, "final": final})]
                assert isinstance(cmd.at, datetime)
                net.parked.append((cmd.command_id, amount, final, cmd.at))
            else:
                event = net.clearing(cmd.command_id, amount, final)
                net.apply_clearing(event[1])
                expected = [event]
        self.accepted(cmd, expected, net)

    @rule(units=RAW_UNITS, currency=CURRENCIES, financial=st.booleans(),
          correlated=st.booleans())
    def force_post(self, units: int, currency: Currency, financial: bool,
                   correlated: bool) -> None:
        net = copy.deepcopy(self.net)
        amount = Money(units, currency)
        kind = c.RecordFinancialAuthorization if financial else c.ForcePost
        event_type = e.FinancialAuthorizationRecorded if financial else e.PaymentForcePosted
        cmd = kind(**self.base(correlated), account="0xsafe",  # type: ignore[arg-type]
                   amount=amount, merchant="Airline", mcc="3000")
        expected: list[Expected] | None = None
        if (units > 0 and net.status is Network.NONE and not net.parked
                and self.model.status is Status.NEW):
            expected = [(event_type, {"amount": amount})]
            net.status, net.currency, net.cleared = Network.CLEARED, currency, units
        self.accepted(cmd, expected, net)

    @rule(units=RAW_UNITS, currency=CURRENCIES, nudge=SHARES, correlated=st.booleans())
    def record_return(self, units: int, currency: Currency, nudge: int | str | None,
                      correlated: bool) -> None:
        net = copy.deepcopy(self.net)
        amount = self.net_amount(units, currency, nudge, net.cleared - net.returned)
        cmd = c.RecordReturn(**self.base(correlated), amount=amount)  # type: ignore[arg-type]
        expected: list[Expected] | None = None
        if (net.currency is not None and net.fits(amount)
                and amount.units <= net.cleared - net.returned):
            net.returned += amount.units
            expected = [(e.ReturnRecorded, {
                "amount": amount, "returned": Money(net.returned, net.currency)})]
        self.accepted(cmd, expected, net)

    @rule(units=RAW_UNITS, currency=CURRENCIES, nudge=SHARES, correlated=st.booleans())
    def reverse_return(self, units: int, currency: Currency, nudge: int | str | None,
                       correlated: bool) -> None:
        net = copy.deepcopy(self.net)
        amount = self.net_amount(units, currency, nudge, net.returned)
        cmd = c.ReverseReturn(**self.base(correlated), amount=amount)  # type: ignore[arg-type]
        expected: list[Expected] | None = None
        if net.currency is not None and net.fits(amount) and amount.units <= net.returned:
            net.returned -= amount.units
            expected = [(e.ReturnReversed, {
                "amount": amount, "returned": Money(net.returned, net.currency)})]
        self.accepted(cmd, expected, net)

    @rule(pick=st.integers(min_value=0, max_value=50))
    def replay(self, pick: int) -> None:
        """The network (or our API after a crash) sends a recorded message again."""
        if not self.sent:
            return
        cmd = self.sent[pick % len(self.sent)]
        assert cmd.command_id in self.net.messages
        self.run(cmd, [])

    def approved(self) -> tuple[Status, ...]:
        """`NEW` is approved too once the network's stand-in advice opened the hold."""
        return (Status.AUTHORIZED, Status.NEW) if self.net.hold_opened else (Status.AUTHORIZED,)

    # -- invariants -------------------------------------------------------------------------------
    def lifecycle_state(self) -> tuple[object, ...]:
        """What a reversal freezes: everything but the progress of refunds already in flight."""
        p = self.payment
        return (p.status, p.hold, p.account, p.authorized, p.spent, p.cleared, p.spend_evidence,
                {k: r.amount for k, r in p.refunds.items()})

    @invariant()
    def the_network_model_agrees(self) -> None:
        n, net = self.payment.network, self.net
        assert (n.status, n.currency, n.expires_at, n.hold_opened, n.authorized_units,
                n.held_units, n.posted_units, n.reversed_units, n.released_units,
                n.cleared_units, n.over_cleared_units, n.returned_units, frozenset(n.messages),
                tuple((p.message_id, p.amount, p.final, p.at) for p in n.parked)) == net.state()
        assert self.payment.parked_since() == min((p[3] for p in net.parked), default=None)

    @invariant()
    def everything_held_is_accounted_for(self) -> None:
        n = self.payment.network
        assert n.held_units >= 0
        assert n.authorized_units == (n.held_units + n.posted_units + n.reversed_units
                                      + n.released_units)
        assert n.posted_units <= n.cleared_units
        if n.status is not Network.AUTHORIZED:
            assert n.held_units == 0
        if n.parked:
            assert n.status is Network.NONE

    @invariant()
    def the_hold_opens_and_resolves_at_most_once(self) -> None:
        assert self.hold_opens == int(self.payment.network.hold_opened) <= 1
        assert self.hold_resolutions <= 1

    @invariant()
    def returns_never_exceed_net_cleared(self) -> None:
        n = self.payment.network
        assert 0 <= n.returned_units <= n.cleared_units

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
        # Confirmed plus in flight never exceed what was ever spent; confirmed alone neither
        # (a reorg may take a spend away for a while: the saga sends it again).
        assert Money.zero(payment.spent.currency) <= refunded <= committed
        assert committed.units <= self.model.ever_spent
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
        # (`committed_at_clearing`: what the Safe had paid net of refunds right after clearing)
        # At clearing, everything collected beyond the cleared amount was committed to refunds
        # (earlier refunds plus the automatic difference); a shortfall is the saga's to collect.
        assert self.committed_at_clearing is not None
        assert self.committed_at_clearing <= payment.cleared.units

    @invariant()
    def the_hold_matches_the_status(self) -> None:
        assert self.payment.hold in HOLD_OF_STATUS[self.payment.status]

    @invariant()
    def a_reversed_payment_never_leaves_reversed(self) -> None:
        """... except for a clearing the network sent anyway (it cannot be refused); spends
        landing late and reorgs change only what was spent and refunded."""
        if self.reversed_state is not None:
            assert self.payment.status in (Status.REVERSED, Status.CLEARED, Status.SETTLED)
            assert self.lifecycle_state()[3] == self.reversed_state[3]  # authorized

    @invariant()
    def version_counts_the_recorded_events(self) -> None:
        assert self.payment.version == len(self.recorded) == self.model.version
        assert self.payment.pending_events == self.recorded
        assert [ev.version for ev in self.recorded] == list(range(1, len(self.recorded) + 1))

    @invariant()
    def rehydrating_gives_the_live_state(self) -> None:
        again = Payment.rehydrate(PAYMENT_ID, list(self.recorded))
        assert state_of(again) == state_of(self.payment)
        assert network_of(again) == network_of(self.payment)
        assert again.pending_events == []
        assert (again.refunded, again.committed_refunds, again.refundable) == (
            self.payment.refunded,
            self.payment.committed_refunds,
            self.payment.refundable,
        )


TestPaymentStateful = PaymentMachine.TestCase


class NetworkMachine(PaymentMachine):
    """The same payment and models, walked by the card network's messages only (our approval
    included), so that increments, advices on an open hold and returns come up often."""

    @initialize(
        prefix=st.sampled_from(["authorized", "new", "net-partly-cleared", "authorized", "parked",
                                "declined", "authorized", "net-cleared", "force-posted"]),
        units=st.integers(min_value=1, max_value=100 * ONE),
    )
    def start(self, prefix: str, units: int) -> None:
        super().start(prefix, units)

    # The chain's commands stay callable (the prefixes use them) but are not rules here.
    def confirm_spend(self, *args: Any, **kwargs: Any) -> None:
        super().confirm_spend(*args, **kwargs)

    def clear(self, *args: Any, **kwargs: Any) -> None:
        super().clear(*args, **kwargs)

    def reverse(self, *args: Any, **kwargs: Any) -> None:
        super().reverse(*args, **kwargs)

    def request_refund(self, *args: Any, **kwargs: Any) -> None:
        super().request_refund(*args, **kwargs)

    def record_refund_submission(self, *args: Any, **kwargs: Any) -> None:
        super().record_refund_submission(*args, **kwargs)

    def confirm_refund(self, *args: Any, **kwargs: Any) -> None:
        super().confirm_refund(*args, **kwargs)

    def retract_spend(self, *args: Any, **kwargs: Any) -> None:
        super().retract_spend(*args, **kwargs)

    def retract_refund(self, *args: Any, **kwargs: Any) -> None:
        super().retract_refund(*args, **kwargs)

    def settle(self, *args: Any, **kwargs: Any) -> None:
        super().settle(*args, **kwargs)


TestNetworkStateful = NetworkMachine.TestCase
