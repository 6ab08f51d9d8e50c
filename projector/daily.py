"""The `daily` read model: per UTC day and token, what the payments did that day (pure).

Each figure counts on the day of the event that moved it (the events' `occurred_at`): approvals
on the day of the approval, clearings and returns on the day cardpay recorded them — the day of
the settlement batch they belong to (ADR 0014 routes them the same way) —, spends and refunds
on the day the listener saw them, settlements on the payout's day. A day's row is the sum of
`delta(before, after, event)` over the payments' events, so it is maintained by adding the
difference each event makes to its payment's row: the payments read model's version check
already applies every event exactly once, and the sums follow it. A rebuild (or a check) sums
the same deltas from the start of the feed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import date

from domain import events as e
from projector.payments import PaymentRow


@dataclass(frozen=True, slots=True)
class DayFigures:
    """Counts and token base units moved on one day in one token."""

    approved: int = 0
    """Payments approved (by us or by the network's advice) that day."""
    declined: int = 0
    authorized: int = 0
    """Authorized amounts, increments included (approvals' and increments' day)."""
    cleared_payments: int = 0
    """Payments whose first clearing came that day."""
    cleared: int = 0
    returned: int = 0
    """Returns net of return reversals."""
    spent: int = 0
    refunded: int = 0
    settled_payments: int = 0
    settled: int = 0

    def __add__(self, other: DayFigures) -> DayFigures:
        return DayFigures(*map(operator.add, _values(self), _values(other)))

    @property
    def is_zero(self) -> bool:
        return not any(_values(self))

    def as_dict(self) -> dict[str, int]:
        return dict(zip(_NAMES, _values(self), strict=True))


_NAMES = tuple(f.name for f in fields(DayFigures))
_values: Callable[[DayFigures], tuple[int, ...]] = operator.attrgetter(*_NAMES)


DayKey = tuple[date, str]
"""(the UTC day, the token's code)."""


def delta(before: PaymentRow | None, after: PaymentRow, event: e.DomainEvent
          ) -> tuple[DayKey, DayFigures] | None:
    """What `event` (which turned `before` into `after`) adds to its day; None when nothing
    (or the payment's token is not known yet)."""
    if after.currency is None:
        return None
    b = before or PaymentRow(payment_id=after.payment_id, status="new", last_version=0)
    figures = DayFigures(
        approved=int(not b.authorized and bool(after.authorized)),
        declined=int(b.network_status != "declined" and after.network_status == "declined"),
        authorized=(after.authorized or 0) - (b.authorized or 0),
        cleared_payments=int(not b.network_cleared and bool(after.network_cleared)),
        cleared=after.network_cleared - b.network_cleared,
        returned=after.returned - b.returned,
        spent=after.spent - b.spent,
        refunded=after.refunded - b.refunded,
        settled_payments=int(b.settled_at is None and after.settled_at is not None),
        settled=after.settled - b.settled)
    if figures.is_zero:
        return None
    return (event.occurred_at.date(), after.currency), figures


def from_rows_and_events(steps: list[tuple[PaymentRow | None, PaymentRow, e.DomainEvent]]
                         ) -> dict[DayKey, DayFigures]:
    """The deltas of a batch of applied events, summed per day and token."""
    out: dict[DayKey, DayFigures] = {}
    for before, after, event in steps:
        moved = delta(before, after, event)
        if moved is not None:
            key, figures = moved
            out[key] = out.get(key, DayFigures()) + figures
    return out
