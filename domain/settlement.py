"""Settlement with the card network, pure: which day a payment event settles on, what the network
counts of it, what a settlement report says, and a batch as finance sees it.

The network settles per settlement day and currency and counts messages, not payments (the
simulator's VSS-110-like report, `cardpay.devstack.network_workload.settlement_reports`): its
interchange line counts every clearing, financial authorization, force post, return and return
reversal; its credits are the returns (money back to the issuer), its debits the purchases and
the return reversals (money the issuer owes); its reimbursement-fees line is what the network
pays the issuer on top. A batch therefore matches the report's *interchange* line (count, credit,
debit, net) exactly; the fees are the network's to compute and are booked as reported.

Amounts here are integer fiat minor units (the report's unit); payment events carry token base
units, converted exactly (1 EURe == 1 EUR). A payment event settles on the UTC day cardpay
recorded it (`occurred_at`); the batch of day D closes at the cut-off of day D + 1 (the network
sends day D's report around then).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from domain import events as e
from domain.errors import DomainError
from domain.ledger.chart import AccountKind, ChartOfAccounts
from domain.ledger.model import Account, Transfer, TransferFlags
from domain.money import FIAT_TOKENS, Currency, Money, fiat_currency, to_token, token_for

SETTLED_EVENTS: tuple[type[e.DomainEvent], ...] = (
    e.ClearingRecorded, e.PaymentForcePosted, e.FinancialAuthorizationRecorded,
    e.ReturnRecorded, e.ReturnReversed)
"""The payment events the network counts in its settlement report (one message each)."""

_FIAT_OF: dict[str, Currency] = {token.code: fiat for fiat, token in FIAT_TOKENS.items()}


class InvalidSettlementReport(DomainError):
    """A stored settlement report that lacks the lines a batch is matched against."""


class BatchStatus(StrEnum):
    OPEN = "open"
    """Collecting the day's payment events until the cut-off."""
    MATCHING = "matching"
    """Past the cut-off: asking for the day's report (retried while none has arrived)."""
    AWAITING_REPORT = "awaiting_report"
    """No report came in the window: an exception is open; asked again at the next cut-off."""
    MISMATCHED = "mismatched"
    """The report differs: an exception is open, the batch stays open (re-matched when another
    of the day's events or the next cut-off comes)."""
    PAYING = "paying"
    """Matched: the ledger payout is being posted."""
    REVERSING = "reversing"
    """The payout failed: whatever of it was posted is being reversed (an exception is open)."""
    REOPENED = "reopened"
    """The payout failed and was reversed: paid again at the next cut-off."""
    SETTLED = "settled"
    """Paid out and every payment told (final)."""


@dataclass(frozen=True, slots=True)
class Figures:
    """What the network counts: messages, credits (to the issuer), debits (owed by it)."""

    count: int = 0
    credit: int = 0
    debit: int = 0

    @property
    def net(self) -> int:
        """Credits minus debits, as the report's net (negative: the issuer pays)."""
        return self.credit - self.debit

    def __add__(self, other: Figures) -> Figures:
        return Figures(self.count + other.count, self.credit + other.credit,
                       self.debit + other.debit)

    def minus(self, other: Figures) -> Figures:
        """The difference, field by field (ours minus the report's)."""
        return Figures(self.count - other.count, self.credit - other.credit,
                       self.debit - other.debit)

    @property
    def is_zero(self) -> bool:
        return self == Figures()

    def to_json(self) -> dict[str, int]:
        return {"count": self.count, "credit": self.credit, "debit": self.debit,
                "net": self.net}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Figures:
        return cls(int(data["count"]), int(data["credit"]), int(data["debit"]))


def fiat_of(token: Currency) -> Currency:
    """The fiat currency a token is pegged to (EURe -> EUR)."""
    try:
        return _FIAT_OF[token.code]
    except KeyError:
        raise DomainError(f"{token} is not a card token") from None


def figures_of(event: e.DomainEvent) -> Figures | None:
    """What the network counts for one payment event (None: it counts nothing)."""
    if not isinstance(event, SETTLED_EVENTS):
        return None
    amount: Money = event.amount  # type: ignore[attr-defined]
    minor = amount.convert(fiat_of(amount.currency)).units
    if isinstance(event, e.ReturnRecorded):
        return Figures(1, credit=minor)
    return Figures(1, debit=minor)


def settlement_day(at: datetime) -> date:
    """The settlement day of something recorded at `at`: its UTC date."""
    return at.astimezone(UTC).date()


def parse_cutoff(text: str) -> time:
    """ "HH:MM" (UTC) -> a time; anything else is refused with what was expected."""
    try:
        hours, minutes = text.split(":")
        if len(hours) != 2 or len(minutes) != 2:
            raise ValueError(text)
        return time(int(hours), int(minutes), tzinfo=UTC)
    except ValueError:
        raise ValueError(f"a settlement cut-off is HH:MM (UTC), got {text!r}") from None


def cutoff_at(day: date, cutoff: time) -> datetime:
    """When day `day`'s batch closes: the cut-off time on the next day (UTC)."""
    return datetime.combine(day + timedelta(days=1), cutoff.replace(tzinfo=UTC))


def next_cutoff(now: datetime, cutoff: time) -> datetime:
    """The first cut-off strictly after `now`: the next settlement window."""
    today = datetime.combine(now.astimezone(UTC).date(), cutoff.replace(tzinfo=UTC))
    return today if today > now else today + timedelta(days=1)


@dataclass(frozen=True, slots=True)
class ReportFigures:
    """The parts of a stored report (`cardpay.handlers.card_network._report_body`) a batch is
    matched against and booked from."""

    report_id: str
    interchange: Figures
    fees: int
    """The issuer's reimbursement fees: the network credits them on top of the interchange."""
    net: int
    """The total line's net (interchange net plus fees)."""

    def to_json(self) -> dict[str, Any]:
        return {"report_id": self.report_id, **self.interchange.to_json(), "fees": self.fees,
                "total_net": self.net}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReportFigures:
        return cls(str(data["report_id"]), Figures.from_json(data), int(data["fees"]),
                   int(data["total_net"]))


def report_figures(report: Mapping[str, Any]) -> ReportFigures:
    """Read a stored report's issuer interchange, reimbursement fees and total lines."""
    lines = {(line["business_mode"], line["amount_type"]): line
             for line in report.get("lines", [])}
    interchange = lines.get(("issuer", "interchange"))
    if interchange is None:
        raise InvalidSettlementReport(
            f"settlement report {report.get('report_id')} has no issuer interchange line")
    fees = lines.get(("issuer", "reimbursement_fees"))
    fee = 0 if fees is None else int(fees["credit_amount"]) - int(fees["debit_amount"])
    total = lines.get(("total", "total"))
    figures = Figures(int(interchange["count"]), int(interchange["credit_amount"]),
                      int(interchange["debit_amount"]))
    net = figures.net + fee if total is None else int(total["net_amount"])
    return ReportFigures(str(report["report_id"]), figures, fee, net)


@dataclass(frozen=True, slots=True, kw_only=True)
class SettlementBatch:
    """One settlement day and currency as finance sees it (the `cardpay settlements` row).

    `revision` only grows (the saga's version): a stored batch is only replaced by a newer one.
    """

    day: date
    currency: str
    """The fiat currency (EUR, GBP, USD)."""
    status: BatchStatus
    ours: Figures
    report: ReportFigures | None = None
    window: int = 1
    """The payout attempt (a failed payout is retried in the next window)."""
    payment_ids: tuple[str, ...] = field(default=())
    revision: int = 0
    updated_at: datetime | None = None

    @property
    def batch_id(self) -> str:
        return batch_id(self.day, self.currency)

    @property
    def difference(self) -> Figures | None:
        """Ours minus the report's interchange (None before a report was read)."""
        return None if self.report is None else self.ours.minus(self.report.interchange)


@dataclass(frozen=True, slots=True, kw_only=True)
class SettlementItem:
    """One message the network counts, in its batch: what the saga issues for each of the day's
    events, kept once per `key` (the event's stream and version), so an event delivered twice
    counts once. `payment_id` is None for what no payment explains (an unmatched return)."""

    day: date
    currency: str
    key: str
    payment_id: str | None
    figures: Figures


@dataclass(frozen=True, slots=True)
class BatchTotals:
    """A batch's items added up, and the payments they belong to (sorted)."""

    figures: Figures
    payment_ids: tuple[str, ...]


def batch_id(day: date, currency: str) -> str:
    """The batch (and its saga) of a settlement day and currency: `2026-12-02:EUR`."""
    return f"{day.isoformat()}:{currency}"


class Code:
    """Ledger transfer codes of a settlement payout."""

    INTERCHANGE = "settlement_interchange"
    """What the batch owed the network (or the network the issuer) leaves network payable."""
    FEES = "settlement_fees"
    """The issuer's reimbursement fees the network credits."""
    REVERSAL = "settlement_reversal"
    """A failed payout's posting undone."""


def payout_transfers(batch: str, currency: str, window: int, owed: int,
                     fees: int) -> list[Transfer]:
    """The ledger postings of one payout try (token base units of the currency's ledger, one
    all-or-nothing chain), ids `settlement:<batch>:<window>:<what>` so a retried answer finds
    them (EXISTS) and the next window posts new ones.

    `owed` (fiat minor units, the interchange debits minus credits) moves network payable ->
    network settlement (ADR 0009's "daily settlement"; the other way when the network owes);
    the fees move network settlement -> fees: the cash the network receives is `owed - fees`.
    """
    fiat = fiat_currency(currency)
    chart = ChartOfAccounts(token_for(fiat).code)
    payable = chart.account_id(AccountKind.NETWORK_PAYABLE)
    settled = chart.account_id(AccountKind.NETWORK_SETTLEMENT)
    earned = chart.account_id(AccountKind.FEES)

    def units(minor: int) -> int:
        return to_token(Money(minor, fiat)).units

    prefix = f"settlement:{batch}:{window}"
    chain: list[Transfer] = []
    if owed:
        debit, credit = (payable, settled) if owed > 0 else (settled, payable)
        chain.append(Transfer(f"{prefix}:interchange", debit, credit, units(abs(owed)),
                              chart.ledger, Code.INTERCHANGE, user_data=batch))
    if fees > 0:
        chain.append(Transfer(f"{prefix}:fees", settled, earned, units(fees), chart.ledger,
                              Code.FEES, user_data=batch))
    return [replace(t, flags=TransferFlags.LINKED) if i < len(chain) - 1 else t
            for i, t in enumerate(chain)]


def reversal(posted: Transfer) -> Transfer:
    """The posting that undoes `posted` (same accounts, the other way)."""
    return Transfer(f"{posted.id}:reversal", posted.credit_account_id, posted.debit_account_id,
                    posted.amount, posted.ledger, Code.REVERSAL, user_data=posted.user_data)


def settlement_accounts(currency: str) -> list[Account]:
    """The accounts a payout posts to (created on first use; again is a harmless EXISTS)."""
    chart = ChartOfAccounts(token_for(fiat_currency(currency)).code)
    return [chart.account(k) for k in (AccountKind.NETWORK_PAYABLE,
                                        AccountKind.NETWORK_SETTLEMENT, AccountKind.FEES)]
