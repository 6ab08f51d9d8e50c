"""The finance read side's port: what the finance API and the web page read, whatever stores it.

`FinanceReads` is implemented on PostgreSQL by `cardpay.postgres.finance.PostgresFinanceReads`
(the read models, the event store, the settlement batches, the reconciliation). Records are
JSON-ready dicts: amounts are strings of base units next to their `decimals`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

from cardpay.errors import CardpayError
from domain.money import FIAT_CURRENCIES
from domain.reconciliation import Reconciliation
from domain.settlement import SettlementBatch


class BadQuery(CardpayError, ValueError):
    """A filter or cursor that cannot be used (shown as one line, or a 400)."""


@dataclass(frozen=True)
class PaymentFilter:
    status: str | None = None
    """The chain side's status (new, authorized, held, cleared, reversed, settled, retracted)."""
    network_status: str | None = None
    account: str | None = None
    """The cardholder's Safe."""
    card: str | None = None
    day: date | None = None
    """The UTC day of the payment's first event."""
    currency: str | None = None
    """A fiat (EUR) or token (EURe) code."""


class FinanceReads(Protocol):
    def payments(self, wanted: PaymentFilter, *, after: str | None,
                 limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """One page, newest first, and the next page's cursor (None on the last)."""
        ...

    def payment(self, payment_id: str) -> dict[str, Any] | None:
        """{"payment": row or None, "history": events}; None when neither exists."""
        ...

    def holds(self, *, account: str | None, card: str | None) -> list[dict[str, Any]]: ...

    def days(self, *, day_from: date | None, day_to: date | None,
             currencies: list[str]) -> list[dict[str, Any]]: ...

    def settlements(self, *, day: date | None, currency: str | None) -> list[SettlementBatch]: ...

    def reconcile(self, day: date, currency: str | None) -> list[Reconciliation]: ...


# -- records: the same plain values for the CLI, the API and the page ----------------------------
def settlement_record(batch: SettlementBatch) -> dict[str, Any]:
    """One batch as plain values: amounts as strings of minor units, None where not known."""
    decimals = FIAT_CURRENCIES[batch.currency].decimals
    ours = batch.ours.to_json()
    rep = None if batch.report is None else batch.report.interchange.to_json()
    diff = None if batch.difference is None else batch.difference.to_json()

    def money(value: int | None) -> str | None:
        return None if value is None else str(value)

    out: dict[str, Any] = {
        "day": batch.day.isoformat(), "currency": batch.currency,
        "status": batch.status.value, "window": batch.window,
        "payments": len(batch.payment_ids), "decimals": decimals,
        "report_id": None if batch.report is None else batch.report.report_id,
        "report_fees": None if batch.report is None else str(batch.report.fees),
        "updated_at": batch.updated_at,
    }
    for name in ("count", "credit", "debit", "net"):
        count = name == "count"
        out[name] = ours[name] if count else money(ours[name])
        out[f"report_{name}"] = None if rep is None else (rep[name] if count
                                                          else money(rep[name]))
        out[f"diff_{name}"] = None if diff is None else (diff[name] if count
                                                         else money(diff[name]))
    return out


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
