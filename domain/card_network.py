"""The card network's side of a payment: where its authorization stands and the amounts it moved.

Kept apart from the aggregate (`domain.payment`), which changes it only by applying events. The
figures are integer units of one currency, fixed by the first message that names an amount.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from datetime import datetime

from domain import events as e
from domain.authorization import hold_validity
from domain.money import Currency, Money


def authorization_expires_at(authorized_at: datetime, mcc: str) -> datetime:
    """When an authorization's hold lapses (`domain.authorization.hold_validity`: 7 days, 30 for
    lodging, car rental and airline MCCs). The handler passes the result as `expires_at`; the
    aggregate never computes it itself, so a network that sends its own deadline is followed."""
    return authorized_at + hold_validity(int(mcc) if mcc.isdigit() else -1)


class Network(enum.StrEnum):
    """Where the network's authorization stands; the last four say how the hold ended."""

    NONE = "none"  # nothing from the network yet (parked clearings aside)
    AUTHORIZED = "authorized"  # the hold is open
    DECLINED = "declined"  # by us, or by the network's advice
    CLEARED = "cleared"  # a final clearing (or a force post / financial authorization)
    REVERSED = "reversed"  # a full reversal
    EXPIRED = "expired"  # expires_at passed without a final clearing


@dataclass(frozen=True, slots=True)
class ParkedClearing:
    message_id: str
    amount: Money
    final: bool
    at: datetime


NETWORK_EVENTS: tuple[type[e.DomainEvent], ...] = (
    e.PaymentAuthorized, e.AuthorizationDeclined, e.AuthorizationAdvised,
    e.AuthorizationIncreased, e.AuthorizationReversed, e.AuthorizationExpired, e.ClearingParked,
    e.ClearingRecorded, e.PaymentForcePosted, e.FinancialAuthorizationRecorded, e.ReturnRecorded,
    e.ReturnReversed)
"""The events `NetworkState.apply` takes; the others are the chain side's (checked first, so a
case added to `apply` without its type here is never reached)."""


@dataclass(slots=True)
class NetworkState:
    """The network side of a payment. Amounts are integer units of `currency`; the properties
    give them as Money once the currency is known."""

    status: Network = Network.NONE
    currency: Currency | None = None
    account: str | None = None
    merchant: str | None = None
    mcc: str | None = None
    expires_at: datetime | None = None
    hold_opened: bool = False
    authorized_units: int = 0  # the hold was opened or grown for this much in all
    held_units: int = 0  # still held
    posted_units: int = 0  # posted out of the hold by clearings
    reversed_units: int = 0  # released by reversals
    released_units: int = 0  # released by expiry, a final clearing or a declining advice
    cleared_units: int = 0  # every clearing, force post and financial authorization
    over_cleared_units: int = 0  # cleared beyond an open hold
    returned_units: int = 0  # returns net of return reversals
    messages: set[str] = dataclasses.field(default_factory=set)
    parked: list[ParkedClearing] = dataclasses.field(default_factory=list)

    # -- events ---------------------------------------------------------------------------------
    def apply(self, event: e.DomainEvent) -> bool:
        """Change by one of the payment's events; False when it is not a network event (the
        chain side's). Also what the read models use, so the figures there are these."""
        if not isinstance(event, NETWORK_EVENTS):
            return False
        match event:
            case e.PaymentAuthorized():
                self._opened(event, event.amount, event.expires_at)
                self._known(event.amount.currency, event.account, event.merchant, event.mcc)
            case e.AuthorizationDeclined():
                self._known(event.amount.currency, event.account, event.merchant, event.mcc)
                if self.status is Network.NONE:
                    self.status = Network.DECLINED
            case e.AuthorizationAdvised() if event.approved:
                self._opened(event, event.held, event.expires_at)
                self.authorized_units += event.held.units - self.held_units
                self.held_units = event.held.units
                self._known(event.amount.currency, event.account, event.merchant, event.mcc)
            case e.AuthorizationAdvised():
                self._known(event.amount.currency, event.account, event.merchant, event.mcc)
                self.status, self.held_units = Network.DECLINED, 0
                self.released_units += event.released.units
            case e.AuthorizationIncreased():
                self.authorized_units = event.authorized.units
                self.held_units, self.expires_at = event.held.units, event.expires_at
            case e.AuthorizationReversed():
                if self.status is Network.AUTHORIZED:
                    self.held_units = event.held.units
                    self.reversed_units += event.released.units
                    if event.full:
                        self.status = Network.REVERSED
            case e.AuthorizationExpired():
                self.status, self.held_units = Network.EXPIRED, 0
                self.released_units += event.released.units
            case e.ClearingParked():
                self.parked.append(ParkedClearing(event.causation_id, event.amount, event.final,
                                                  event.occurred_at))
            case e.ClearingRecorded():
                self.parked = [p for p in self.parked if p.message_id != event.clearing_id]
                self.messages.add(event.clearing_id)
                self.cleared_units += event.amount.units
                self.posted_units += event.from_hold.units
                self.released_units += event.released.units
                if event.basis == "hold":
                    self.over_cleared_units += event.beyond_hold.units
                self.held_units = event.held.units
                if event.final:
                    self.status = Network.CLEARED
            case e.PaymentForcePosted() | e.FinancialAuthorizationRecorded():
                self._known(event.amount.currency, event.account, event.merchant, event.mcc)
                self.status = Network.CLEARED
                self.cleared_units += event.amount.units
            case e.ReturnRecorded() | e.ReturnReversed():
                self.returned_units = event.returned.units
            case _:
                return False
        self.messages.add(event.causation_id)
        return True

    def _opened(self, event: e.DomainEvent, held: Money, expires_at: datetime) -> None:
        """Our approval or an approving advice: the hold opens (or is resized while open)."""
        if self.status is not Network.AUTHORIZED:
            self.authorized_units, self.held_units = held.units, held.units
        self.status, self.hold_opened, self.expires_at = Network.AUTHORIZED, True, expires_at
        self.currency = held.currency
        self.messages.add(event.causation_id)

    def _known(self, currency: Currency, account: str, merchant: str, mcc: str) -> None:
        self.currency = currency
        self.account = self.account or account
        self.merchant, self.mcc = self.merchant or merchant, self.mcc or mcc

    def money(self, units: int) -> Money | None:
        return None if self.currency is None else Money(units, self.currency)

    @property
    def authorized(self) -> Money | None:
        return self.money(self.authorized_units)

    @property
    def held(self) -> Money | None:
        return self.money(self.held_units)

    @property
    def cleared(self) -> Money | None:
        return self.money(self.cleared_units)

    @property
    def reversed(self) -> Money | None:
        return self.money(self.reversed_units)

    @property
    def released(self) -> Money | None:
        return self.money(self.released_units)

    @property
    def over_cleared(self) -> Money | None:
        return self.money(self.over_cleared_units)

    @property
    def cleared_without_hold(self) -> Money | None:
        """Cleared with no hold behind it: over-clearings, late clearings, force posts."""
        return self.money(self.cleared_units - self.posted_units)

    @property
    def returned(self) -> Money | None:
        return self.money(self.returned_units)

    @property
    def returnable(self) -> Money | None:
        return self.money(self.cleared_units - self.returned_units)
