"""The finance read side's port: what the finance API and the web page read, whatever stores it.

`FinanceReads` is implemented on PostgreSQL by `cardpay.postgres.finance.PostgresFinanceReads`
(the read models, the event store, the settlement batches, the reconciliation). Records are
JSON-ready dicts: amounts are strings of base units next to their `decimals`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, Literal, Protocol

from cardpay.errors import CardpayError
from domain.reconciliation import Reconciliation
from domain.settlement import SettlementBatch


class BadQuery(CardpayError, ValueError):
    """A filter or cursor that cannot be used (shown as one line, or a 400)."""


class UnknownCard(BadQuery):
    """A filter names a card that is not registered (a 404 in the API)."""


ChainStatus = Literal["new", "authorized", "held", "cleared", "reversed", "settled", "retracted"]
"""Every status the payments read model writes for the chain side (projector/payments.py)."""
NetworkStatus = Literal["none", "authorized", "declined", "cleared", "reversed", "expired"]
"""`domain.card_network.Network`'s values (a test keeps them equal)."""
CurrencyCode = Literal["EUR", "GBP", "USD", "EURe", "GBPe", "USDCe"]
"""A card currency or its token: what a currency filter accepts."""


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
