"""The card network's messages, as the issuer receives them, and the issuer's answer.

The network (a Visa-style processor) speaks fiat minor units with an ISO currency; these types
keep that unit (`Money` in EUR, GBP or USD) and leave the conversion to token base units to the
model (`domain.money.to_token`). Vocabulary after Lithic's, the most complete of the processors
(see the card-network notes): one synchronous `AuthorizationRequest`, answered with an
`AuthorizationDecision`, and asynchronous messages that arrive later, possibly repeated or out of
order. Each asynchronous message names its wire type in `TYPE`.

Rules checked here (the facts of one message, not the payment's history):
- every amount is an integer of fiat minor units in a currency the network may send, and is
  positive, except where zero is meaningful (a report line with no activity);
- an approval is for at most the requested amount, and for less only if the request allowed a
  partial approval; a decline always carries a reason, whose class (soft, hard, fraud) follows;
- a settlement report line's net is its credits minus its debits, and the report's lines share
  its currency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import ClassVar

from domain.authorization import DeclineClass, DeclineReason
from domain.errors import InvalidNetworkMessage, NaiveTimestamp
from domain.money import FIAT_TOKENS, Currency, Money


def _fiat(amount: Money, what: str, *, zero_ok: bool = False) -> None:
    if amount.currency not in FIAT_TOKENS:
        raise InvalidNetworkMessage(f"{what}: {amount.currency} is not a card currency")
    if amount.units < 0 or (amount.units == 0 and not zero_ok):
        raise InvalidNetworkMessage(f"{what} must be {'0 or more' if zero_ok else 'positive'}, "
                                    f"got {amount}")


def _utc(when: datetime, what: str) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise NaiveTimestamp(f"{what} has no UTC offset")


@dataclass(frozen=True, slots=True)
class Merchant:
    """Where the card was used; `mcc` is the four-digit merchant category code."""

    name: str
    merchant_id: str
    country: str
    """ISO 3166 alpha-2."""
    mcc: str

    def __post_init__(self) -> None:
        if len(self.mcc) != 4 or not self.mcc.isdigit():
            raise InvalidNetworkMessage(f"MCC {self.mcc!r} is not four digits")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationRequest:
    """The network asks: may this card spend `amount` here? Answer within the network's deadline."""

    authorization_id: str
    card_id: str
    amount: Money
    merchant: Merchant
    network_time: datetime
    partial_approval_supported: bool = False

    def __post_init__(self) -> None:
        _fiat(self.amount, "authorization amount")
        _utc(self.network_time, "network_time")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationDecision:
    """The issuer's answer: `approved_amount` (zero when declined) or a decline `reason`.

    Build it with `approve` or `decline`, which check it against the request.
    """

    authorization_id: str
    requested: Money
    approved_amount: Money
    reason: DeclineReason | None = None

    def __post_init__(self) -> None:
        if self.approved_amount.currency != self.requested.currency:
            raise InvalidNetworkMessage("an approval is in the requested currency")
        if self.reason is None:
            if not 0 < self.approved_amount.units <= self.requested.units:
                raise InvalidNetworkMessage(
                    f"approved {self.approved_amount} is not within 0 < x <= {self.requested}")
        elif not self.approved_amount.is_zero:
            raise InvalidNetworkMessage("a decline approves nothing")

    @classmethod
    def approve(cls, request: AuthorizationRequest,
                amount: Money | None = None) -> AuthorizationDecision:
        """Approve the whole request, or `amount` of it when the network allows partial ones."""
        amount = request.amount if amount is None else amount
        if amount != request.amount and not request.partial_approval_supported:
            raise InvalidNetworkMessage(f"{request.authorization_id}: the network does not "
                                        "accept a partial approval for this request")
        return cls(authorization_id=request.authorization_id, requested=request.amount,
                   approved_amount=amount)

    @classmethod
    def decline(cls, request: AuthorizationRequest,
                reason: DeclineReason) -> AuthorizationDecision:
        return cls(authorization_id=request.authorization_id, requested=request.amount,
                   approved_amount=Money.zero(request.amount.currency), reason=reason)

    @property
    def approved(self) -> bool:
        return self.reason is None

    @property
    def partial(self) -> bool:
        return self.approved and self.approved_amount != self.requested

    @property
    def decline_class(self) -> DeclineClass | None:
        return None if self.reason is None else self.reason.decline_class


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkMessage:
    """Base of the asynchronous messages: when the network says it happened."""

    TYPE: ClassVar[str] = ""
    network_time: datetime

    def __post_init__(self) -> None:
        _utc(self.network_time, f"{self.TYPE}.network_time")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationAdvice(NetworkMessage):
    """The network decided for the issuer (stand-in after a timeout, or a network rule):
    `approved_amount` was approved (zero: it declined) and must be honoured."""

    TYPE: ClassVar[str] = "authorization_advice"
    authorization_id: str
    card_id: str
    amount: Money
    approved_amount: Money
    merchant: Merchant
    reason: str
    """Why the network decided (e.g. "stand_in", "issuer_timeout")."""

    def __post_init__(self) -> None:
        NetworkMessage.__post_init__(self)
        _fiat(self.amount, "advice amount")
        _fiat(self.approved_amount, "advice approved amount", zero_ok=True)
        if self.approved_amount.currency != self.amount.currency:
            raise InvalidNetworkMessage("advice: approved and requested currencies differ")


@dataclass(frozen=True, slots=True, kw_only=True)
class IncrementalAuthorization(NetworkMessage):
    """More on an existing authorization (a hotel extends a stay): `amount` is the increment."""

    TYPE: ClassVar[str] = "incremental_authorization"
    increment_id: str
    authorization_id: str
    card_id: str
    amount: Money

    def __post_init__(self) -> None:
        NetworkMessage.__post_init__(self)
        _fiat(self.amount, "increment")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationReversal(NetworkMessage):
    """The merchant gave back `amount` of an authorization; `full` when it was all of it."""

    TYPE: ClassVar[str] = "authorization_reversal"
    reversal_id: str
    authorization_id: str
    amount: Money
    full: bool

    def __post_init__(self) -> None:
        NetworkMessage.__post_init__(self)
        _fiat(self.amount, "reversal amount")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationExpiry(NetworkMessage):
    """The authorization was not cleared in time; what it still holds is released."""

    TYPE: ClassVar[str] = "authorization_expiry"
    authorization_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Clearing(NetworkMessage):
    """The merchant's final amount for (part of) an authorization. Several clearings may arrive
    for one authorization (`final` on the last); their sum may exceed what was authorized."""

    TYPE: ClassVar[str] = "clearing"
    clearing_id: str
    authorization_id: str
    card_id: str
    amount: Money
    final: bool = True

    def __post_init__(self) -> None:
        NetworkMessage.__post_init__(self)
        _fiat(self.amount, "clearing amount")


@dataclass(frozen=True, slots=True, kw_only=True)
class FinancialAuthorization(NetworkMessage):
    """Authorization and clearing in one message (single-message systems, e.g. ATM, PIN debit)."""

    TYPE: ClassVar[str] = "financial_authorization"
    authorization_id: str
    card_id: str
    amount: Money
    merchant: Merchant

    def __post_init__(self) -> None:
        NetworkMessage.__post_init__(self)
        _fiat(self.amount, "financial authorization amount")


@dataclass(frozen=True, slots=True, kw_only=True)
class ForcePost(NetworkMessage):
    """A clearing with no authorization behind it: the issuer cannot refuse it, only dispute."""

    TYPE: ClassVar[str] = "force_post"
    clearing_id: str
    card_id: str
    amount: Money
    merchant: Merchant

    def __post_init__(self) -> None:
        NetworkMessage.__post_init__(self)
        _fiat(self.amount, "force post amount")


@dataclass(frozen=True, slots=True, kw_only=True)
class Return(NetworkMessage):
    """A merchant refund to the card. Linking it to the original payment is best effort: the
    network may name the authorization or clearing, or neither."""

    TYPE: ClassVar[str] = "return"
    return_id: str
    card_id: str
    amount: Money
    merchant: Merchant
    authorization_id: str | None = None
    clearing_id: str | None = None

    def __post_init__(self) -> None:
        NetworkMessage.__post_init__(self)
        _fiat(self.amount, "return amount")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReturnReversal(NetworkMessage):
    """A return taken back (the merchant's refund was itself reversed)."""

    TYPE: ClassVar[str] = "return_reversal"
    return_reversal_id: str
    return_id: str
    card_id: str
    amount: Money

    def __post_init__(self) -> None:
        NetworkMessage.__post_init__(self)
        _fiat(self.amount, "return reversal amount")


class BusinessMode(StrEnum):
    """VSS-110 business mode: whose side of the transactions a line sums."""

    ACQUIRER = "acquirer"
    ISSUER = "issuer"
    OTHER = "other"
    TOTAL = "total"


class AmountType(StrEnum):
    """VSS-110 amount type: interchange value, reimbursement fees, network charges, or total."""

    INTERCHANGE = "interchange"
    REIMBURSEMENT_FEES = "reimbursement_fees"
    NETWORK_CHARGES = "network_charges"
    TOTAL = "total"


@dataclass(frozen=True, slots=True, kw_only=True)
class SettlementLine:
    """One line of a VSS-110 summary: `count` transactions, their credits, debits and net
    (credits minus debits; negative: the issuer owes the network)."""

    business_mode: BusinessMode
    amount_type: AmountType
    count: int
    credit_amount: Money
    debit_amount: Money
    net_amount: Money

    def __post_init__(self) -> None:
        if type(self.count) is not int or self.count < 0:
            raise InvalidNetworkMessage(f"settlement count {self.count!r} is not a count")
        _fiat(self.credit_amount, "settlement credit", zero_ok=True)
        _fiat(self.debit_amount, "settlement debit", zero_ok=True)
        if self.net_amount != self.credit_amount - self.debit_amount:
            raise InvalidNetworkMessage(
                f"settlement line {self.business_mode}/{self.amount_type}: net {self.net_amount}"
                f" is not credits {self.credit_amount} minus debits {self.debit_amount}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SettlementReport(NetworkMessage):
    """The network's daily settlement summary for one settlement day and currency, shaped like
    Visa's VSS-110: lines per business mode and amount type, and the day's funds transfer."""

    TYPE: ClassVar[str] = "settlement_report"
    report_id: str
    settlement_date: date
    currency: Currency
    funds_transfer_date: date
    lines: tuple[SettlementLine, ...]

    def __post_init__(self) -> None:
        NetworkMessage.__post_init__(self)
        if not self.lines:
            raise InvalidNetworkMessage(f"settlement report {self.report_id} has no lines")
        for line in self.lines:
            if line.net_amount.currency != self.currency:
                raise InvalidNetworkMessage(
                    f"settlement report {self.report_id} in {self.currency} has a line in "
                    f"{line.net_amount.currency}")


ASYNC_MESSAGES: tuple[type[NetworkMessage], ...] = (
    AuthorizationAdvice, IncrementalAuthorization, AuthorizationReversal, AuthorizationExpiry,
    Clearing, FinancialAuthorization, ForcePost, Return, ReturnReversal, SettlementReport,
)
"""Every asynchronous message type, by which `POST /v1/network/events` dispatches."""
