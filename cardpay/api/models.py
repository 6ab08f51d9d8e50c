"""The card network's wire format: pydantic models at the HTTP edge, converted to `domain.network`.

Strict on purpose: an amount is a JSON integer of fiat minor units (a float, a string or a
negative number is refused, not coerced; nothing is coerced from another JSON type), a currency
is one the cards are issued in, times carry a UTC offset, and unknown fields are refused (a
field we do not understand might change what the message means). Asynchronous messages are one
union discriminated by `type`. Every model carries an example, shown in the OpenAPI document and
checked by the tests to convert.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
)

from domain import network as n
from domain.money import Money, fiat_currency

MAX_MINOR_UNITS = 10**15
"""Ten trillion euros in cents: far above any card amount, far inside PostgreSQL's BIGINT."""

Amount = Annotated[int, Field(strict=True, ge=1, le=MAX_MINOR_UNITS,
                              description="fiat minor units (cents), a JSON integer written "
                              "without a fraction or exponent (850, not 850.0: a decimal point "
                              "may mean major units, so it is refused)")]
AmountOrZero = Annotated[int, Field(strict=True, ge=0, le=MAX_MINOR_UNITS)]
SignedAmount = Annotated[int, Field(strict=True, ge=-MAX_MINOR_UNITS, le=MAX_MINOR_UNITS)]
Count = Annotated[int, Field(strict=True, ge=0, le=10**12)]
CurrencyCode = Literal["EUR", "GBP", "USD"]
Id = Annotated[str, StringConstraints(pattern=r"^[!-~]{1,128}$")]
"""Printable ASCII without spaces: ids are keys in the database and in log lines."""
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]{1,200}$")]
"""One line of text, no control characters (PostgreSQL text cannot hold NUL)."""

T0 = "2026-12-01T10:15:00Z"


def _money(units: int, currency: str) -> Money:
    return Money(units, fiat_currency(currency))


def _utc(when: datetime) -> datetime:
    return when.astimezone(UTC)


RFC3339_DATE_TIME = re.compile(
    r"^([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt]([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$")
"""RFC 3339's `date-time`, what the OpenAPI document's `format: date-time` means."""


def _rfc3339(value: Any) -> Any:
    """A JSON string in RFC 3339's form, as a datetime (fractions past microseconds cut);
    anything else is left to pydantic's strict check, which refuses it. Pydantic alone, even
    strict, takes a string of digits as seconds since 1970 ("5" → 1970-01-01T00:00:05Z), a
    value the document says is refused (schemathesis found it)."""
    if not isinstance(value, str):
        return value
    found = RFC3339_DATE_TIME.match(value)
    if found is None:
        raise ValueError("not an RFC 3339 date-time (such as 2026-12-03T10:00:00Z)")
    day, clock, fraction, offset = found.groups()
    micro = (fraction or "")[:7]
    return datetime.fromisoformat(f"{day}T{clock}{micro}{offset.upper().replace('Z', '+00:00')}")


NetworkTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]
"""A network message's `network_time`: an RFC 3339 date-time with its offset, read as UTC."""


class Wire(BaseModel):
    """Strict (pydantic's strict mode): a value is taken only in the JSON type the schema
    declares. Lax mode took `0` for `false` and a number of seconds for a `date-time`, values
    the OpenAPI document says are refused (schemathesis found both)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class MerchantBody(Wire):
    name: Text
    id: Id
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
    mcc: Annotated[str, StringConstraints(pattern=r"^[0-9]{4}$")]

    def to_domain(self) -> n.Merchant:
        return n.Merchant(name=self.name, merchant_id=self.id, country=self.country, mcc=self.mcc)


MERCHANT: dict[str, Any] = {"name": "Café Central", "id": "mer_4711", "country": "DE", "mcc": "5812"}


class AuthorizationRequestBody(Wire):
    """The synchronous authorization request; answered with a decision."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "authorization_id": "auth_01", "card_id": "card_01", "amount": 850, "currency": "EUR",
        "merchant": MERCHANT, "network_time": T0, "partial_approval_supported": True}]})

    authorization_id: Id
    card_id: Id
    amount: Amount
    currency: CurrencyCode
    merchant: MerchantBody
    network_time: NetworkTime
    partial_approval_supported: bool = False

    def to_domain(self) -> n.AuthorizationRequest:
        return n.AuthorizationRequest(
            authorization_id=self.authorization_id, card_id=self.card_id,
            amount=_money(self.amount, self.currency), merchant=self.merchant.to_domain(),
            network_time=_utc(self.network_time),
            partial_approval_supported=self.partial_approval_supported)


def _example(**fields: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [{**fields, "network_time": T0}]})


class AuthorizationAdviceBody(Wire):
    """The network decided for the issuer (stand-in); `approved_amount` 0: it declined."""

    model_config = _example(type="authorization_advice", authorization_id="auth_02",
                            card_id="card_01", amount=1200, approved_amount=1200,
                            currency="EUR", merchant=MERCHANT, reason="stand_in")
    type: Literal["authorization_advice"]
    authorization_id: Id
    card_id: Id
    amount: Amount
    approved_amount: AmountOrZero
    currency: CurrencyCode
    merchant: MerchantBody
    reason: Id
    network_time: NetworkTime

    def to_domain(self) -> n.AuthorizationAdvice:
        return n.AuthorizationAdvice(
            authorization_id=self.authorization_id, card_id=self.card_id,
            amount=_money(self.amount, self.currency),
            approved_amount=_money(self.approved_amount, self.currency),
            merchant=self.merchant.to_domain(), reason=self.reason,
            network_time=_utc(self.network_time))


class IncrementalAuthorizationBody(Wire):
    """More on an existing authorization; `amount` is the increment."""

    model_config = _example(type="incremental_authorization", increment_id="inc_01",
                            authorization_id="auth_01", card_id="card_01", amount=300,
                            currency="EUR")
    type: Literal["incremental_authorization"]
    increment_id: Id
    authorization_id: Id
    card_id: Id
    amount: Amount
    currency: CurrencyCode
    network_time: NetworkTime

    def to_domain(self) -> n.IncrementalAuthorization:
        return n.IncrementalAuthorization(
            increment_id=self.increment_id, authorization_id=self.authorization_id,
            card_id=self.card_id, amount=_money(self.amount, self.currency),
            network_time=_utc(self.network_time))


class AuthorizationReversalBody(Wire):
    """The merchant released `amount` of an authorization (`full`: all of what was left)."""

    model_config = _example(type="authorization_reversal", reversal_id="rev_01",
                            authorization_id="auth_01", amount=150, currency="EUR", full=False)
    type: Literal["authorization_reversal"]
    reversal_id: Id
    authorization_id: Id
    amount: Amount
    currency: CurrencyCode
    full: bool
    network_time: NetworkTime

    def to_domain(self) -> n.AuthorizationReversal:
        return n.AuthorizationReversal(
            reversal_id=self.reversal_id, authorization_id=self.authorization_id,
            amount=_money(self.amount, self.currency), full=self.full,
            network_time=_utc(self.network_time))


class AuthorizationExpiryBody(Wire):
    """The authorization was not cleared in time."""

    model_config = _example(type="authorization_expiry", authorization_id="auth_01")
    type: Literal["authorization_expiry"]
    authorization_id: Id
    network_time: NetworkTime

    def to_domain(self) -> n.AuthorizationExpiry:
        return n.AuthorizationExpiry(authorization_id=self.authorization_id,
                                     network_time=_utc(self.network_time))


class ClearingBody(Wire):
    """A (partial, one of several, or over-authorization) clearing; `final` on the last one."""

    model_config = _example(type="clearing", clearing_id="clr_01", authorization_id="auth_01",
                            card_id="card_01", amount=700, currency="EUR", final=True)
    type: Literal["clearing"]
    clearing_id: Id
    authorization_id: Id
    card_id: Id
    amount: Amount
    currency: CurrencyCode
    final: bool = True
    network_time: NetworkTime

    def to_domain(self) -> n.Clearing:
        return n.Clearing(
            clearing_id=self.clearing_id, authorization_id=self.authorization_id,
            card_id=self.card_id, amount=_money(self.amount, self.currency), final=self.final,
            network_time=_utc(self.network_time))


class FinancialAuthorizationBody(Wire):
    """Authorization and clearing in one message."""

    model_config = _example(type="financial_authorization", authorization_id="auth_03",
                            card_id="card_01", amount=2000, currency="GBP", merchant=MERCHANT)
    type: Literal["financial_authorization"]
    authorization_id: Id
    card_id: Id
    amount: Amount
    currency: CurrencyCode
    merchant: MerchantBody
    network_time: NetworkTime

    def to_domain(self) -> n.FinancialAuthorization:
        return n.FinancialAuthorization(
            authorization_id=self.authorization_id, card_id=self.card_id,
            amount=_money(self.amount, self.currency), merchant=self.merchant.to_domain(),
            network_time=_utc(self.network_time))


class ForcePostBody(Wire):
    """A clearing with no authorization."""

    model_config = _example(type="force_post", clearing_id="clr_02", card_id="card_01",
                            amount=499, currency="USD", merchant=MERCHANT)
    type: Literal["force_post"]
    clearing_id: Id
    card_id: Id
    amount: Amount
    currency: CurrencyCode
    merchant: MerchantBody
    network_time: NetworkTime

    def to_domain(self) -> n.ForcePost:
        return n.ForcePost(
            clearing_id=self.clearing_id, card_id=self.card_id,
            amount=_money(self.amount, self.currency), merchant=self.merchant.to_domain(),
            network_time=_utc(self.network_time))


class ReturnBody(Wire):
    """A merchant refund; the original authorization or clearing when the network knows it."""

    model_config = _example(type="return", return_id="ret_01", card_id="card_01", amount=700,
                            currency="EUR", merchant=MERCHANT, authorization_id="auth_01",
                            clearing_id="clr_01")
    type: Literal["return"]
    return_id: Id
    card_id: Id
    amount: Amount
    currency: CurrencyCode
    merchant: MerchantBody
    authorization_id: Id | None = None
    clearing_id: Id | None = None
    network_time: NetworkTime

    def to_domain(self) -> n.Return:
        return n.Return(
            return_id=self.return_id, card_id=self.card_id,
            amount=_money(self.amount, self.currency), merchant=self.merchant.to_domain(),
            authorization_id=self.authorization_id, clearing_id=self.clearing_id,
            network_time=_utc(self.network_time))


class ReturnReversalBody(Wire):
    """A return taken back."""

    model_config = _example(type="return_reversal", return_reversal_id="rrv_01",
                            return_id="ret_01", card_id="card_01", amount=700, currency="EUR")
    type: Literal["return_reversal"]
    return_reversal_id: Id
    return_id: Id
    card_id: Id
    amount: Amount
    currency: CurrencyCode
    network_time: NetworkTime

    def to_domain(self) -> n.ReturnReversal:
        return n.ReturnReversal(
            return_reversal_id=self.return_reversal_id, return_id=self.return_id,
            card_id=self.card_id, amount=_money(self.amount, self.currency),
            network_time=_utc(self.network_time))


class SettlementLineBody(Wire):
    """A VSS-110 line: `net_amount` = `credit_amount` - `debit_amount` (negative: we owe)."""

    business_mode: Literal["acquirer", "issuer", "other", "total"]
    amount_type: Literal["interchange", "reimbursement_fees", "network_charges", "total"]
    count: Count
    credit_amount: AmountOrZero
    debit_amount: AmountOrZero
    net_amount: Annotated[SignedAmount, Field(
        description="credit_amount - debit_amount; a line where it is not is refused (422)")]

    def to_domain(self, currency: str) -> n.SettlementLine:
        return n.SettlementLine(
            business_mode=n.BusinessMode(self.business_mode),
            amount_type=n.AmountType(self.amount_type), count=self.count,
            credit_amount=_money(self.credit_amount, currency),
            debit_amount=_money(self.debit_amount, currency),
            net_amount=_money(self.net_amount, currency))


class SettlementReportBody(Wire):
    """The daily settlement summary for one settlement day and currency (VSS-110 shaped)."""

    model_config = _example(
        type="settlement_report", report_id="vss110_2026-12-01_EUR",
        settlement_date="2026-12-01", currency="EUR", funds_transfer_date="2026-12-02",
        lines=[{"business_mode": "issuer", "amount_type": "interchange", "count": 3,
                "credit_amount": 700, "debit_amount": 4550, "net_amount": -3850},
               {"business_mode": "issuer", "amount_type": "reimbursement_fees", "count": 3,
                "credit_amount": 52, "debit_amount": 0, "net_amount": 52},
               {"business_mode": "total", "amount_type": "total", "count": 3,
                "credit_amount": 752, "debit_amount": 4550, "net_amount": -3798}])
    type: Literal["settlement_report"]
    report_id: Id
    settlement_date: date
    currency: CurrencyCode
    funds_transfer_date: date
    lines: Annotated[list[SettlementLineBody], Field(min_length=1, max_length=64)]
    network_time: NetworkTime

    def to_domain(self) -> n.SettlementReport:
        return n.SettlementReport(
            report_id=self.report_id, settlement_date=self.settlement_date,
            currency=fiat_currency(self.currency), funds_transfer_date=self.funds_transfer_date,
            lines=tuple(line.to_domain(self.currency) for line in self.lines),
            network_time=_utc(self.network_time))


EVENT_MODELS = (
    AuthorizationAdviceBody, IncrementalAuthorizationBody, AuthorizationReversalBody,
    AuthorizationExpiryBody, ClearingBody, FinancialAuthorizationBody, ForcePostBody, ReturnBody,
    ReturnReversalBody, SettlementReportBody,
)

NetworkEventBody = Annotated[
    AuthorizationAdviceBody | IncrementalAuthorizationBody | AuthorizationReversalBody
    | AuthorizationExpiryBody | ClearingBody | FinancialAuthorizationBody | ForcePostBody
    | ReturnBody | ReturnReversalBody | SettlementReportBody,
    Field(discriminator="type"),
]
EVENTS: TypeAdapter[NetworkEventBody] = TypeAdapter(NetworkEventBody)
AUTHORIZATION: TypeAdapter[AuthorizationRequestBody] = TypeAdapter(AuthorizationRequestBody)


class DecisionResponse(BaseModel):
    """The answer to an authorization request (amounts in the request's minor units)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"authorization_id": "auth_01", "approved": True, "approved_amount": 850,
         "currency": "EUR", "partial": False, "decline_reason": None, "decline_class": None},
        {"authorization_id": "auth_04", "approved": False, "approved_amount": 0,
         "currency": "EUR", "partial": False, "decline_reason": "insufficient_funds",
         "decline_class": "soft"}]})

    authorization_id: str
    approved: bool
    approved_amount: int
    currency: str
    partial: bool
    decline_reason: Literal["insufficient_funds", "over_daily_limit", "card_frozen",
                            "card_closed", "blocked_mcc", "unknown_card", "velocity"] | None
    decline_class: Literal["soft", "hard", "fraud"] | None


class EventAccepted(BaseModel):
    """The answer to an asynchronous message: its type and what the effect reported."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [
        {"type": "clearing", "status": "applied"}]})

    type: str


class ErrorResponse(BaseModel):
    """A refusal: `reason` is one line (401: unsigned, malformed, stale, future, bad_signature)."""

    error: str
    reason: str
