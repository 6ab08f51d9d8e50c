"""The read side's figures as plain values, one way for every reader: the CLI's tables, JSON
and CSV and the finance web page (`cardpay.api.finance_page`) show the same records, so a
figure cannot read one way in a terminal and another in a browser.

Amounts stay strings of integer minor/base units next to their `decimals` (exact); only
`amount_text` turns one into a decimal for a person.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from domain.money import FIAT_CURRENCIES, Currency, Money
from domain.reconciliation import Reconciliation
from domain.settlement import SettlementBatch

Record = dict[str, Any]

SETTLEMENT_FIGURES = ("count", "credit", "debit", "net")
"""The figures a settlement record has three times: ours, `report_*` and `diff_*`."""


def amount_text(units: int | str | None, decimals: int | None) -> str:
    """Exact decimal amount (trailing zeros past the cents dropped); '-' when unknown."""
    if units is None:
        return "-"
    if decimals is None:
        return str(units)
    text = f"{Money(int(units), Currency('X', decimals)).to_decimal():f}"
    if "." in text:
        whole, frac = text.split(".")
        text = f"{whole}.{frac.rstrip('0').ljust(2, '0')}"
    return text


def settlement_record(batch: SettlementBatch) -> Record:
    """One batch as plain values: amounts as strings of minor units, None where not known."""
    decimals = FIAT_CURRENCIES[batch.currency].decimals
    ours = batch.ours.to_json()
    rep = None if batch.report is None else batch.report.interchange.to_json()
    diff = None if batch.difference is None else batch.difference.to_json()

    def money(value: int | None) -> str | None:
        return None if value is None else str(value)

    out: Record = {
        "day": batch.day.isoformat(), "currency": batch.currency,
        "status": batch.status.value, "window": batch.window,
        "payments": len(batch.payment_ids), "decimals": decimals,
        "report_id": None if batch.report is None else batch.report.report_id,
        "report_fees": None if batch.report is None else str(batch.report.fees),
        "updated_at": batch.updated_at,
    }
    for name in SETTLEMENT_FIGURES:
        count = name == "count"
        out[name] = ours[name] if count else money(ours[name])
        out[f"report_{name}"] = None if rep is None else (rep[name] if count
                                                          else money(rep[name]))
        out[f"diff_{name}"] = None if diff is None else (diff[name] if count
                                                         else money(diff[name]))
    return out


class QuarantineRow(Protocol):
    """What a quarantine listing row has (`cardpay.postgres.queries.QuarantineEntry`, and the
    handlers' `QuarantinedRow`)."""

    @property
    def id(self) -> int: ...
    @property
    def source(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def created_at(self) -> Any: ...
    @property
    def resolved_at(self) -> Any: ...
    @property
    def resolution(self) -> str | None: ...


def quarantine_records(rows: Iterable[QuarantineRow]) -> list[Record]:
    """Quarantine rows (and exceptions, which are quarantine rows) as plain values."""
    return [{"id": r.id, "source": r.source, "key": r.key, "reason": r.reason,
             "attempts": r.attempts, "created_at": r.created_at,
             "resolved_at": r.resolved_at, "resolution": r.resolution} for r in rows]


def reconciliation_record(r: Reconciliation) -> dict[str, Any]:
    """One currency's reconciliation as plain values (amounts as strings of base units)."""
    n = r.network
    return {
        "day": r.day.isoformat(), "currency": r.currency, "token": r.token,
        "decimals": r.decimals, "clean": r.clean, "payments": list(r.payments),
        "chain": {"spent": str(r.chain.spent), "refunded": str(r.chain.refunded),
                  "unmatched_out": str(r.chain.unmatched_out), "net": str(r.chain.net)},
        "ledger": {"onchain": str(r.ledger.onchain), "payable": str(r.ledger.payable)},
        "network": {"batch_status": n.batch_status, "count": n.ours.count,
                    "credit": str(n.ours.credit), "debit": str(n.ours.debit),
                    "net": str(n.ours.net), "report_id": n.report_id,
                    "report_count": None if n.report is None else n.report.count,
                    "report_credit": None if n.report is None else str(n.report.credit),
                    "report_debit": None if n.report is None else str(n.report.debit),
                    "report_net": None if n.report is None else str(n.report.net),
                    "report_fees": None if n.report is None else str(n.fees)},
        "breaks": [{"kind": b.kind.value, "amount": str(b.amount),
                    "payments": list(b.payments), "detail": b.detail} for b in r.breaks],
    }
