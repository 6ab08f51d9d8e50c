"""Reconcile a settlement day: gather each currency's inputs from a source and compare them
(`domain.reconciliation.reconcile`). Read-only; what it finds is printed by `cardpay reconcile`
(and is what a reconciliation projection or the finance API would show)."""

from __future__ import annotations

from datetime import date
from typing import Protocol

from domain.reconciliation import DayInputs, Reconciliation, reconcile


class ReconciliationSource(Protocol):
    """Where the three sides of a day are read (PostgreSQL: `cardpay.postgres.reconciliation`)."""

    def currencies(self, day: date) -> list[str]:
        """The fiat currencies (EUR, GBP, USD) with anything to reconcile on `day`."""
        ...

    def inputs(self, day: date, currency: str) -> DayInputs: ...


def reconcile_day(source: ReconciliationSource, day: date,
                  currency: str | None = None) -> list[Reconciliation]:
    """One reconciliation per currency of the day (only `currency` when given, even on a day
    where it has nothing: the answer is then a clean, empty day)."""
    wanted = [currency] if currency is not None else source.currencies(day)
    return [reconcile(source.inputs(day, code)) for code in wanted]
