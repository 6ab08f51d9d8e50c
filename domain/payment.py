"""The Payment aggregate: one card payment from authorization to settlement.

Command methods check the invariants and record past-tense events; state changes only in `_apply`.
Invariants:
- refunds (requested and confirmed together) never exceed what was spent on chain, and after
  clearing never exceed what was cleared (the difference is refunded automatically);
- the hold resolves at most once (posted by clearing, or voided by a reversal); a reorg that takes
  the spend away removes the hold before it resolved;
- a reversed payment takes no new lifecycle command; only refunds already in flight (including the
  reversal's own refund of what was spent) go on being submitted, confirmed or retracted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain import commands as c
from domain import events as e
from domain.errors import InvalidTransition, NaiveTimestamp, RefundExceedsCapture
from domain.money import Money


class Status(enum.StrEnum):
    NEW = "new"
    AUTHORIZED = "authorized"
    HELD = "held"
    CLEARED = "cleared"
    SETTLED = "settled"
    REVERSED = "reversed"


class Hold(enum.StrEnum):
    NONE = "none"
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"


@dataclass(slots=True)
class _Refund:
    amount: Money
    tx_hashes: tuple[str, ...] = ()
    confirmed: bool = False
    evidence: e.ChainEvidence | None = None


class Payment:
    def __init__(self, payment_id: str) -> None:
        self.id = payment_id
        self.version = 0
        self.status = Status.NEW
        self.hold = Hold.NONE
        self.account: str | None = None
        self.authorized: Money | None = None
        self.spent: Money | None = None
        self.cleared: Money | None = None
        self.spend_evidence: e.ChainEvidence | None = None
        self.refunds: dict[str, _Refund] = {}
        self.pending_events: list[e.DomainEvent] = []

    # -- reconstitution -------------------------------------------------------------------------
    @classmethod
    def rehydrate(cls, payment_id: str, history: list[e.DomainEvent]) -> Payment:
        payment = cls(payment_id)
        for event in history:
            payment._apply(event)
        return payment

    # -- derived figures ------------------------------------------------------------------------
    @property
    def refunded(self) -> Money | None:
        """Refunds confirmed on chain."""
        return self._sum(r.amount for r in self.refunds.values() if r.confirmed)

    @property
    def committed_refunds(self) -> Money | None:
        """Refunds confirmed plus those still in flight: what is no longer refundable."""
        return self._sum(r.amount for r in self.refunds.values())

    def _sum(self, amounts: Any) -> Money | None:
        if self.spent is None:
            return None
        total = Money.zero(self.spent.currency)
        for amount in amounts:
            total = total + amount
        return total

    @property
    def refundable(self) -> Money | None:
        if self.spent is None or self.committed_refunds is None:
            return None
        return self.spent - self.committed_refunds

    # -- commands -------------------------------------------------------------------------------
    def authorize(self, cmd: c.AuthorizePayment) -> None:
        self._require(Status.NEW)
        self._positive(cmd.amount)
        self._record(
            e.PaymentAuthorized,
            cmd,
            account=cmd.account,
            amount=cmd.amount,
            merchant=cmd.merchant,
            mcc=cmd.mcc,
            expires_at=cmd.expires_at,
        )

    def confirm_spend(self, cmd: c.ConfirmSpend) -> None:
        """The spend log was seen. A payment seen first on chain (observer mode) starts here."""
        self._require(Status.NEW, Status.AUTHORIZED)
        self._positive(cmd.amount)
        if self.authorized is not None:
            if cmd.amount.currency != self.authorized.currency:
                raise InvalidTransition(
                    f"payment {self.id}: spent {cmd.amount.currency}, "
                    f"authorized {self.authorized.currency}"
                )
            if cmd.amount > self.authorized:
                raise InvalidTransition(
                    f"payment {self.id}: spend {cmd.amount} exceeds authorized {self.authorized}"
                )
        self._record(e.PaymentSpent, cmd, account=cmd.account, amount=cmd.amount,
                     evidence=cmd.evidence)

    def clear(self, cmd: c.ClearPayment) -> None:
        self._require(Status.HELD)
        assert self.spent is not None
        self._positive(cmd.amount)
        if cmd.amount.currency != self.spent.currency:
            raise InvalidTransition(f"payment {self.id}: clearing in another currency")
        refundable = self.refundable
        assert refundable is not None
        if cmd.amount > refundable:
            raise InvalidTransition(
                f"payment {self.id}: clearing {cmd.amount} exceeds what is left of the spend "
                f"({refundable}); an incremental spend or a finance exception is needed"
            )
        difference = refundable - cmd.amount
        difference_id = self._automatic_refund_id(cmd, "difference")
        self._record(e.PaymentCleared, cmd, amount=cmd.amount)
        if not difference.is_zero:
            self._record(e.RefundRequested, cmd, refund_id=difference_id,
                         amount=difference, reason="clearing below the authorized spend")

    def reverse(self, cmd: c.ReversePayment) -> None:
        """Reverse (or expire) before clearing: void the hold and refund what was spent."""
        self._require(Status.AUTHORIZED, Status.HELD)
        refundable = self.refundable
        reversal_id = self._automatic_refund_id(cmd, "reversal")
        self._record(e.PaymentReversed, cmd, reason=cmd.reason)
        if refundable is not None and not refundable.is_zero:
            self._record(e.RefundRequested, cmd, refund_id=reversal_id,
                         amount=refundable, reason=f"reversal: {cmd.reason}")

    def request_refund(self, cmd: c.RequestRefund) -> None:
        self._require(Status.HELD, Status.CLEARED, Status.SETTLED)
        self._positive(cmd.amount)
        if cmd.refund_id in self.refunds:
            raise InvalidTransition(f"payment {self.id}: refund {cmd.refund_id} already requested")
        refundable = self.refundable
        assert refundable is not None
        if cmd.amount.currency != refundable.currency:
            raise InvalidTransition(
                f"payment {self.id}: refund in {cmd.amount.currency}, spent {refundable.currency}"
            )
        if cmd.amount > refundable:
            raise RefundExceedsCapture(
                f"payment {self.id}: refund {cmd.amount} exceeds refundable {refundable}"
            )
        self._record(e.RefundRequested, cmd, refund_id=cmd.refund_id, amount=cmd.amount,
                     reason=cmd.reason)

    def record_refund_submission(self, cmd: c.RecordRefundSubmission) -> None:
        refund = self._open_refund(cmd.refund_id)
        if cmd.tx_hash in refund.tx_hashes:
            raise InvalidTransition(f"refund {cmd.refund_id} already submitted in {cmd.tx_hash}")
        # Another hash for the same refund is a resubmission (fee bump, re-sent after a drop).
        self._record(e.RefundSubmitted, cmd, refund_id=cmd.refund_id, tx_hash=cmd.tx_hash)

    def confirm_refund(self, cmd: c.ConfirmRefund) -> None:
        refund = self._open_refund(cmd.refund_id)
        if cmd.amount != refund.amount:
            raise InvalidTransition(
                f"refund {cmd.refund_id}: chain shows {cmd.amount}, requested {refund.amount}"
            )
        self._record(e.PaymentRefunded, cmd, refund_id=cmd.refund_id, amount=cmd.amount,
                     evidence=cmd.evidence)

    def retract_spend(self, cmd: c.RetractSpend) -> None:
        """A reorg removed the spend's block. Only a spend nothing was built on can be retracted;
        anything later (clearing, refunds) needs a compensating saga and is refused here."""
        self._require(Status.HELD)
        if cmd.evidence != self.spend_evidence:
            raise InvalidTransition(f"payment {self.id}: retraction names another spend log")
        committed = self.committed_refunds
        if committed is not None and not committed.is_zero:
            raise InvalidTransition(
                f"payment {self.id}: spend retracted by a reorg after refunds were requested; "
                "needs compensation"
            )
        self._record(e.SpendRetracted, cmd, evidence=cmd.evidence, reason=cmd.reason)

    def retract_refund(self, cmd: c.RetractRefund) -> None:
        refund = self.refunds.get(cmd.refund_id)
        if refund is None or not refund.confirmed or refund.evidence != cmd.evidence:
            raise InvalidTransition(
                f"payment {self.id}: refund {cmd.refund_id} was not confirmed by that log"
            )
        self._record(e.RefundRetracted, cmd, refund_id=cmd.refund_id, amount=refund.amount,
                     evidence=cmd.evidence, reason=cmd.reason)

    def settle(self, cmd: c.SettlePayment) -> None:
        self._require(Status.CLEARED)
        self._record(e.PaymentSettled, cmd, batch_id=cmd.batch_id)

    # -- helpers --------------------------------------------------------------------------------
    def _automatic_refund_id(self, cmd: c.Command, purpose: str) -> str:
        refund_id = f"{cmd.command_id}:{purpose}"
        if refund_id in self.refunds:
            raise InvalidTransition(f"payment {self.id}: refund {refund_id} already exists")
        return refund_id

    def _open_refund(self, refund_id: str) -> _Refund:
        self._require(Status.HELD, Status.CLEARED, Status.SETTLED, Status.REVERSED)
        refund = self.refunds.get(refund_id)
        if refund is None:
            raise InvalidTransition(f"payment {self.id}: no refund {refund_id} was requested")
        if refund.confirmed:
            raise InvalidTransition(f"payment {self.id}: refund {refund_id} already confirmed")
        return refund

    def _require(self, *allowed: Status) -> None:
        if self.status not in allowed:
            raise InvalidTransition(
                f"payment {self.id} is {self.status.value}; "
                f"needs {' or '.join(s.value for s in allowed)}"
            )

    @staticmethod
    def _positive(amount: Money) -> None:
        if amount.units <= 0:
            raise InvalidTransition(f"amount must be positive, got {amount}")

    def _record(self, cls: type[e.DomainEvent], cmd: c.Command, **fields: Any) -> None:
        for name, value in (("at", cmd.at), *fields.items()):
            if isinstance(value, datetime) and value.tzinfo is None:
                raise NaiveTimestamp(f"{type(cmd).__name__}.{name} has no UTC offset")
        event = cls(
            stream_id=self.id,
            version=self.version + 1,
            occurred_at=cmd.at,
            correlation_id=cmd.correlation_id or cmd.command_id,
            causation_id=cmd.command_id,
            **fields,
        )
        self._apply(event)
        self.pending_events.append(event)

    def _apply(self, event: e.DomainEvent) -> None:
        match event:
            case e.PaymentAuthorized():
                self.status, self.account, self.authorized = (
                    Status.AUTHORIZED, event.account, event.amount)
            case e.PaymentSpent():
                self.status, self.hold = Status.HELD, Hold.PENDING
                self.account, self.spent = event.account, event.amount
                self.spend_evidence = event.evidence
            case e.PaymentCleared():
                self.status, self.hold, self.cleared = Status.CLEARED, Hold.POSTED, event.amount
            case e.PaymentReversed():
                self.status = Status.REVERSED
                if self.hold is Hold.PENDING:
                    self.hold = Hold.VOIDED
            case e.RefundRequested():
                self.refunds[event.refund_id] = _Refund(event.amount)
            case e.RefundSubmitted():
                refund = self.refunds[event.refund_id]
                refund.tx_hashes = (*refund.tx_hashes, event.tx_hash)
            case e.PaymentRefunded():
                self.refunds[event.refund_id].confirmed = True
                self.refunds[event.refund_id].evidence = event.evidence
            case e.SpendRetracted():
                self.status = Status.AUTHORIZED if self.authorized is not None else Status.NEW
                self.hold, self.spent, self.spend_evidence = Hold.NONE, None, None
            case e.RefundRetracted():
                self.refunds[event.refund_id].confirmed = False
                self.refunds[event.refund_id].evidence = None
            case e.PaymentSettled():
                self.status = Status.SETTLED
            case _:
                raise InvalidTransition(f"payment cannot apply {type(event).__name__}")
        self.version = event.version


def handle(payment: Payment, cmd: c.Command) -> None:
    """Dispatch a command to the aggregate method that decides it."""
    match cmd:
        case c.AuthorizePayment():
            payment.authorize(cmd)
        case c.ConfirmSpend():
            payment.confirm_spend(cmd)
        case c.ClearPayment():
            payment.clear(cmd)
        case c.ReversePayment():
            payment.reverse(cmd)
        case c.RequestRefund():
            payment.request_refund(cmd)
        case c.RecordRefundSubmission():
            payment.record_refund_submission(cmd)
        case c.ConfirmRefund():
            payment.confirm_refund(cmd)
        case c.SettlePayment():
            payment.settle(cmd)
        case c.RetractSpend():
            payment.retract_spend(cmd)
        case c.RetractRefund():
            payment.retract_refund(cmd)
        case _:
            raise InvalidTransition(f"unknown command {type(cmd).__name__}")
