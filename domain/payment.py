"""The Payment aggregate: one card payment from authorization to settlement.

Two sides share the stream. The chain side (`status`, `hold`, `spent`, `cleared`, refunds) follows
the spend on chain and the refunds paid back. The network side (`network`, a `NetworkState`)
follows the card network's messages for one authorization id: approval or decline, advice,
increments, reversals, expiry, clearings, force posts, returns. `PaymentAuthorized` (our approval)
belongs to both; every other event to one side only.

Command methods check the invariants and record past-tense events; state changes only in `_apply`.
Invariants, chain side:
- refunds (requested and confirmed together) never exceed what was spent on chain, and after
  clearing never exceed what was cleared (the difference is refunded automatically);
- the hold resolves at most once (posted by clearing, or voided by a reversal); a reorg that takes
  the only spend away before anything was built on it removes the hold;
- money that lands on chain is never refused for the payment's state (a refusal would only hide it
  on the settlement account, an invisible stuck payment): a spend seen after the payment was
  reversed is refunded at once ("spend after reversal"); on a held or cleared payment we approved
  it is one more spend (`spends`): an incremental spend for an over-clearing, or a spend sent
  again after a reorg — the saga settles any difference (a payment seen only on chain, in
  observer mode, takes one spend: no saga asked for another);
- a reorg may take a spend away whatever was built on it: the payment keeps its state, `spent`
  drops, and the saga sends the same transaction again (what was refunded or cleared against it
  waits for it to land again);
- the network's final amount clears the payment whether its spend landed, has not landed yet, or
  the payment was reversed first (a clearing after expiry cannot be refused): what was collected
  beyond it is refunded; a shortfall is left to the saga (an incremental spend or an exception);
- a reversed payment takes no other lifecycle command; refunds already in flight (including the
  reversal's own refund of what was spent) go on being submitted, confirmed or retracted.
Invariants, network side (amounts in the card's token, one currency per payment):
- a network message id is recorded at most once: a repeat changes nothing and records nothing;
- the network hold opens at most once (approval or approved advice) and resolves at most once (a
  final clearing, a full reversal, an expiry, or a declining advice); while open it is
  `authorized - posted from the hold - reversed - released`, never negative, and afterwards zero;
- a clearing is never refused (the network cannot be): before its authorization it is parked and
  applied when the authorization arrives; after the hold resolved, or beyond it, it is recorded
  as cleared without a hold (`beyond_hold`) for the handler to re-hold or force post;
- returns never exceed what was cleared net of earlier returns; a return reversal never exceeds
  what was returned;
- messages that need an authorization (increment, reversal, expiry) are refused with
  `AuthorizationNotFound` before it arrives; increments and advices with `AuthorizationClosed`
  once the hold resolved; a reversal or an expiry after the hold resolved releases nothing (the
  reversal is recorded, the expiry is a no-op).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain import commands as c
from domain import events as e
from domain.card_network import (
    Network,
    NetworkState,
    ParkedClearing,
    authorization_expires_at,
)
from domain.errors import (
    AuthorizationClosed,
    AuthorizationNotExpired,
    AuthorizationNotFound,
    InvalidTransition,
    NaiveTimestamp,
    RefundExceedsCapture,
    ReturnExceedsClearing,
)
from domain.money import Currency, Money


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
        """The first spend log the payment rests on (None: none)."""
        self.spends: dict[e.ChainEvidence, Money] = {}
        """Every spend log the payment rests on, in the order seen; `spent` is their sum."""
        self.refunds: dict[str, _Refund] = {}
        self.network = NetworkState()
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

    def rests_on(self, evidence: e.ChainEvidence) -> bool:
        """Whether this spend log still counts (a reorg of its block must retract it)."""
        return evidence in self.spends

    def parked_since(self) -> datetime | None:
        """When the oldest clearing still waiting for its authorization arrived (None if none
        waits): a timer raises an exception for a payment parked too long."""
        return min((p.at for p in self.network.parked), default=None)

    # -- commands -------------------------------------------------------------------------------
    def authorize(self, cmd: c.AuthorizePayment) -> None:
        """We approved (perhaps partially): the hold opens, and clearings parked before it apply."""
        if self._seen(cmd):
            return
        self._require(Status.NEW)
        self._require_network(Network.NONE)
        self._positive(cmd.amount)
        if cmd.requested is not None and (
            cmd.requested.currency != cmd.amount.currency or cmd.amount > cmd.requested
        ):
            raise InvalidTransition(
                f"payment {self.id}: approved {cmd.amount} exceeds requested {cmd.requested}"
            )
        self._same_currency(cmd.amount)
        self._record(
            e.PaymentAuthorized,
            cmd,
            account=cmd.account,
            amount=cmd.amount,
            merchant=cmd.merchant,
            mcc=cmd.mcc,
            expires_at=cmd.expires_at,
        )
        self._apply_parked(cmd)

    def confirm_spend(self, cmd: c.ConfirmSpend) -> None:
        """The spend log was seen. A payment seen first on chain (observer mode) starts here.

        Later spends are accepted whatever the payment's state (see the module's invariants):
        after a reversal what is now refundable is refunded at once."""
        self._positive(cmd.amount)
        if cmd.evidence in self.spends:
            raise InvalidTransition(f"payment {self.id}: spend log already confirmed")
        if self.status not in (Status.NEW, Status.AUTHORIZED):
            if self.authorized is None and not self.network.hold_opened:
                # seen only on chain (observer mode): no saga asked for a second spend
                raise InvalidTransition(f"payment {self.id} is {self.status.value}: already "
                                        "spent, and not a payment we approved")
            self._later_spend(cmd)
            return
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

    def _later_spend(self, cmd: c.ConfirmSpend) -> None:
        known = self.spent or self.authorized
        if known is not None and cmd.amount.currency != known.currency:
            raise InvalidTransition(f"payment {self.id}: spent {cmd.amount.currency}, "
                                    f"payment in {known.currency}")
        refund_id = self._automatic_refund_id(cmd, "after-reversal") \
            if self.status is Status.REVERSED else ""
        self._record(e.PaymentSpent, cmd, account=cmd.account, amount=cmd.amount,
                     evidence=cmd.evidence)
        refundable = self.refundable
        if refund_id and refundable is not None and refundable.units > 0:
            self._record(e.RefundRequested, cmd, refund_id=refund_id, amount=refundable,
                         reason="spend after reversal")

    def clear(self, cmd: c.ClearPayment) -> None:
        """The network's final amount (see the module's invariants): what was collected beyond
        it is refunded; a shortfall is the saga's to collect or to raise."""
        self._require(*self._approved, Status.HELD, Status.REVERSED)
        self._positive(cmd.amount)
        known = self.spent or self.authorized
        if known is not None and cmd.amount.currency != known.currency:
            raise InvalidTransition(f"payment {self.id}: clearing in another currency")
        refundable = self.refundable
        difference_id = self._automatic_refund_id(cmd, "difference")
        self._record(e.PaymentCleared, cmd, amount=cmd.amount)
        if refundable is not None and refundable > cmd.amount:
            self._record(e.RefundRequested, cmd, refund_id=difference_id,
                         amount=refundable - cmd.amount,
                         reason="clearing below the authorized spend")

    def reverse(self, cmd: c.ReversePayment) -> None:
        """Reverse (or expire) before clearing: void the hold and refund what was spent."""
        self._require(*self._approved, Status.HELD)
        refundable = self.refundable
        reversal_id = self._automatic_refund_id(cmd, "reversal")
        self._record(e.PaymentReversed, cmd, reason=cmd.reason)
        if refundable is not None and refundable.units > 0:  # < 0: a reorged spend is owed
            self._record(e.RefundRequested, cmd, refund_id=reversal_id,
                         amount=refundable, reason=f"reversal: {cmd.reason}")

    def request_refund(self, cmd: c.RequestRefund) -> None:
        self._require(Status.HELD, Status.CLEARED, Status.SETTLED)
        self._positive(cmd.amount)
        if cmd.refund_id in self.refunds:
            raise InvalidTransition(f"payment {self.id}: refund {cmd.refund_id} already requested")
        refundable = self.refundable
        if refundable is None:  # cleared before any spend landed: nothing to refund yet
            raise RefundExceedsCapture(f"payment {self.id}: refund {cmd.amount}, nothing spent")
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

    def refund_excess(self, cmd: c.RefundExcess) -> None:
        """After clearing: refund what was collected beyond the network's amount net of returns
        (a return, a late spend); records nothing when nothing is beyond it."""
        self._require(Status.CLEARED, Status.SETTLED)
        refundable = self.refundable
        n = self.network
        target = n.cleared_units - n.returned_units
        if refundable is None or refundable.units <= target:
            return
        self._record(e.RefundRequested, cmd, refund_id=self._automatic_refund_id(cmd, "excess"),
                     amount=Money(refundable.units - target, refundable.currency),
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
        """A reorg removed a spend's block. Never refused for what was built on it (refusing
        would leave the payment resting on money that is gone): the saga sends the spend again."""
        if cmd.evidence not in self.spends:
            raise InvalidTransition(f"payment {self.id}: retraction names another spend log")
        self._record(e.SpendRetracted, cmd, evidence=cmd.evidence, reason=cmd.reason,
                     amount=self.spends[cmd.evidence])

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

    # -- network commands -----------------------------------------------------------------------
    def decline(self, cmd: c.DeclineAuthorization) -> None:
        """We declined. On an open authorization it was a declined increment: the hold stays."""
        if self._seen(cmd):
            return
        self._positive(cmd.amount)
        self._require_network(Network.NONE, Network.AUTHORIZED)
        self._same_currency(cmd.amount)
        was_new = self.network.status is Network.NONE
        self._record(e.AuthorizationDeclined, cmd, account=cmd.account, amount=cmd.amount,
                     merchant=cmd.merchant, mcc=cmd.mcc, reason=cmd.reason,
                     held=self._held_in(cmd.amount.currency))
        if was_new:
            self._apply_parked(cmd)

    def advise(self, cmd: c.AdviseAuthorization) -> None:
        """The network stood in. Recorded whatever we would have decided; an approval opens the
        hold (or resizes an open one to the advised amount), a decline releases an open hold."""
        if self._seen(cmd):
            return
        self._positive(cmd.amount)
        self._same_currency(cmd.amount)
        n = self.network
        if n.status not in (Network.NONE, Network.DECLINED, Network.AUTHORIZED) or (
            n.status is Network.DECLINED and n.hold_opened
        ):
            raise AuthorizationClosed(
                f"payment {self.id}: advice after the hold ended ({n.status.value})")
        units = cmd.amount.units
        consumed = n.authorized_units - n.held_units
        held, released = n.held_units, 0
        if cmd.approved:
            held = max(units - consumed, 0) if n.status is Network.AUTHORIZED else units
        else:
            held, released = 0, n.held_units
        was_new = n.status is Network.NONE
        currency = cmd.amount.currency
        self._record(e.AuthorizationAdvised, cmd, account=cmd.account, amount=cmd.amount,
                     merchant=cmd.merchant, mcc=cmd.mcc, expires_at=cmd.expires_at,
                     approved=cmd.approved, reason=cmd.reason,
                     released=Money(released, currency), held=Money(held, currency))
        if was_new:
            self._apply_parked(cmd)

    def increase(self, cmd: c.IncreaseAuthorization) -> None:
        if self._seen(cmd):
            return
        self._positive(cmd.amount)
        self._require_open_hold("increment")
        self._same_currency(cmd.amount)
        n = self.network
        assert n.expires_at is not None
        expires_at = n.expires_at
        self._aware(cmd, "expires_at", cmd.expires_at)
        if cmd.expires_at is not None and cmd.expires_at > expires_at:
            expires_at = cmd.expires_at
        self._record(e.AuthorizationIncreased, cmd, amount=cmd.amount,
                     authorized=Money(n.authorized_units + cmd.amount.units, cmd.amount.currency),
                     expires_at=expires_at,
                     held=Money(n.held_units + cmd.amount.units, cmd.amount.currency))

    def reverse_authorization(self, cmd: c.ReverseAuthorization) -> None:
        """Partial (an amount) or full (None). A reversal that leaves nothing held ends the hold;
        one after the hold ended is recorded and releases nothing."""
        if self._seen(cmd):
            return
        n = self.network
        if n.status is Network.NONE:
            raise AuthorizationNotFound(f"payment {self.id}: reversal before its authorization")
        assert n.currency is not None
        if cmd.amount is not None:
            self._positive(cmd.amount)
            self._same_currency(cmd.amount)
        asked = n.held_units if cmd.amount is None else cmd.amount.units
        released = min(asked, n.held_units) if n.status is Network.AUTHORIZED else 0
        self._record(e.AuthorizationReversed, cmd, amount=Money(asked, n.currency),
                     full=cmd.amount is None or released == n.held_units,
                     released=Money(released, n.currency),
                     held=Money(n.held_units - released, n.currency))

    def expire(self, cmd: c.ExpireAuthorization) -> None:
        """Release what is still held. After the hold ended (or a decline) there is nothing to
        release and nothing is recorded."""
        if self._seen(cmd):
            return
        n = self.network
        if n.status is Network.NONE:
            raise AuthorizationNotFound(f"payment {self.id}: expiry before its authorization")
        if n.status is not Network.AUTHORIZED:
            return
        assert n.expires_at is not None and n.currency is not None
        self._aware(cmd, "at", cmd.at)
        if cmd.at < n.expires_at and not cmd.by_network:
            raise AuthorizationNotExpired(
                f"payment {self.id}: expiry at {cmd.at.isoformat()}, "
                f"authorization valid until {n.expires_at.isoformat()}"
            )
        self._record(e.AuthorizationExpired, cmd, released=Money(n.held_units, n.currency))

    def record_clearing(self, cmd: c.RecordClearing) -> None:
        """Never refused for its state: parked before the authorization, else recorded."""
        if self._seen(cmd):
            return
        self._positive(cmd.amount)
        self._same_currency(cmd.amount)
        if self.network.status is Network.NONE:
            self._record(e.ClearingParked, cmd, amount=cmd.amount, final=cmd.final)
            return
        self._record_clearing(cmd, cmd.command_id, cmd.amount, cmd.final)

    def force_post(self, cmd: c.ForcePost) -> None:
        if self._seen(cmd):
            return
        self._require_unknown_to_network("force post", cmd.amount)
        self._record(e.PaymentForcePosted, cmd, account=cmd.account, amount=cmd.amount,
                     merchant=cmd.merchant, mcc=cmd.mcc)

    def record_financial_authorization(self, cmd: c.RecordFinancialAuthorization) -> None:
        if self._seen(cmd):
            return
        self._require_unknown_to_network("financial authorization", cmd.amount)
        self._record(e.FinancialAuthorizationRecorded, cmd, account=cmd.account,
                     amount=cmd.amount, merchant=cmd.merchant, mcc=cmd.mcc)

    def record_return(self, cmd: c.RecordReturn) -> None:
        if self._seen(cmd):
            return
        self._positive(cmd.amount)
        self._same_currency(cmd.amount)
        returnable = self.network.returnable
        if returnable is None or cmd.amount > returnable:
            raise ReturnExceedsClearing(
                f"payment {self.id}: return {cmd.amount} exceeds what is cleared and not yet "
                f"returned ({returnable})"
            )
        self._record(e.ReturnRecorded, cmd, amount=cmd.amount,
                     returned=Money(self.network.returned_units + cmd.amount.units,
                                    cmd.amount.currency))

    def reverse_return(self, cmd: c.ReverseReturn) -> None:
        if self._seen(cmd):
            return
        self._positive(cmd.amount)
        self._same_currency(cmd.amount)
        returned = self.network.returned
        if returned is None or cmd.amount > returned:
            raise ReturnExceedsClearing(
                f"payment {self.id}: return reversal {cmd.amount} exceeds returned {returned}")
        self._record(e.ReturnReversed, cmd, amount=cmd.amount, returned=returned - cmd.amount)

    # -- network helpers --------------------------------------------------------------------------
    def _seen(self, cmd: c.Command) -> bool:
        """A network message already recorded: the retry is a no-op."""
        return cmd.command_id in self.network.messages

    def _require_network(self, *allowed: Network) -> None:
        if self.network.status not in allowed:
            raise InvalidTransition(
                f"payment {self.id}: network side is {self.network.status.value}; "
                f"needs {' or '.join(s.value for s in allowed)}"
            )

    def _require_open_hold(self, what: str) -> None:
        status = self.network.status
        if status is Network.NONE:
            raise AuthorizationNotFound(f"payment {self.id}: {what} before its authorization")
        if status is not Network.AUTHORIZED:
            raise AuthorizationClosed(f"payment {self.id}: {what} after the hold ended "
                                      f"({status.value})")

    def _require_unknown_to_network(self, what: str, amount: Money) -> None:
        """Force posts and financial authorizations start their own payment."""
        self._positive(amount)
        if self.network.status is not Network.NONE or self.network.parked or (
            self.status is not Status.NEW
        ):
            raise InvalidTransition(f"payment {self.id}: {what} on a payment that exists")

    @staticmethod
    def _aware(cmd: c.Command, name: str, value: datetime | None) -> None:
        """Checked before a time is compared (`_record` checks again before anything is kept)."""
        if value is not None and value.tzinfo is None:
            raise NaiveTimestamp(f"{type(cmd).__name__}.{name} has no UTC offset")

    def _same_currency(self, amount: Money) -> None:
        n = self.network
        known = n.currency or (n.parked[0].amount.currency if n.parked else None)
        if known is not None and amount.currency != known:
            raise InvalidTransition(
                f"payment {self.id}: {amount.currency} on a payment in {known}")

    def _held_in(self, currency: Currency) -> Money:
        return Money(self.network.held_units, currency)

    def _record_clearing(self, cmd: c.Command, clearing_id: str, amount: Money,
                         final: bool) -> None:
        n = self.network
        if n.status is Network.AUTHORIZED:
            basis = "hold"
            from_hold = min(amount.units, n.held_units)
            released = n.held_units - from_hold if final else 0
        else:
            basis, from_hold, released = n.status.value, 0, 0
        held = n.held_units - from_hold - released
        currency = amount.currency
        self._record(e.ClearingRecorded, cmd, clearing_id=clearing_id, amount=amount,
                     final=final, basis=basis, from_hold=Money(from_hold, currency),
                     beyond_hold=Money(amount.units - from_hold, currency),
                     released=Money(released, currency), held=Money(held, currency))

    def _apply_parked(self, cmd: c.Command) -> None:
        """The authorization (or its decline) arrived: apply the clearings that waited for it."""
        for parked in list(self.network.parked):
            self._record_clearing(cmd, parked.message_id, parked.amount, parked.final)

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

    @property
    def _approved(self) -> tuple[Status, ...]:
        """The chain side's statuses of an approved payment not yet spent: `AUTHORIZED` after
        our approval, still `NEW` after the network's stand-in approval (an advice)."""
        return (Status.AUTHORIZED, Status.NEW) if self.network.hold_opened else \
            (Status.AUTHORIZED,)

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
                self.network.apply(event)
            case e.PaymentSpent():
                if self.status in (Status.NEW, Status.AUTHORIZED):
                    self.status, self.hold = Status.HELD, Hold.PENDING
                self.account = event.account
                self.spends[event.evidence] = event.amount
                self._spends_changed(event.amount.currency)
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
                gone = self.spends.pop(event.evidence)
                if not self.spends and self.status is Status.HELD and not self.refunds:
                    # nothing was built on it: approved again, as if never spent
                    self.status = Status.AUTHORIZED if self.authorized is not None else Status.NEW
                    self.hold, self.spent, self.spend_evidence = Hold.NONE, None, None
                else:
                    self._spends_changed(gone.currency)
            case e.RefundRetracted():
                self.refunds[event.refund_id].confirmed = False
                self.refunds[event.refund_id].evidence = None
            case e.PaymentSettled():
                self.status = Status.SETTLED
            case _:
                self._apply_network(event)
        self.version = event.version

    def _spends_changed(self, currency: Currency) -> None:
        total = Money.zero(currency)
        for amount in self.spends.values():
            total = total + amount
        self.spent = total
        self.spend_evidence = next(iter(self.spends), None)

    def _apply_network(self, event: e.DomainEvent) -> None:
        if not self.network.apply(event):
            raise InvalidTransition(f"payment cannot apply {type(event).__name__}")


__all__ = ["Hold", "Network", "NetworkState", "ParkedClearing", "Payment", "Status",
           "authorization_expires_at", "handle"]


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
        case c.RefundExcess():
            payment.refund_excess(cmd)
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
        case c.DeclineAuthorization():
            payment.decline(cmd)
        case c.AdviseAuthorization():
            payment.advise(cmd)
        case c.IncreaseAuthorization():
            payment.increase(cmd)
        case c.ReverseAuthorization():
            payment.reverse_authorization(cmd)
        case c.ExpireAuthorization():
            payment.expire(cmd)
        case c.RecordClearing():
            payment.record_clearing(cmd)
        case c.ForcePost():
            payment.force_post(cmd)
        case c.RecordFinancialAuthorization():
            payment.record_financial_authorization(cmd)
        case c.RecordReturn():
            payment.record_return(cmd)
        case c.ReverseReturn():
            payment.reverse_return(cmd)
        case _:
            raise InvalidTransition(f"unknown command {type(cmd).__name__}")
