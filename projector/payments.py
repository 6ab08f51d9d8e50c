"""The `payments` read model: one row per payment, evolved by its events (pure functions).

Applying an event whose version the row already has is a no-op (feeds deliver at least once). An
event that skips a version is refused with `OutOfOrder`; the runner quarantines it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from domain import events as e
from projector.errors import OutOfOrder


@dataclass(frozen=True, slots=True)
class PaymentRow:
    payment_id: str
    status: str
    last_version: int
    account: str | None = None
    currency: str | None = None
    decimals: int | None = None
    authorized: int | None = None
    spent: int = 0
    cleared: int | None = None
    refunded: int = 0
    spend_tx: str | None = None


def is_duplicate(row: PaymentRow | None, event: e.DomainEvent) -> bool:
    return row is not None and event.version <= row.last_version


def evolve(row: PaymentRow | None, event: e.DomainEvent) -> PaymentRow:
    expected = 1 if row is None else row.last_version + 1
    if event.version != expected:
        raise OutOfOrder(
            f"payment {event.stream_id}: got version {event.version}, expected {expected}"
        )
    if row is None:
        row = PaymentRow(payment_id=event.stream_id, status="new", last_version=0)
    row = dataclasses.replace(row, last_version=event.version)
    match event:
        case e.PaymentAuthorized():
            return dataclasses.replace(
                row, status="authorized", account=event.account,
                currency=event.amount.currency.code, decimals=event.amount.currency.decimals,
                authorized=event.amount.units,
            )
        case e.PaymentSpent():
            # a payment may be spent more than once (an incremental spend, a spend landing after
            # the payment was reversed): the spends add up; the status moves forward only
            return dataclasses.replace(
                row, status="held" if row.status in ("new", "authorized", "retracted")
                else row.status, account=event.account,
                currency=event.amount.currency.code, decimals=event.amount.currency.decimals,
                spent=row.spent + event.amount.units, spend_tx=row.spend_tx or event.evidence.tx_hash,
            )
        case e.PaymentCleared():
            return dataclasses.replace(row, status="cleared", cleared=event.amount.units)
        case e.PaymentReversed():
            return dataclasses.replace(row, status="reversed")
        case e.PaymentRefunded():
            return dataclasses.replace(row, refunded=row.refunded + event.amount.units)
        case e.PaymentSettled():
            return dataclasses.replace(row, status="settled")
        case e.SpendRetracted():
            spent = 0 if event.amount is None else row.spent - event.amount.units
            if spent > 0:
                return dataclasses.replace(row, spent=spent)
            return dataclasses.replace(row, status="retracted" if row.status == "held"
                                       else row.status, spent=0, spend_tx=None)
        case e.RefundRetracted():
            return dataclasses.replace(row, refunded=row.refunded - event.amount.units)
        case _:
            return row  # events that do not change this view (refund requested/submitted)
